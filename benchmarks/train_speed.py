"""Training throughput: ``fcnseg train`` with its default flags against a plain PyTorch loop, in one run.

Both train the same model (EfficientNet-Lite0 FCN-8s, ImageNet encoder) on the same data (CamVid train,
random scale 0.5-2, 352-pixel crops, flips), batch 8, SGD, from the same seed, for ``--steps`` steps:

* **plain**: the ten-line loop a user would write: the dataset with its transforms, a fresh ``DataLoader``
  each epoch (2 workers, shuffled), NCHW fp32, forward, cross-entropy, backward, step.
* **fcnseg**: ``fcnseg.train.run_train`` with the defaults of ``fcnseg train`` (only the model, crop, step
  count and a one-image validation set are given): channels-last, one persistent loader, decoded-image
  cache, the pretrained encoder's batch norms frozen and folded into its convolutions after a 50-step
  learning-rate warm-up (``--batch-norm auto``), ``--precision auto``.
* ``--variants``: fcnseg with one default changed at a time (NCHW, ``--batch-norm train``, no cache, 0/1
  workers, ``--compile``), shorter.
* ``--bn-compare OLD_BATCHNORM_PY``: instead of the above, fcnseg's defaults with three implementations of
  the frozen batch norm (issue 17): the file given (an older ``fcnseg/models/batchnorm.py``), and this tree's
  modules with and without the fold into the convolutions; one after the other, ``--repeat`` rounds, each
  round starting with the next variant.

Images/s are measured between step ``--warmup`` and the last step (the rest of the wall time: data checks,
caching, worker start, compilation, the final checkpoint, is reported as ``startup_s``), and expressed as a
share of the machine's fp32 convolution throughput measured in the same run (FLOPs of one training step: 3x
the forward FLOPs counted by ``FlopCounterMode``). The loss of each of the first ``--steps`` steps is recorded
for both: the curves must agree within noise (they see the same images in a different order). Every
configuration runs in its own process, in turn.

    python benchmarks/train_speed.py                  # ~6 minutes on a 2-core CPU
    python benchmarks/train_speed.py --variants       # + the ablation rows (~6 more)
    python benchmarks/train_speed.py --device cuda    # on a GPU (bf16 where native, via --precision auto)
    git show 3c25ee1:src/fcnseg/models/batchnorm.py > /tmp/batchnorm_3c25ee1.py
    python benchmarks/train_speed.py --bn-compare /tmp/batchnorm_3c25ee1.py --steps 25 --repeat 3
"""

from __future__ import annotations

import argparse
import datetime
import functools
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from speed import conv_ceiling  # noqa: E402

from fcnseg import data as fdata  # noqa: E402
from fcnseg.precision import machine_summary, resolve_precision  # noqa: E402

MODEL = "fcn8s_efficientnet_lite0"
VARIANTS = {
    "fcnseg": {},
    "fcnseg, NCHW": {"channels_last": False},
    "fcnseg --batch-norm train": {"batch_norm": "train"},
    "fcnseg, no cache": {"cache": "off"},
    "fcnseg, 1 worker": {"workers": 1},
    "fcnseg, 0 workers": {"workers": 0},
    "fcnseg --compile": {"compile": True},
}
# --bn-compare: the implementation of freeze_batch_norm each run uses (fcnseg's defaults otherwise)
FROZE: list[tuple[int, int]] = []  # what freeze_batch_norm returned in this process
BN_VARIANTS = {"fcnseg, BN old file": "old", "fcnseg, BN modules folded": "folded",
               "fcnseg, BN modules unfolded": "unfolded"}


def data_root() -> Path:
    return Path(os.environ.get("FCNSEG_DATA", "../shared/data")) / "camvid"


def plain_loop(a: argparse.Namespace) -> dict:
    """The reference point: what a user writes without fcnseg (NCHW fp32, a new DataLoader every epoch)."""
    from fcnseg.models import build
    from fcnseg.normalization import get_normalization

    torch.manual_seed(a.seed)
    device = torch.device(a.device)
    tf = fdata.train_transforms(a.crop, scale_range=(0.5, 2.0), hflip=True)
    ds = fdata.build_dataset("camvid", data_root(), "train", transforms=tf)
    model = build(MODEL, num_classes=ds.num_classes, pretrained=True).to(device).train()
    norm = get_normalization("imagenet")
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (1 - s / 2000) ** 0.9)  # fcnseg's default poly
    losses, stamps, t0, step = [], [], time.perf_counter(), 0
    while step < a.steps:
        loader = torch.utils.data.DataLoader(ds, batch_size=a.batch, shuffle=True, num_workers=2,
                                             collate_fn=fdata.pad_collate)
        for images, masks in loader:
            x, y = norm(images.to(device)), masks.to(device)
            loss = torch.nn.functional.cross_entropy(model(x), y, ignore_index=255)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
            stamps.append(time.perf_counter() - t0)
            step += 1
            if step == a.steps:
                break
    return {"losses": losses, "stamps": stamps}


def fcnseg_run(a: argparse.Namespace, overrides: dict) -> dict:
    """``run_train`` with fcnseg's defaults; per-step loss and wall time from its log.jsonl."""
    from fcnseg.config import make_config
    from fcnseg.train import run_train

    with tempfile.TemporaryDirectory() as tmp:
        cfg = make_config("modern", dataset="camvid", data_root=str(data_root()), model=MODEL,
                          model_args={"pretrained": True}, crop_size=a.crop, batch_size=a.batch, max_steps=a.steps,
                          val_every=10**6, log_every=1, max_val_images=1, out_dir=tmp, seed=a.seed,
                          device=a.device, **overrides)
        t0 = time.perf_counter()
        run_train(cfg, progress=False)
        records = [json.loads(line) for line in (Path(tmp) / "log.jsonl").read_text().splitlines()]
        total = time.perf_counter() - t0
    steps = [r for r in records if "loss" in r]
    return {"losses": [r["loss"] for r in steps], "stamps": [r["wall_s"] for r in steps], "total_s": total}


def summarise(r: dict, a: argparse.Namespace, step_flops: float, ceiling: float) -> dict:
    s, w = r["stamps"], a.warmup
    ips = a.batch * (len(s) - w) / (s[-1] - s[w - 1])
    total = r.get("total_s", s[-1])  # fcnseg's includes data checks, caching and the final checkpoint
    return {"images_per_s": ips, "share_of_conv_peak": ips * step_flops / a.batch / 1e9 / ceiling,
            "startup_s": total - len(s) * a.batch / ips, "losses": r["losses"],
            "frozen_folded": r.get("frozen_folded")}


def training_step_flops(a: argparse.Namespace) -> float:
    """FLOPs of one training step: 3x the counted forward FLOPs (the backward pass costs about twice the
    forward; FlopCounterMode's own backward count treats depthwise convolutions as dense, 40x too high)."""
    from torch.utils.flop_counter import FlopCounterMode

    from fcnseg.models import build

    model = build(MODEL, num_classes=11).eval()
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(torch.randn(a.batch, 3, a.crop, a.crop))
    return 3.0 * fc.get_total_flops()


def use_batch_norm_code(kind: str, old_file: str | None) -> None:
    """Make ``fcnseg train`` freeze batch norm with ``kind``'s code: ``old`` (``freeze_batch_norm`` and
    ``has_batch_norm`` of ``old_file``), ``unfolded`` (this tree's, ``fold=False``) or ``folded`` (as it is)."""
    import fcnseg.train  # noqa: F401  (loads every module that imports the functions below)
    from fcnseg.models import batchnorm

    if kind == "old":
        spec = importlib.util.spec_from_file_location("fcnseg_batchnorm_old", old_file)
        assert spec is not None and spec.loader is not None, old_file
        old = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(old)
        swap = {"freeze_batch_norm": old.freeze_batch_norm, "has_batch_norm": old.has_batch_norm}
    elif kind == "unfolded":
        swap = {"freeze_batch_norm": functools.partial(batchnorm.freeze_batch_norm, fold=False)}
    else:
        swap = {"freeze_batch_norm": batchnorm.freeze_batch_norm}
    freeze = swap["freeze_batch_norm"]

    def counted(model: torch.nn.Module) -> tuple[int, int]:  # (frozen, folded), kept in the run's result
        FROZE.append(freeze(model))
        return FROZE[-1]

    swap["freeze_batch_norm"] = counted
    for name, new in swap.items():
        was = getattr(batchnorm, name)
        for module in [m for n, m in sys.modules.items() if n.startswith("fcnseg")]:
            if getattr(module, name, None) is was:
                setattr(module, name, new)


def child(a: argparse.Namespace) -> None:
    torch.set_num_threads(torch.get_num_threads())
    if a.child in BN_VARIANTS:
        use_batch_norm_code(BN_VARIANTS[a.child], a.old_batchnorm)
    r = plain_loop(a) if a.child == "plain" else fcnseg_run(a, VARIANTS.get(a.child, {}))
    r["frozen_folded"] = FROZE
    print("RESULT " + json.dumps(r))


def run_child(name: str, a: argparse.Namespace) -> dict:
    main_run = name in ("plain", "fcnseg", *BN_VARIANTS)
    cmd = [sys.executable, __file__, "--child", name, "--steps", str(a.steps if main_run else a.variant_steps),
           "--batch", str(a.batch), "--crop", str(a.crop), "--seed", str(a.seed), "--device", a.device]
    if name in BN_VARIANTS:
        cmd += ["--old-batchnorm", str(Path(a.bn_compare).resolve())]
    print(f"== {name}", flush=True)
    out = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    if out.returncode or not lines:
        sys.exit(f"{name} failed:\n{out.stderr[-3000:]}")
    return json.loads(lines[-1][7:])


def bn_table(rows: dict[str, list[dict]]) -> None:
    """--bn-compare: images/s of every round (each round ran the variants back to back) and each variant's
    ratio to the old file's in the same round; the losses of the first steps (the same seed: equal up to
    floating-point rounding where the computation is the same)."""
    names = list(BN_VARIANTS)
    print("\n| round | " + " | ".join(names) + " | " + " | ".join(f"{n} / old" for n in names[1:]) + " |")
    print("|---" * (2 * len(names)) + "|")
    for i in range(len(rows[names[0]])):
        ips = [rows[n][i]["images_per_s"] for n in names]
        print(f"| {i + 1} | " + " | ".join(f"{v:.2f}" for v in ips) + " | "
              + " | ".join(f"{v / ips[0]:.3f}" for v in ips[1:]) + " |")
    print("\n(frozen, folded) batch norms: " + "; ".join(f"{n}: {rows[n][0]['frozen_folded']}" for n in names))
    print("first losses: " + "; ".join(f"{n}: " + ", ".join(f"{v:.4f}" for v in rows[n][0]["losses"][:5])
                                         for n in names))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=50, help="steps per main run (loss curves: all of them)")
    p.add_argument("--variant-steps", type=int, default=25, help="steps per --variants run")
    p.add_argument("--warmup", type=int, default=5, help="steps excluded from images/s")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--crop", type=int, default=352)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--variants", action="store_true", help="also fcnseg with each default changed")
    p.add_argument("--only", nargs="*", default=None, help="run only these variants (names as in the table)")
    p.add_argument("--repeat", type=int, default=1, help="alternate plain/fcnseg this many times")
    p.add_argument("--bn-compare", metavar="OLD_BATCHNORM_PY",
                   help="instead: fcnseg with this file's frozen batch norm, this tree's folded and this tree's "
                        "unfolded, one after the other, --repeat rounds")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--old-batchnorm", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        return child(a)

    device = torch.device(a.device)
    machine = machine_summary() if device.type == "cpu" else torch.cuda.get_device_name(device)
    print(f"machine: {machine}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"precision auto -> {resolve_precision('auto', device)}", flush=True)
    ceiling = conv_ceiling(device, torch.float32, reps=10)
    step_flops = training_step_flops(a)
    print(f"fp32 conv ceiling {ceiling:.0f} GFLOP/s; one training step {step_flops / 1e9:.0f} GFLOP "
          f"({step_flops / a.batch / 1e9:.1f} per image)", flush=True)
    rows: dict[str, list[dict]] = {}
    rounds = tuple(BN_VARIANTS) if a.bn_compare else ("plain", "fcnseg")
    for i in range(a.repeat):
        for name in rounds[i % len(rounds):] + rounds[:i % len(rounds)]:  # the order turns: drift hits all
            rows.setdefault(name, []).append(summarise(run_child(name, a), a, step_flops, ceiling))
            print(f"round {i + 1}: {name}: {rows[name][-1]['images_per_s']:.2f} images/s", flush=True)
    if a.variants or a.only:
        for name in [v for v in list(VARIANTS)[1:] if a.only is None or v in a.only]:
            rows[name] = [summarise(run_child(name, a), a, step_flops, ceiling)]
    base = "plain" if "plain" in rows else next(iter(rows))
    plain = statistics.median(r["images_per_s"] for r in rows[base])

    print(f"\n| run | images/s | vs {base} | share of fp32 conv peak | start-up s |\n|---|---|---|---|---|")
    for name, rs in rows.items():
        ips = statistics.median(r["images_per_s"] for r in rs)
        share = statistics.median(r["share_of_conv_peak"] for r in rs)
        print(f"| {name} | {ips:.2f} | {ips / plain:.2f}x | {100 * share:.0f}% "
              f"| {statistics.median(r['startup_s'] for r in rs):.1f} |")
    if a.bn_compare:
        bn_table(rows)
    else:
        lp, lf = rows["plain"][0]["losses"], rows["fcnseg"][0]["losses"]
        print("\nloss, mean over steps | plain | fcnseg |\n|---|---|---|")
        for lo in range(0, min(len(lp), len(lf)), 10):
            print(f"| {lo + 1}-{lo + 10} | {statistics.mean(lp[lo:lo + 10]):.3f} "
                  f"| {statistics.mean(lf[lo:lo + 10]):.3f} |")
    if a.json:
        Path(a.json).write_text(json.dumps({"machine": machine, "date": datetime.date.today().isoformat(),
                                            "ceiling_gflops": ceiling, "step_flops": step_flops, "rows": rows},
                                           indent=1))


if __name__ == "__main__":
    main()
