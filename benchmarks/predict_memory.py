"""Peak memory of ``fcnseg predict`` on a 24 MP photo, tiled at several budgets and untiled, against a baseline.

Usage:
    python benchmarks/predict_memory.py                       # CamVid checkpoint, 6000x4000, tiles 1M and 4M
    python benchmarks/predict_memory.py --tiles 1048576 4194304 16777216 --limit-gib 16

The photo is a CamVid validation image upscaled (bicubic) to ``--size`` and saved as a JPEG, so the network
sees a real street scene at 24 MP. Each run is a fresh ``python -m fcnseg predict`` process (``--no-overlay``,
the CLI's default two loader workers) started by a lean Python parent that reads the peak resident size of
the command and its workers with ``getrusage(RUSAGE_CHILDREN).ru_maxrss``. (Started from this script, which
holds torch, a child's ``ru_maxrss`` would begin at this script's own size: the forked image counts until exec.)

Rows:
  baseline        a process that imports what ``fcnseg predict`` imports and loads the checkpoint's model
  480x360         the same predict command on the original CamVid image (fixed costs of predicting at all)
  tiles N         the 24 MP photo with ``--tile-pixels N``
  untiled         ``--tile-pixels`` above the photo's pixels: one forward over the whole image, run only when
                  the estimate (1.5 x the untiled bytes per pixel of a 2000x1333 probe, times the photo's
                  pixels; unscaled it fell short: 4.8 GiB estimated, 5.9 GiB measured) fits under
                  ``--limit-gib`` and under 75% of the memory available now; else listed as skipped.
Columns: peak RSS (MiB), bytes per photo pixel above the baseline, seconds of the whole process (start-up,
checkpoint, decode, predict, PNG writing) and seconds of prediction as ``fcnseg predict`` reports them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from fcnseg.precision import cpu_model

REPO = Path(__file__).resolve().parents[1]
CHECKPOINT = REPO / "benchmarks" / "camvid" / "fcn8s_efficientnet_lite0_camvid.pt"
DATA = Path(os.environ.get("FCNSEG_DATA", REPO.parent / "shared" / "data"))

# Runs argv[1:] and prints the peak resident size (KiB) of it and every child it reaped, as the last line.
MEASURE = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
           "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)")

BASELINE = ("import sys; import fcnseg.cli, fcnseg.train; from fcnseg.predict import Predictor; "
            "Predictor(sys.argv[1], device='cpu'); print('loaded')")


def measure(cmd: list[str], timeout: float) -> tuple[float, float, str]:
    """``(peak RSS MiB, wall seconds, stdout)`` of ``cmd``; raises with its stderr if it fails."""
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", MEASURE, *cmd], capture_output=True, text=True, timeout=timeout)
    seconds = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr[-2000:]}")
    *out, kib = r.stdout.strip().splitlines()
    return int(kib) / 1024, seconds, "\n".join(out)


def predict_cmd(checkpoint: Path, image: Path, out: Path, tile_pixels: int, workers: int) -> list[str]:
    return [sys.executable, "-m", "fcnseg", "predict", "--checkpoint", str(checkpoint), str(image), "-o", str(out),
            "--tile-pixels", str(tile_pixels), "--no-overlay", "--quiet", "--workers", str(workers), "--overwrite"]


def predict_seconds(stdout: str) -> float:
    m = re.search(r"images in ([\d.]+) s", stdout)
    return float(m.group(1)) if m else float("nan")


def tiles_of(w: int, h: int, tile_pixels: int) -> int:
    from fcnseg.predict import tile_grid

    if w * h <= tile_pixels:
        return 1
    core, _ = tile_grid(h, w, tile_pixels)
    return -(-h // core) * -(-w // core)


def mem_available_mib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return float("inf")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, default=CHECKPOINT)
    ap.add_argument("--image", type=Path, default=DATA / "camvid" / "val" / "0016E5_07959.png",
                    help="source photo, upscaled to --size")
    ap.add_argument("--size", default="6000x4000", help="WxH of the generated photo")
    ap.add_argument("--tiles", type=int, nargs="+", default=[1048576, 4194304], help="--tile-pixels values")
    ap.add_argument("--workers", type=int, default=2, help="loader workers of fcnseg predict (its default: 2)")
    ap.add_argument("--limit-gib", type=float, default=16.0, help="skip the untiled run if its estimate is larger")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds allowed to each run")
    a = ap.parse_args()
    w, h = map(int, a.size.lower().split("x"))
    n = w * h

    print(f"command: python benchmarks/predict_memory.py {' '.join(sys.argv[1:])}".rstrip())
    print(f"date: {dt.date.today()}; host: {platform.node()} ({platform.machine()}); CPU: {cpu_model()}, "
          f"{os.cpu_count()} logical cores; torch {torch.__version__}, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads; "
          f"memory available {mem_available_mib() / 1024:.1f} GiB; load average {os.getloadavg()[0]:.2f}")
    print(f"checkpoint: {a.checkpoint.relative_to(REPO) if a.checkpoint.is_relative_to(REPO) else a.checkpoint}")

    with tempfile.TemporaryDirectory(prefix="predict_memory_") as tmp_dir:
        tmp = Path(tmp_dir)
        src = Image.open(a.image).convert("RGB")
        photo = tmp / "photo.jpg"
        src.resize((w, h), Image.Resampling.BICUBIC).save(photo, quality=90)
        small = tmp / "small.jpg"
        src.save(small, quality=90)
        probe_w, probe_h = 2000, round(2000 * h / w)
        probe = tmp / "probe.jpg"
        src.resize((probe_w, probe_h), Image.Resampling.BICUBIC).save(probe, quality=90)
        print(f"photo: {a.image.name} upscaled to {w}x{h} ({n / 1e6:.1f} MP), JPEG quality 90, "
              f"{photo.stat().st_size / 2**20:.1f} MiB")

        rows: list[tuple[str, str, str, str, str, str, str]] = []
        base, base_s, _ = measure([sys.executable, "-c", BASELINE, str(a.checkpoint)], a.timeout)
        rows.append(("baseline (import, load checkpoint)", "-", "-", f"{base:.0f}", "-", f"{base_s:.1f}", "-"))

        def run(label: str, image: Path, tile_pixels: int, iw: int, ih: int) -> float:
            peak, secs, out = measure(predict_cmd(a.checkpoint, image, tmp / "out", tile_pixels, a.workers),
                                      a.timeout)
            per_pixel = f"{(peak - base) * 2**20 / n:.1f}" if image == photo else "-"
            rows.append((label, f"{tile_pixels:,}", str(tiles_of(iw, ih, tile_pixels)), f"{peak:.0f}", per_pixel,
                         f"{secs:.1f}", f"{predict_seconds(out):.1f}"))
            print(f"  {label}: {peak:.0f} MiB, {secs:.1f} s", file=sys.stderr, flush=True)
            return peak

        run(f"{src.width}x{src.height} image", small, a.tiles[0], src.width, src.height)
        for tile_pixels in a.tiles:
            run(f"{w}x{h}, tiles", photo, tile_pixels, w, h)

        # Untiled: estimate from a probe, then run only if it fits. Peak memory grows faster than the pixels
        # (a 24 MP forward needed 1.3x the probe's bytes per pixel), hence the factor 1.5.
        probe_peak, _, _ = measure(predict_cmd(a.checkpoint, probe, tmp / "probe_out", probe_w * probe_h + 1,
                                               a.workers), a.timeout)
        estimate = base + 1.5 * (probe_peak - base) * n / (probe_w * probe_h)
        limit = min(a.limit_gib * 1024, 0.75 * mem_available_mib())  # the machine is shared
        print(f"untiled estimate: {estimate / 1024:.1f} GiB (1.5 x the bytes per pixel of a {probe_w}x{probe_h} "
              f"untiled probe, {probe_peak:.0f} MiB); limit {limit / 1024:.1f} GiB", flush=True)
        if estimate <= limit:
            run(f"{w}x{h}, untiled", photo, n, w, h)
        else:
            rows.append((f"{w}x{h}, untiled: skipped", f"{n:,}", "1", f"~{estimate:.0f} (estimate)",
                         f"~{(estimate - base) * 2**20 / n:.0f}", "-", "-"))

    print()
    header = ("run", "--tile-pixels", "tiles", "peak RSS (MiB)", "bytes/pixel above baseline", "process (s)",
              "predict (s)")
    print("| " + " | ".join(header) + " |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f} (2-core machines are shared: seconds are noisy; "
          f"memory is not)")


if __name__ == "__main__":
    main()
