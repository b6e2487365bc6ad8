"""``fcnseg predict`` at scale, in one run: plain, torchrun and a local Ray cluster (issue 21, part 5).

Usage:
    python benchmarks/predict_scale.py                          # N=101 (CamVid val), 3 repeats, 10,000-image job
    python benchmarks/predict_scale.py --repeats 1 --long 2000  # shorter
    python benchmarks/predict_scale.py --quick                  # smoke: 4 images, long job 20, resume 12
    python benchmarks/predict_scale.py --modes plain torchrun --out runs/x.json
    python benchmarks/predict_scale.py --repeats 0 --long 0 --resume-images 0 --http 3   # inputs by URL alone

Every run is a fresh CLI process started with ``subprocess`` (``.venv/bin/fcnseg``, ``.venv/bin/torchrun``), in a
session of its own, with a timeout (``--timeout-base`` + ``--timeout-per-image`` x images), ``--quiet`` and
``--no-overlay`` (``--overlay`` to write overlays too). Inputs are hard links (symlinks where the file system refuses)
of CamVid val images under distinct names in a temporary folder, so N and M can exceed the 101 val images; every
temporary folder (inputs, outputs, Ray's session folder via ``RAY_TMPDIR``) is deleted at the end.

Modes and their thread settings (the machine has 2 cores; no mode oversubscribes them with compute threads):
  plain      ``fcnseg predict``: 1 process, ``OMP_NUM_THREADS=2`` (torch's 2 intra-op threads), ``--workers
             --plain-workers`` loader processes (default 2: the CLI's default; they only decode PNGs).
  torchrun   ``torchrun --nproc-per-node 2 --master-addr 127.0.0.1 --master-port <free> -m fcnseg.cli predict``:
             2 processes, ``OMP_NUM_THREADS=1`` each, ``--workers --torchrun-workers`` each (default 0: decode in
             the process, the 2 processes already fill the 2 cores).
  ray        ``fcnseg predict --ray local --ray-actors 2``: the driver plans and merges, 2 actors (1 CPU each)
             predict; ``OMP_NUM_THREADS=1`` for the driver and (inherited) the actors; Ray's own processes
             (gcs_server, raylet, workers) are part of the measured process tree.

Measurements:
  1. throughput: each mode over the same N images (default 101 = all of CamVid val), for each ``--formats`` entry
     (default ``png`` and ``rle``), ``--repeats`` times, the modes' order rotated each repeat. Per cell the median
     images/s as the CLI reports it (its loop: after start-up; under torchrun the slowest process; under Ray from
     after ``ray.init``, actors' start included) and over the whole command's wall clock (start-up, checkpoint,
     Ray/rendezvous and merge included), each against plain's; time to first output (the first manifest line,
     which is appended once an input's outputs are in place, polled every 0.1 s); CPU seconds per image of the
     process tree (utime+stime, sampled); peak RSS of the tree; and whether labels equal plain's (label PNG bytes,
     decoded pixels where bytes differ; ``predictions.jsonl`` bytes, records where bytes differ).
  2. memory over a long job of M images (``--long``, default 10,000), ``--format png``: every 0.5 s the sum over
     the process tree (descendants by ``/proc/<pid>/task/*/children``) of VmRSS from ``/proc/<pid>/status`` and
     of Pss from ``/proc/<pid>/smaps_rollup`` (RSS counts shared pages once per process, e.g. Ray's object store
     and torch's libraries; PSS splits them), reported at 10%, 50% and 90% of the images done (manifest lines;
     the first sample past that share while images remain) and the maximum; "growth" is RSS at 90% minus at 10%.
  3. resume after a kill: plain ``--format png,rle --skip-bad`` over K images (``--resume-images``, default 200),
     SIGKILL to its process group (the command and its loader workers, as a preempted job) once K/2 manifest
     lines exist, then the same command with ``--resume``. Reports images done before the kill (manifest lines
     ``done``), redone by the resume (its summary), total wall, and checks that every label PNG exists once, no
     temporary file is left, ``predictions.jsonl`` has one record per input and the manifest one ``done`` line
     per input.
  4. sizes: ``predictions.jsonl`` of the plain ``rle`` run against the label PNGs (no overlays) of the plain
     ``png`` run over the same N images: bytes, bytes on disk (allocated blocks), and the JSON-lines file gzipped.
  5. inputs by URL (``--http`` runs per mode, default 1; 0 skips): each mode over the N images given as the URL
     of a folder served over HTTP on 127.0.0.1 (Python's ``http.server`` in a thread of this script; fsspec lists
     its index page) against the same folder on disk, ``--format png``, alternated; images/s of each and whether
     the labels are the same. ``--repeats 0 --long 0 --resume-images 0`` runs this alone.

The machine line (date, CPU model from /proc/cpuinfo, torch's CPU capability, torch/ray versions, load average)
and one Markdown table per measurement are printed at the end and written, with the raw samples, to ``--out``
(default runs/predict_scale.json). 2-core machines here are shared: images/s are noisy, memory much less so.
Run it on idle cores, not under ``nice`` beside other work: there, plain's 2-thread process (whose parallel regions
wait for both threads) loses far more than the 1-thread processes of torchrun and Ray (the ``--quick`` smoke run,
niced on a loaded machine, showed plain 5x slower than torchrun), so the ratios would measure the load.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import gzip
import http.server
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CHECKPOINT = REPO / "benchmarks" / "camvid" / "fcn8s_efficientnet_lite0_camvid.pt"
DATA = Path(os.environ.get("FCNSEG_DATA", REPO.parent / "shared" / "data"))
BIN = REPO / ".venv" / "bin"
MANIFEST_RE = re.compile(r"manifest(\.[A-Za-z0-9_-]+)?\.jsonl")
SUMMARY_RE = re.compile(r"(\d+) images in ([\d.]+) s \(([\d.]+) images/s\)")
RESUMED_RE = re.compile(r"(\d+) done before")
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024
MODES = ("plain", "torchrun", "ray")
PARTS = {"plain": 1, "torchrun": 2, "ray": 2}  # manifest files appended to during a run (ranks, actors)


# ---------------------------------------------------------------- the process tree, from /proc


def _stat(pid: int) -> tuple[int, int, float] | None:
    """``(ppid, start time in ticks, CPU seconds)`` of ``pid``, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            rest = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(rest[1]), int(rest[19]), (int(rest[11]) + int(rest[12])) / CLK_TCK


def _children(pid: int) -> list[int]:
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    kids: list[int] = []
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids += [int(x) for x in f.read().split()]
        except OSError:  # no CONFIG_PROC_CHILDREN: scan every process's parent
            return [p for p in map(int, filter(str.isdigit, os.listdir("/proc"))) if (s := _stat(p)) and s[0] == pid]
    return kids


def tree(root: int) -> list[int]:
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += _children(pid)
    return out


def memory_kib(pid: int) -> tuple[int, int]:
    """``(VmRSS, Pss)`` in KiB; zeros for a process that is gone (or a zombie)."""
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                    break
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1])
                    break
    except (OSError, ValueError):
        pass
    return rss, pss


class Monitor(threading.Thread):
    """Watches one command: manifest lines done (every 0.1 s), and every ``interval`` s the RSS/PSS summed over
    its process tree; optionally SIGKILLs its process group once ``kill_at`` inputs are done."""

    def __init__(self, proc: subprocess.Popen, out: Path, t0: float, interval: float, *, total: int, parts: int,
                 kill_at: int | None = None):
        super().__init__(daemon=True)
        self.proc, self.out, self.t0, self.interval, self.kill_at = proc, out, t0, interval, kill_at
        self.total, self.parts = total, parts  # inputs of the job; manifest files its writers append to
        self.samples: list[tuple[float, int, float, float, int]] = []  # (s, done, RSS MiB, PSS MiB, processes)
        self.first_output_s: float | None = None
        self.killed_at: tuple[float, int] | None = None  # (s, inputs done when the kill was sent)
        self.seen: dict[int, tuple[int, float]] = {}  # pid -> (start ticks, last CPU seconds)
        self.done = 0
        self._offsets: dict[str, int] = {}
        self._files: list[str] = []
        self._last_scan = -1e9
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()
        self.join()

    def _count(self) -> None:
        now = time.monotonic()
        # Rescan the folder (10,000 files in the long job) every 0.1 s until every writer's manifest is there
        # (torchrun's ranks and Ray's actors start theirs at different times), then every 5 s.
        if now - self._last_scan > (5.0 if len(self._files) >= self.parts else 0.1):
            self._last_scan = now
            try:
                self._files = sorted(e.path for e in os.scandir(self.out) if MANIFEST_RE.fullmatch(e.name))
            except OSError:
                self._files = []
        for path in self._files:
            try:
                with open(path, "rb") as f:
                    f.seek(self._offsets.get(path, 0))
                    data = f.read()
            except OSError:  # a part merged and deleted: its lines stay counted
                continue
            if data:
                end = data.rfind(b"\n") + 1  # whole lines only
                self._offsets[path] = self._offsets.get(path, 0) + end
                self.done = min(self.total, self.done + data[:end].count(b"\n"))  # a merge rewrites them

    def _sample(self, t: float) -> None:
        rss = pss = 0
        pids = tree(self.proc.pid)
        for pid in pids:
            st = _stat(pid)
            if st is None:
                continue
            start, cpu = st[1], st[2]
            if pid in self.seen and self.seen[pid][0] != start:  # a reused pid: a different process
                continue
            self.seen[pid] = (start, cpu)
            r, p = memory_kib(pid)
            rss, pss = rss + r, pss + p
        if rss == 0:  # ended (a zombie not yet reaped)
            return
        self.samples.append((round(t, 2), self.done, round(rss / 1024, 1), round(pss / 1024, 1), len(pids)))

    def run(self) -> None:
        next_mem = 0.0
        while not self._halt.wait(0.1):
            t = time.perf_counter() - self.t0
            self._count()
            if self.first_output_s is None and self.done > 0:
                self.first_output_s = t
            if self.kill_at is not None and self.killed_at is None and self.done >= self.kill_at:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.killed_at = (t, self.done)
                except ProcessLookupError:
                    pass
            if t >= next_mem and self.proc.returncode is None:
                self._sample(t)
                next_mem = t + self.interval
        self._count()

    def cpu_seconds(self) -> float:
        return sum(cpu for _, cpu in self.seen.values())

    def leftovers(self, grace: float = 10.0) -> int:
        """Wait up to ``grace`` s for every process seen to end; SIGKILL (by pid) those still alive; their count."""
        deadline = time.monotonic() + grace
        alive = list(self.seen)
        while alive and time.monotonic() < deadline:
            alive = [p for p in alive if (s := _stat(p)) and s[1] == self.seen[p][0] and not _zombie(p)]
            if alive:
                time.sleep(0.2)
        for pid in alive:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return len(alive)


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except OSError:
        return True


# ---------------------------------------------------------------- running the CLI


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mode_command(mode: str, a: argparse.Namespace, inputs: Path | str, out: Path, fmt: str,
                 extra: list[str]) -> tuple[list[str], dict[str, str], str]:
    """``(argv, environment, settings in words)`` of one mode."""
    common = ["--checkpoint", str(a.checkpoint), str(inputs), "-o", str(out), "--format", fmt, "--quiet",
              "--overlay" if a.overlay else "--no-overlay", *extra]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    if mode == "plain":
        env.update(OMP_NUM_THREADS="2", MKL_NUM_THREADS="2")
        return ([str(BIN / "fcnseg"), "predict", *common, "--workers", str(a.plain_workers)], env,
                f"1 process x 2 threads, {a.plain_workers} loader workers")
    if mode == "torchrun":
        port = free_port()
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        return ([str(BIN / "torchrun"), "--nproc-per-node", "2", "--master-addr", "127.0.0.1", "--master-port",
                 str(port), "-m", "fcnseg.cli", "predict", *common, "--workers", str(a.torchrun_workers)], env,
                f"2 processes x 1 thread, {a.torchrun_workers} loader workers each")
    if mode == "ray":
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", RAY_TMPDIR=a.ray_tmp)
        store = [] if a.ray_object_store_mb is None else ["--ray-object-store-mb", str(a.ray_object_store_mb)]
        return ([str(BIN / "fcnseg"), "predict", *common, "--ray", "local", "--ray-actors", "2", *store], env,
                "driver + 2 actors x 1 thread (Ray local, 127.0.0.1"
                + ("" if a.ray_object_store_mb is None else f", {a.ray_object_store_mb} MiB object store") + ")")
    raise ValueError(mode)


def run_cli(cmd: list[str], env: dict[str, str], out: Path, n_images: int, a: argparse.Namespace, *,
            interval: float = 0.5, kill_at: int | None = None, check: bool = True,
            parts: int = 1) -> dict[str, Any]:
    timeout = a.timeout_base + a.timeout_per_image * n_images
    # Output to files, not pipes: a process left behind holding a pipe would block reading it to the end.
    with tempfile.TemporaryFile("w+") as so, tempfile.TemporaryFile("w+") as se:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=so, stderr=se, text=True, env=env, start_new_session=True, cwd=REPO)
        mon = Monitor(proc, out, t0, interval, total=n_images, parts=parts, kill_at=kill_at)
        mon.start()
        try:
            proc.wait(timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            timed_out = True
        wall = time.perf_counter() - t0
        mon.stop()
        left = mon.leftovers(0 if timed_out else 10.0)
        so.seek(0)
        se.seek(0)
        stdout, stderr = so.read(), se.read()
    if timed_out:
        raise RuntimeError(f"timed out after {timeout:.0f} s: {' '.join(cmd)}\n{stderr[-3000:]}")
    killed = mon.killed_at is not None
    if check and proc.returncode != 0 and not killed:
        raise RuntimeError(f"failed ({proc.returncode}): {' '.join(cmd)}\n{stdout[-2000:]}\n{stderr[-3000:]}")
    m = SUMMARY_RE.search(stdout)
    r = RESUMED_RE.search(stdout)
    peak = max(mon.samples, key=lambda s: s[2], default=(0, 0, 0.0, 0.0, 0))
    images, ips = (int(m.group(1)), float(m.group(3))) if m else (None, None)
    return {"returncode": proc.returncode, "wall_s": wall, "images": images, "ips_cli": ips,
            "cli_s": (images / ips if ips else float(m.group(2))) if m else None,
            "resumed": int(r.group(1)) if r else 0,
            "first_output_s": mon.first_output_s, "done_lines": mon.done, "cpu_s": mon.cpu_seconds(),
            "peak_rss_mib": peak[2], "peak_pss_mib": max((s[3] for s in mon.samples), default=0.0),
            "max_processes": max((s[4] for s in mon.samples), default=0), "samples": mon.samples,
            "killed_at": mon.killed_at, "leftover_processes": left, "stdout_tail": stdout[-500:],
            "stderr_tail": stderr[-1500:]}


def link_inputs(folder: Path, sources: list[Path], n: int) -> Path:
    """``n`` inputs in ``folder``: the sources cycled, hard-linked (else symlinked) under distinct names."""
    folder.mkdir(parents=True)
    repeat = n > len(sources)
    for k in range(n):
        src = sources[k % len(sources)]
        dst = folder / (f"r{k:06d}_{src.name}" if repeat else src.name)
        try:
            os.link(src, dst)
        except OSError:
            os.symlink(src.resolve(), dst)
    return folder


def label_pngs(folder: Path) -> dict[str, Path]:
    return {p.name: p for p in sorted(folder.glob("*.png")) if not p.name.endswith("_overlay.png")}


def same_labels(ref: Path, other: Path, fmt: str) -> str:
    """Whether ``other``'s outputs equal ``ref``'s: label PNGs (bytes, else pixels) and predictions.jsonl."""
    notes = []
    if "png" in fmt.split(","):
        a, b = label_pngs(ref), label_pngs(other)
        if set(a) != set(b):
            notes.append(f"png names differ ({len(a)} vs {len(b)})")
        else:
            differ = [k for k in a if a[k].read_bytes() != b[k].read_bytes()]
            if differ:
                import numpy as np
                from PIL import Image

                pixels = [k for k in differ if not np.array_equal(np.asarray(Image.open(a[k])),
                                                                  np.asarray(Image.open(b[k])))]
                notes.append(f"{len(pixels)}/{len(a)} label maps differ" if pixels
                             else f"pixels equal ({len(differ)} PNGs differ in bytes only)")
    if "rle" in fmt.split(","):
        pa, pb = ref / "predictions.jsonl", other / "predictions.jsonl"
        if not (pa.is_file() and pb.is_file()):
            notes.append("predictions.jsonl missing")
        elif pa.read_bytes() != pb.read_bytes():
            ra = {json.loads(x)["file"]: x for x in pa.read_text().splitlines()}
            rb = {json.loads(x)["file"]: x for x in pb.read_text().splitlines()}
            differ = sum(1 for k in ra if json.loads(ra[k]) != json.loads(rb.get(k, "null")))
            notes.append(f"{differ}/{len(ra)} RLE records differ" if differ or set(ra) != set(rb)
                         else "RLE records equal (order or bytes differ)")
    return "; ".join(notes) or "yes"


def rmtree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------- the measurements


def measure_throughput(a: argparse.Namespace, tmp: Path, sources: list[Path]) -> tuple[list[dict], dict[str, Path]]:
    inputs = link_inputs(tmp / "inputs", sources, a.images)
    kept: dict[str, Path] = {}  # (mode/format) -> rep-0 output folder, for the label check and sizes
    runs: list[dict] = []
    if a.warmup:  # page cache of Python, torch and the checkpoint; untimed
        warm_in = link_inputs(tmp / "warm_in", sources, 2)
        cmd, env, _ = mode_command("plain", a, warm_in, tmp / "warm_out", "png", [])
        run_cli(cmd, env, tmp / "warm_out", 2, a)
        rmtree(tmp / "warm_out")
    for rep in range(a.repeats):
        order = a.modes[rep % len(a.modes):] + a.modes[:rep % len(a.modes)]
        for fmt in a.formats:
            for mode in order:
                out = tmp / f"tp_{mode}_{fmt.replace(',', '+')}_{rep}"
                cmd, env, settings = mode_command(mode, a, inputs, out, fmt, [])
                r = run_cli(cmd, env, out, a.images, a, parts=PARTS[mode])
                if r["images"] != a.images:
                    raise RuntimeError(f"{mode} {fmt}: {r['images']} images of {a.images}: {r['stdout_tail']}")
                r.update(mode=mode, format=fmt, rep=rep, settings=settings)
                runs.append(r)
                log(f"  {mode:8s} {fmt:7s} rep {rep}: {r['ips_cli']:.2f} images/s (CLI), "
                    f"{r['wall_s']:.1f} s wall, peak RSS {r['peak_rss_mib']:.0f} MiB")
                if rep == 0:
                    kept[f"{mode}/{fmt}"] = out
                else:
                    rmtree(out)
    return runs, kept


def summarize_throughput(a: argparse.Namespace, runs: list[dict], kept: dict[str, Path]) -> list[dict]:
    rows = []
    for fmt in a.formats:
        for mode in a.modes:
            rs = [r for r in runs if r["mode"] == mode and r["format"] == fmt]
            first = [r["first_output_s"] for r in rs if r["first_output_s"] is not None]
            rows.append({
                "mode": mode, "format": fmt, "settings": rs[0]["settings"], "images": a.images, "runs": len(rs),
                "ips_cli": statistics.median(r["ips_cli"] for r in rs),
                "ips_cli_all": [r["ips_cli"] for r in rs],
                "ips_wall": statistics.median(a.images / r["wall_s"] for r in rs),
                "wall_s": statistics.median(r["wall_s"] for r in rs),
                "overhead_s": statistics.median(r["wall_s"] - r["cli_s"] for r in rs),
                "first_output_s": statistics.median(first) if first else None,
                "cpu_s_per_image": statistics.median(r["cpu_s"] / a.images for r in rs),
                "peak_rss_mib": max(r["peak_rss_mib"] for r in rs),
                "peak_pss_mib": max(r["peak_pss_mib"] for r in rs),
                "leftover_processes": sum(r["leftover_processes"] for r in rs),
                "same_as_plain": "reference" if mode == "plain" else
                (same_labels(kept[f"plain/{fmt}"], kept[f"{mode}/{fmt}"], fmt) if f"plain/{fmt}" in kept
                 else "no plain run"),
            })
    for row in rows:
        plain = next((r for r in rows if r["mode"] == "plain" and r["format"] == row["format"]), None)
        png = next((r for r in rows if r["mode"] == row["mode"] and r["format"] == "png"), None)
        row["vs_plain_cli"] = row["ips_cli"] / plain["ips_cli"] if plain else None
        row["vs_plain_wall"] = row["ips_wall"] / plain["ips_wall"] if plain else None
        row["vs_png_cli"] = row["ips_cli"] / png["ips_cli"] if png else None
    return rows


def measure_memory(a: argparse.Namespace, tmp: Path, sources: list[Path]) -> list[dict]:
    inputs = link_inputs(tmp / "long_in", sources, a.long)
    rows = []
    for mode in a.modes:
        out = tmp / f"long_{mode}"
        cmd, env, settings = mode_command(mode, a, inputs, out, "png", [])
        r = run_cli(cmd, env, out, a.long, a, parts=PARTS[mode])
        rmtree(out)
        # the first sample past q of the images, while images are still to do (not the loader's or Ray's end)
        at = {q: next((s for s in r["samples"] if q * a.long <= s[1] < a.long), None) for q in (0.1, 0.5, 0.9)}
        max_rss = max((s[2] for s in r["samples"]), default=0.0)
        row = {"mode": mode, "settings": settings, "images": a.long, "ips_cli": r["ips_cli"],
               "wall_s": r["wall_s"], "rss_at": {str(q): (s[2] if s else None) for q, s in at.items()},
               "pss_at": {str(q): (s[3] if s else None) for q, s in at.items()},
               "max_rss_mib": max_rss, "max_pss_mib": max((s[3] for s in r["samples"]), default=0.0),
               "growth_rss_mib": (at[0.9][2] - at[0.1][2]) if at[0.1] and at[0.9] else None,
               "max_processes": r["max_processes"], "leftover_processes": r["leftover_processes"],
               "samples": r["samples"]}
        rows.append(row)
        log(f"  long {mode:8s}: {a.long} images, {row['ips_cli']:.2f} images/s, max RSS {max_rss:.0f} MiB, "
            f"growth 10%->90% {f(row['growth_rss_mib'], '+.0f')} MiB")
    rmtree(inputs)
    return rows


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass


def measure_http(a: argparse.Namespace, tmp: Path, sources: list[Path]) -> list[dict]:
    """Each mode reading the throughput inputs as a URL (a folder served over HTTP on 127.0.0.1 by Python's own
    file server, in a thread of this script) against the same folder read from disk: --format png, ``a.http``
    runs of each, alternated."""
    inputs = link_inputs(tmp / "http_in" / "val", sources, a.images)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(
        _QuietHandler, directory=str(tmp / "http_in")))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/val/"
    rows = []
    try:
        for mode in a.modes:
            runs: dict[str, list[dict]] = {"local": [], "http": []}
            for rep in range(a.http):
                for where in ("local", "http") if rep % 2 == 0 else ("http", "local"):
                    out = tmp / f"http_{mode}_{where}_{rep}"
                    cmd, env, settings = mode_command(mode, a, inputs if where == "local" else url, out, "png", [])
                    r = run_cli(cmd, env, out, a.images, a, parts=PARTS[mode])
                    if r["images"] != a.images:
                        raise RuntimeError(f"{mode} {where}: {r['images']} images of {a.images}: {r['stdout_tail']}")
                    runs[where].append(r)
                    log(f"  {mode:8s} {where:5s} rep {rep}: {r['ips_cli']:.2f} images/s (CLI), "
                        f"{r['wall_s']:.1f} s wall")
            same = same_labels(tmp / f"http_{mode}_local_0", tmp / f"http_{mode}_http_0", "png")
            for rep in range(a.http):
                for where in ("local", "http"):
                    rmtree(tmp / f"http_{mode}_{where}_{rep}")
            med = {w: statistics.median(r["ips_cli"] for r in rs) for w, rs in runs.items()}
            wall = {w: statistics.median(r["wall_s"] for r in rs) for w, rs in runs.items()}
            rows.append({"mode": mode, "settings": settings, "images": a.images, "runs": a.http,
                         "ips_local": med["local"], "ips_http": med["http"], "ratio": med["http"] / med["local"],
                         "wall_local_s": wall["local"], "wall_http_s": wall["http"], "same_as_local": same})
    finally:
        server.shutdown()
        server.server_close()
        rmtree(tmp / "http_in")
    return rows


def measure_resume(a: argparse.Namespace, tmp: Path, sources: list[Path]) -> dict:
    k = a.resume_images
    inputs = link_inputs(tmp / "resume_in", sources, k)
    out = tmp / "resume_out"
    extra = ["--skip-bad"]
    cmd, env, settings = mode_command("plain", a, inputs, out, "png,rle", extra)
    first = run_cli(cmd, env, out, k, a, kill_at=k // 2, check=False)
    killed = first["killed_at"] is not None and first["returncode"] != 0
    manifest_lines = _manifest_lines(out)
    done_before = len({x["file"] for x in manifest_lines if x.get("status") == "done"})
    pngs_before = len(label_pngs(out))
    cmd2, env2, _ = mode_command("plain", a, inputs, out, "png,rle", [*extra, "--resume"])
    second = run_cli(cmd2, env2, out, k, a)
    # checks: every output once
    expected = {p.stem + ".png" for p in inputs.iterdir()}
    pngs = set(label_pngs(out))
    temps = [p.name for p in out.iterdir() if p.name.startswith(".") or p.name.endswith(".tmp")]
    records = [json.loads(x)["file"] for x in (out / "predictions.jsonl").read_text().splitlines()] \
        if (out / "predictions.jsonl").is_file() else []
    lines = _manifest_lines(out)
    done_per_file: dict[str, int] = {}
    for x in lines:
        if x.get("status") == "done":
            done_per_file[x["file"]] = done_per_file.get(x["file"], 0) + 1
    checks = {
        "label PNGs = inputs": pngs == expected,
        "no temporary files": not temps,
        "predictions.jsonl: one record per input": len(records) == k and len(set(records)) == k,
        "manifest: one done line per input": len(done_per_file) == k and set(done_per_file.values()) == {1},
        "no part files left": not list(out.glob("*.rank*.jsonl")),
    }
    rmtree(out)
    rmtree(inputs)
    res = {"images": k, "settings": settings + ", --format png,rle --skip-bad", "killed": killed,
           "killed_at_s": first["killed_at"][0] if first["killed_at"] else None,
           "kill_sent_at_done": first["killed_at"][1] if first["killed_at"] else None,
           "done_before_kill": done_before, "label_pngs_before_resume": pngs_before,
           "resume_redone": second["images"], "resume_reported_done_before": second["resumed"],
           "expected_redone": k - done_before, "wall_first_s": first["wall_s"], "wall_resume_s": second["wall_s"],
           "total_wall_s": first["wall_s"] + second["wall_s"], "checks": checks, "all_ok": all(checks.values()),
           "manifest_lines_after": len(lines), "temporary_files": temps[:10]}
    log(f"  resume: killed={killed} after {done_before} done; resume redid {second['images']} "
        f"(expected {k - done_before}); checks {'ok' if res['all_ok'] else checks}")
    return res


def _manifest_lines(out: Path) -> list[dict]:
    lines = []
    for path in [out / "manifest.jsonl", *sorted(out.glob("manifest.*.jsonl"))]:
        if path.is_file():
            for line in path.read_text().splitlines():
                try:
                    lines.append(json.loads(line))
                except json.JSONDecodeError:  # a torn last line of a killed run
                    pass
    return lines


def measure_sizes(kept: dict[str, Path]) -> dict | None:
    png_dir, rle_dir = kept.get("plain/png"), kept.get("plain/rle")
    if png_dir is None or rle_dir is None:  # fall back to one run with both formats
        both = next((v for k, v in kept.items() if k.startswith("plain/") and "png" in k and "rle" in k), None)
        png_dir = rle_dir = both
    if png_dir is None:
        return None
    pngs = list(label_pngs(png_dir).values())
    jsonl = rle_dir / "predictions.jsonl"
    raw = jsonl.read_bytes()
    n = len(raw.splitlines())
    png_bytes = sum(p.stat().st_size for p in pngs)
    png_disk = sum(p.stat().st_blocks * 512 for p in pngs)
    return {"images": len(pngs), "records": n, "png_bytes": png_bytes, "png_disk_bytes": png_disk,
            "jsonl_bytes": len(raw), "jsonl_disk_bytes": jsonl.stat().st_blocks * 512,
            "jsonl_gzip_bytes": len(gzip.compress(raw, 6)),
            "png_per_image": png_bytes / max(len(pngs), 1), "png_disk_per_image": png_disk / max(len(pngs), 1),
            "jsonl_per_image": len(raw) / max(n, 1), "jsonl_gzip_per_image": len(gzip.compress(raw, 6)) / max(n, 1),
            "ratio": len(raw) / png_bytes if png_bytes else None}


# ---------------------------------------------------------------- report


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def machine() -> dict[str, Any]:
    import torch

    from fcnseg.precision import cpu_model

    try:
        import ray

        ray_version = ray.__version__
    except Exception:  # noqa: BLE001 - the extra may be absent: the ray mode then fails on its own
        ray_version = "not installed"
    mem = {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in Path("/proc/meminfo").read_text()
                                             .splitlines()) if k in ("MemTotal", "MemAvailable")}
    return {"date": dt.datetime.now().isoformat(timespec="seconds"), "host": platform.node(),
            "arch": platform.machine(), "cpu": cpu_model(), "logical_cores": os.cpu_count(),
            "capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__, "ray": ray_version,
            "python": platform.python_version(), "mem_total_gib": round(mem["MemTotal"] / 2**20, 1),
            "mem_available_gib": round(mem["MemAvailable"] / 2**20, 1), "load_start": round(os.getloadavg()[0], 2)}


def f(x: float | None, spec: str = ".2f", suffix: str = "") -> str:
    return "-" if x is None else f"{x:{spec}}{suffix}"


def tables(res: dict[str, Any]) -> str:
    m = res["machine"]
    lines = [f"date: {m['date']}; host: {m['host']} ({m['arch']}); CPU: {m['cpu']}, {m['logical_cores']} logical "
             f"cores; torch {m['torch']}, CPU capability {m['capability']}; ray {m['ray']}; Python {m['python']}; "
             f"memory {m['mem_total_gib']} GiB ({m['mem_available_gib']} available); load average "
             f"{m['load_start']} at the start, {m.get('load_end', '-')} at the end",
             f"command: {res['command']}", ""]
    if res.get("throughput"):
        lines += [f"### Throughput: {res['settings']['images']} CamVid val images, median of "
                  f"{res['settings']['repeats']} runs, label outputs "
                  + ("and overlays" if res["settings"]["overlay"] else "without overlays"), "",
                  "| mode | processes x threads | format | images/s (CLI) | vs plain | vs png | images/s (wall) "
                  "| vs plain | start-up + merge (s) | first output (s) | CPU s / image | peak RSS (MiB) "
                  "| peak PSS (MiB) | same labels as plain |",
                  "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for r in res["throughput"]:
            lines.append(f"| {r['mode']} | {r['settings']} | {r['format']} | {r['ips_cli']:.2f} | "
                         f"{f(r['vs_plain_cli'], '.2f', 'x')} | {f(r['vs_png_cli'], '.2f', 'x')} | "
                         f"{r['ips_wall']:.2f} | {f(r['vs_plain_wall'], '.2f', 'x')} | {r['overhead_s']:.1f} | "
                         f"{f(r['first_output_s'], '.1f')} | {r['cpu_s_per_image']:.3f} | {r['peak_rss_mib']:.0f} | "
                         f"{r['peak_pss_mib']:.0f} | {r['same_as_plain']} |")
        lines += ["", "images/s (CLI): the command's own figure (its loop; under torchrun the slowest process; under "
                  "Ray from after ray.init, actors' start-up included); (wall): the whole command. vs plain: this "
                  "mode's images/s / plain's, same format; vs png: this format's / png's, same mode. RSS/PSS: sum "
                  "over the process tree, sampled every 0.5 s.", ""]
    if res.get("memory"):
        lines += [f"### Memory over a {res['settings']['long']:,}-image job (--format png, repeated inputs)", "",
                  "| mode | images/s | RSS at 10% (MiB) | 50% | 90% | max | growth 10%->90% | PSS at 10% | 50% | 90% "
                  "| max | processes |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in res["memory"]:
            ra, pa = r["rss_at"], r["pss_at"]
            lines.append(f"| {r['mode']} | {r['ips_cli']:.2f} | {f(ra['0.1'], '.0f')} | {f(ra['0.5'], '.0f')} | "
                         f"{f(ra['0.9'], '.0f')} | {r['max_rss_mib']:.0f} | {f(r['growth_rss_mib'], '+.0f')} | "
                         f"{f(pa['0.1'], '.0f')} | {f(pa['0.5'], '.0f')} | {f(pa['0.9'], '.0f')} | "
                         f"{r['max_pss_mib']:.0f} | {r['max_processes']} |")
        lines += ["", "At 10/50/90%: the first 0.5 s sample with that share of the images done (manifest lines) "
                  "and some still to do; '-' where a short job had no sample there.", ""]
    if res.get("http"):
        lines += [f"### Inputs by URL: {res['settings']['images']} CamVid val images over HTTP on 127.0.0.1 against "
                  f"the same folder on disk (--format png, median of {res['settings']['http']} runs)", "",
                  "| mode | processes x threads | local images/s (CLI) | over HTTP | HTTP / local | wall local (s) "
                  "| wall HTTP (s) | same labels as local |",
                  "|---|---|---:|---:|---:|---:|---:|---|"]
        for r in res["http"]:
            lines.append(f"| {r['mode']} | {r['settings']} | {r['ips_local']:.2f} | {r['ips_http']:.2f} | "
                         f"{r['ratio']:.2f}x | {r['wall_local_s']:.1f} | {r['wall_http_s']:.1f} | "
                         f"{r['same_as_local']} |")
        lines += ["", "The server (Python's http.server, in a thread of the benchmark) shares the machine's cores "
                  "with the command; the URL is the folder's index page, listed by fsspec.", ""]
    if res.get("resume"):
        r = res["resume"]
        lines += [f"### Resume after SIGKILL ({r['settings']})", "",
                  "| images | killed | done before the kill | redone by --resume | expected (images - done) | "
                  "resume's 'done before' | first run (s) | resume (s) | total wall (s) | every output once |",
                  "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|"]
        bad = [k for k, v in r["checks"].items() if not v]
        lines.append(f"| {r['images']} | {'yes, at ' + f(r['killed_at_s'], '.1f') + ' s' if r['killed'] else 'no'} | "
                     f"{r['done_before_kill']} | {r['resume_redone']} | {r['expected_redone']} | "
                     f"{r['resume_reported_done_before']} | {r['wall_first_s']:.1f} | {r['wall_resume_s']:.1f} | "
                     f"{r['total_wall_s']:.1f} | {'yes' if r['all_ok'] else 'NO: ' + ', '.join(bad)} |")
        lines += ["", "Checks: " + "; ".join(f"{k}: {'ok' if v else 'FAILED'}" for k, v in r["checks"].items()), ""]
    if res.get("sizes"):
        s = res["sizes"]
        lines += [f"### RLE file against label PNGs ({s['images']} images, plain run)", "",
                  "| output | total (KiB) | per image (KB) | on disk per image (KB) | vs PNGs |",
                  "|---|---:|---:|---:|---:|",
                  f"| label PNGs (no overlays) | {s['png_bytes'] / 1024:.0f} | {s['png_per_image'] / 1e3:.2f} | "
                  f"{s['png_disk_per_image'] / 1e3:.2f} | 1.00x |",
                  f"| predictions.jsonl | {s['jsonl_bytes'] / 1024:.0f} | {s['jsonl_per_image'] / 1e3:.2f} | "
                  f"{s['jsonl_disk_bytes'] / max(s['records'], 1) / 1e3:.2f} | {f(s['ratio'], '.2f', 'x')} |",
                  f"| predictions.jsonl, gzip -6 | {s['jsonl_gzip_bytes'] / 1024:.0f} | "
                  f"{s['jsonl_gzip_per_image'] / 1e3:.2f} | - | {s['jsonl_gzip_bytes'] / s['png_bytes']:.2f}x |", ""]
    left = sum(r.get("leftover_processes", 0) for r in [*res.get("throughput", []), *res.get("memory", [])])
    if left:
        lines += [f"warning: {left} processes outlived their command by 10 s and were killed", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, default=CHECKPOINT)
    ap.add_argument("--val", type=Path, default=DATA / "camvid" / "val", help="folder of source images")
    ap.add_argument("--images", type=int, default=101, help="N: images of the throughput runs (101 = CamVid val)")
    ap.add_argument("--repeats", type=int, default=3, help="throughput runs per mode and format")
    ap.add_argument("--formats", nargs="+", default=["png", "rle"], help="--format values of the throughput runs")
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--long", type=int, default=10_000, help="M: images of the memory job per mode (0: skip)")
    ap.add_argument("--resume-images", type=int, default=200, help="K: images of the kill/resume test (0: skip)")
    ap.add_argument("--http", type=int, default=1,
                    help="runs per mode reading the N images over HTTP on 127.0.0.1 and from disk (0: skip)")
    ap.add_argument("--plain-workers", type=int, default=2, help="loader workers of plain (the CLI's default: 2)")
    ap.add_argument("--torchrun-workers", type=int, default=0, help="loader workers of each torchrun process")
    ap.add_argument("--ray-object-store-mb", type=int, default=None,
                    help="--ray-object-store-mb of the ray mode (default: the CLI's, 512)")
    ap.add_argument("--overlay", action="store_true", help="also write overlays (default: --no-overlay)")
    ap.add_argument("--no-warmup", dest="warmup", action="store_false", help="skip the untimed 2-image plain run")
    ap.add_argument("--timeout-base", type=float, default=300.0, help="seconds allowed to every command ...")
    ap.add_argument("--timeout-per-image", type=float, default=1.0, help="... plus this many per image")
    ap.add_argument("--tmp", type=Path, default=None, help="where the temporary folders go (default: $TMPDIR)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 4 images, 1 repeat, long job 20, resume 12")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "predict_scale.json")
    a = ap.parse_args()
    if a.quick:
        a.images, a.repeats, a.long, a.resume_images, a.warmup, a.http = 4, 1, 20, 12, False, 1
    for tool in ("fcnseg", "torchrun"):
        if not (BIN / tool).exists():
            sys.exit(f"error: {BIN / tool} not found; fix: create the venv (.venv) with the project installed")
    sources = sorted(p for p in a.val.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if not sources:
        sys.exit(f"error: no images in {a.val}; fix: set FCNSEG_DATA or --val")

    res: dict[str, Any] = {"command": "python benchmarks/predict_scale.py " + " ".join(sys.argv[1:]),
                           "machine": machine(),
                           "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()}}
    log(f"machine: {res['machine']}")
    tmp = Path(tempfile.mkdtemp(prefix="predict_scale_", dir=a.tmp))
    a.ray_tmp = tempfile.mkdtemp(prefix="psray_", dir="/tmp" if Path("/tmp").is_dir() else None)  # short: sockets
    try:
        kept: dict[str, Path] = {}
        if a.images > 0 and a.repeats > 0:
            log(f"throughput: {a.images} images x {a.repeats} repeats, modes {a.modes}, formats {a.formats}")
            runs, kept = measure_throughput(a, tmp, sources)
            res["throughput"] = summarize_throughput(a, runs, kept)
            res["throughput_runs"] = [{k: v for k, v in r.items() if k != "samples"} for r in runs]
            res["sizes"] = measure_sizes(kept)
            for path in kept.values():
                rmtree(path)
            rmtree(tmp / "inputs")
        if a.images > 0 and a.http > 0:
            log(f"inputs by URL: {a.images} images over HTTP on 127.0.0.1 and from disk, {a.http} runs per mode")
            res["http"] = measure_http(a, tmp, sources)
        if a.long > 0:
            log(f"memory: {a.long} images per mode")
            res["memory"] = measure_memory(a, tmp, sources)
        if a.resume_images > 0:
            log(f"resume: {a.resume_images} images, SIGKILL at half")
            res["resume"] = measure_resume(a, tmp, sources)
    finally:
        rmtree(tmp)
        rmtree(Path(a.ray_tmp))
    res["machine"]["load_end"] = round(os.getloadavg()[0], 2)
    text = tables(res)
    res["tables"] = text
    print(text)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=1, default=str))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
