"""Print the CamVid results table from runs/camvid/*.json (made by run.sh) and write the slim best FCN-8s.

Usage: python benchmarks/camvid/report.py [--runs runs/camvid] [--save-best fcn8s] [--half]

The slim checkpoint keeps the weights and the self-description (model, classes, palette, normalisation,
config, val metrics) but drops the optimiser state, so that it fits in git (< 20 MB):
benchmarks/camvid/<model>_camvid.pt (fcn8s_efficientnet_lite0_camvid.pt, fcn8s_efficientnet_lite2_camvid.pt).
``--half`` stores its floating-point tensors as fp16 (half the size; loading casts them back to fp32), so
re-evaluate the written file for the figure it is committed with. Evaluate it with
    fcnseg eval --checkpoint benchmarks/camvid/fcn8s_efficientnet_lite2_camvid.pt --split val
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from fcnseg.checkpoint import load_checkpoint, save_checkpoint

ORDER = ["fcn32s", "fcn16s", "fcn8s_short", "fcn8s", "fcn8s_scratch", "fcn32s_fixed", "abl_base", "abl_mfw",
         "abl_ema", "abl_lite2", "abl_crop480", "final", "abl_warmup", "abl_frozenbn", "long_lite2"]
LABEL = {
    "fcn32s": "FCN-32s Lite0, pretrained", "fcn16s": "FCN-16s Lite0, pretrained",
    "fcn8s_short": "FCN-8s Lite0, pretrained", "fcn8s": "FCN-8s Lite0, pretrained (30-min budget)",
    "fcn8s_scratch": "FCN-8s Lite0, from scratch", "fcn32s_fixed": "FCN-32s-fixed Lite0 (frozen encoder)",
    "abl_base": "ablation base: FCN-8s Lite0, 320 crops", "abl_mfw": "+ median-frequency class weights",
    "abl_ema": "+ EMA of weights (0.99)", "abl_lite2": "Lite2 encoder (equal time)",
    "abl_crop480": "480x480 crops (equal pixels)", "final": "FCN-8s Lite0, the winners, 1000 steps",
    "abl_warmup": "+ 50-step lr warm-up", "abl_frozenbn": "+ 50-step warm-up, frozen batch norm (folded)",
    "long_lite2": "FCN-8s Lite2, frozen BN, warm-up (2-hour budget)",
}
HERE = Path(__file__).parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="runs/camvid")
    ap.add_argument("--save-best", default="fcn8s", help="run whose best.pt becomes the committed checkpoint")
    ap.add_argument("--half", action="store_true", help="store the slim checkpoint's float tensors as fp16")
    a = ap.parse_args()
    runs = {p.stem: json.loads(p.read_text()) for p in Path(a.runs).glob("*.json")}
    rows = [r for r in ORDER if r in runs]
    if not rows:
        raise SystemExit(f"no results in {a.runs}: run benchmarks/camvid/run.sh first")
    classes = runs[rows[0]]["classes"]
    print("| run | steps | train wall (min) | pixel acc | mean acc | mean IU | f.w. IU | "
          + " | ".join(classes) + " |")
    print("|---|---:|---:|---:|---:|---:|---:|" + "---:|" * len(classes))
    for r in rows:
        d = runs[r]
        steps = d.get("steps") or d["command"].split("--max-steps ")[1].split()[0]  # "steps": a resumed run
        cells = [f"{100 * d[k]:.1f}" for k in ("pixel_acc", "mean_acc", "mean_iu", "fw_iu")]
        ious = [f"{100 * v:.1f}" if v is not None else "-" for v in d["class_iu"]]
        print(f"| {LABEL.get(r, r)} | {steps} | {d['train_seconds'] / 60:.1f} | " + " | ".join(cells + ious) + " |")
    print()
    for r in rows:
        print(f"- {r}: `{runs[r]['command'].replace('.venv/bin/', '')}` ({runs[r]['machine']}, {runs[r]['date']})")
    if a.save_best in runs:
        ck = load_checkpoint(Path(a.runs) / a.save_best / "best.pt")
        state = {k: v.half() if a.half and v.is_floating_point() else v for k, v in ck.state_dict.items()}
        slim = dataclasses.replace(ck, train_state=None, state_dict=state)
        dst = HERE / f"{ck.model_name}_camvid.pt"
        save_checkpoint(slim, dst)
        print(f"\nwrote {dst} ({dst.stat().st_size / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
