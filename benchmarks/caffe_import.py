"""Peak memory and time of importing a VGG16-size caffemodel: the hand-written decoder against protobuf.

Usage:
    python benchmarks/caffe_import.py                      # old = caffe.py of commit 3c25ee1 (issue 17's base)
    python benchmarks/caffe_import.py --old-rev main --keep /tmp/fcn32s.caffemodel

A child process writes ``fcn32s-heavy-pascal``-shaped weights (the reference's VGG16 FCN-32s, 21 classes:
13 convolutions, fc6 as a (4096, 512, 7, 7) convolution, fc7, score_fr and the frozen bilinear ``upscore``;
random float32, about 537 MB) as a caffemodel in today's ``layer`` format, under the temporary folder, and
the file is deleted at the end. Then, each in a fresh process started by this lean parent (it imports neither
torch nor numpy, so no child inherits a large high-water mark across exec):

  read      ``read_caffemodel(file)``: the parse alone, every blob as a float32 array
  convert   ``convert_caffemodel(file, out, model="fcn32s")``: parse, build the model, load, write the
            checkpoint (what ``fcnseg convert caffe`` does)

for ``old`` (``src/fcnseg/convert/caffe.py`` at ``--old-rev``, loaded as a module of the package beside the
new one) and ``new`` (the working tree's). Reported: the peak resident size of the process (``VmHWM`` from
/proc), its resident size after the imports (``VmRSS``, the baseline), and the seconds of the call alone.
Both readers' arrays are checked to agree (a checksum over each blob).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_WRITE = r"""
import sys
import numpy as np
import torch
from fcnseg.convert.caffe_proto import caffe_messages
from fcnseg.models import build, bilinear_kernel

def varint(v):
    out = bytearray()
    while True:
        out.append((v & 0x7F) | (0x80 if v > 0x7F else 0))
        v >>= 7
        if not v:
            return bytes(out)

def field(number, payload):  # a length-delimited field: the packed data, a blob, a layer
    return varint(number << 3 | 2) + varint(len(payload)) + payload

m = caffe_messages()
with torch.device("meta"):
    net = build("fcn32s")
rng = np.random.default_rng(0)
with open(sys.argv[1], "wb") as f:
    f.write(m["NetParameter"](name="fcn32s-heavy-pascal-shaped").SerializeToString())
    params = {}
    for key, t in net.state_dict().items():
        params.setdefault(key.rpartition(".")[0].removeprefix("encoder."), []).append(tuple(t.shape))
    c = 21
    up = np.zeros((c, c, 64, 64), np.float32)
    up[range(c), range(c)] = bilinear_kernel(64).numpy()
    for name, shapes in [*params.items(), ("upscore", None)]:
        layer = m["LayerParameter"](name=name, type="Deconvolution" if shapes is None else "Convolution")
        out = bytearray(layer.SerializeToString())
        blobs = [up] if shapes is None else [rng.standard_normal(s, dtype=np.float32) * 0.01 for s in shapes]
        for b in blobs:
            head = m["BlobProto"](shape=m["BlobShape"](dim=b.shape)).SerializeToString()
            out += field(7, head + field(5, b.astype("<f4").tobytes()))  # BlobProto.data is field 5
        f.write(field(100, bytes(out)))  # NetParameter.layer is field 100
"""

_MEASURE = r"""
import importlib.util, json, sys, time
import numpy as np
import fcnseg.convert

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024  # kB -> MiB

which, mode, path, old_file, out = sys.argv[1:6]
if which == "old":
    spec = importlib.util.spec_from_file_location("fcnseg.convert._caffe_old", old_file)
    caffe = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = caffe
    spec.loader.exec_module(caffe)
else:
    from fcnseg.convert import caffe
import fcnseg.models, fcnseg.checkpoint  # noqa: the imports a conversion needs, before the baseline
base = status("VmRSS")
t = time.perf_counter()
if mode == "read":
    layers = caffe.read_caffemodel(path)
    seconds = time.perf_counter() - t
    check = {n: [float(np.float64(b.ravel()[::997]).sum()) for b in bs] for n, bs in layers.items()}
else:
    caffe.convert_caffemodel(path, out, model="fcn32s")
    seconds = time.perf_counter() - t
    check = None
print(json.dumps({"peak": status("VmHWM"), "base": base, "seconds": seconds, "check": check}))
"""


def _run(code: str, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env)
    if r.returncode:
        raise SystemExit(f"child failed ({' '.join(args)}):\n{r.stderr[-3000:]}")
    return r.stdout


def _machine() -> str:
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    cap = _run("import torch; print(torch.backends.cpu.get_cpu_capability(), torch.__version__)").split()
    import google.protobuf
    from google.protobuf.internal import api_implementation

    return (f"{cpu}, {os.cpu_count()} cores, {cap[0]}, torch {cap[1]}, protobuf {google.protobuf.__version__} "
            f"({api_implementation.Type()}), Python {platform.python_version()}, load {os.getloadavg()[0]:.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--old-rev", default="3c25ee1", help="git revision of the hand-written decoder")
    p.add_argument("--keep", default="", help="write the caffemodel here and keep it (default: a temporary)")
    a = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="caffe_import_"))
    model = Path(a.keep) if a.keep else tmp / "fcn32s-shaped.caffemodel"
    old = tmp / "caffe_old.py"
    old.write_text(subprocess.run(["git", "-C", str(REPO), "show", f"{a.old_rev}:src/fcnseg/convert/caffe.py"],
                                  check=True, capture_output=True, text=True).stdout)
    try:
        if not model.is_file():
            _run(_WRITE, str(model))
        size = model.stat().st_size / 2**20
        rows, checks = [], {}
        for mode in ("read", "convert"):
            for which in ("old", "new"):
                out = tmp / f"{which}.pt"
                r = json.loads(_run(_MEASURE, which, mode, str(model), str(old), str(out)).splitlines()[-1])
                out.unlink(missing_ok=True)
                if r["check"] is not None:
                    checks[which] = r["check"]
                rows.append((mode, which, r))
        assert checks["old"] == checks["new"], "the two readers disagree"
    finally:
        for f in tmp.iterdir():
            f.unlink()
        tmp.rmdir()
    print(f"{dt.date.today()}; {_machine()}")
    print(f"caffemodel: {size:.0f} MiB (fcn32s-heavy-pascal shapes, random float32); old = {a.old_rev}")
    print("| step | reader | peak RSS (MiB) | after imports (MiB) | peak above it (MiB) | seconds |")
    print("|---|---|---:|---:|---:|---:|")
    for mode, which, r in rows:
        print(f"| {mode} | {which} | {r['peak']:.0f} | {r['base']:.0f} | {r['peak'] - r['base']:.0f} | "
              f"{r['seconds']:.2f} |")


if __name__ == "__main__":
    main()
