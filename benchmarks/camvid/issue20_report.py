"""Print issue 20's CamVid tables from the files benchmarks/camvid/issue20.sh wrote (Markdown, for RESULTS.md).

Usage: python benchmarks/camvid/issue20_report.py [--runs runs/camvid20]

1. Loss sampling (figure 5): val mean IU of FCN-32s at each validation, against the step and the training wall
   time (the log's ``wall_s`` at that step, validation excluded), for P = 1, 0.5, 0.25.
2. Shift-and-stitch against skips (section 3.2), with edges: FCN-32s at F = 1, 2, 4, FCN-16s, FCN-8s; mean IU,
   pixel accuracy, boundary F-score and trimap IU at each D, and the eval's wall time (from ``<name>.wall``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]


def curves(runs: Path) -> str:
    rows = ["| P | step | train wall (s) | val mean IU | val pixel acc |", "|---:|---:|---:|---:|---:|"]
    for p in ("1", "0.5", "0.25"):
        run = runs / f"32s_p{p}"
        if not (run / "log.jsonl").is_file():
            continue
        wall = 0.0
        for rec in _log(run):
            if "wall_s" in rec:
                wall = rec["wall_s"]
            if "val_mean_iu" in rec:
                rows.append(f"| {p} | {rec['step']} | {wall:.0f} | {100 * rec['val_mean_iu']:.1f} | "
                            f"{100 * rec['val_pixel_acc']:.1f} |")
    return "\n".join(rows)


def dense(runs: Path) -> str:
    names = [("eval_32s_f1", "FCN-32s"), ("eval_32s_f2", "FCN-32s, shift-and-stitch F = 2"),
             ("eval_32s_f4", "FCN-32s, shift-and-stitch F = 4"), ("eval_16s", "FCN-16s"), ("eval_8s", "FCN-8s")]
    ds: list[str] = []
    out: list[str] = []
    for name, label in names:
        f = runs / f"{name}.json"
        if not f.is_file():
            continue
        r = json.loads(f.read_text())
        b = r.get("boundary", {})
        ds = ds or sorted(b, key=int)
        wall = runs / f"{name}.wall"
        secs = f"{float(wall.read_text()):.0f}" if wall.is_file() else "-"
        cells = [f"{100 * b[d]['bf_score']:.1f}" for d in ds] + [f"{100 * b[d]['trimap_iu']:.1f}" for d in ds]
        out.append(f"| {label} | {100 * r['mean_iu']:.1f} | {100 * r['pixel_acc']:.1f} | " + " | ".join(cells)
                   + f" | {secs} |")
    head = ("| net | mean IU | pixel acc | " + " | ".join(f"BF D={d}" for d in ds) + " | "
            + " | ".join(f"trimap IU D={d}" for d in ds) + " | eval wall (s) |")
    return "\n".join([head, "|---" + "|---:" * (3 + 2 * len(ds)) + "|", *out])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="runs/camvid20", type=Path)
    a = ap.parse_args()
    print("Loss sampling, FCN-32s Lite0, 200 steps\n")
    print(curves(a.runs))
    print("\nShift-and-stitch and skips, CamVid val (101 images, 480x360), fp32\n")
    print(dense(a.runs))


if __name__ == "__main__":
    main()
