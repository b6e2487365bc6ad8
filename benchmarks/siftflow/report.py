"""SIFT Flow results as RESULTS.md tables, and the committed checkpoint (issue 19).

Reads each run folder's ``best.pt`` (its validation metrics on the held-out tenth of trainval, scored as the
reference scores SIFT Flow: classes absent from the ground truth left out of mean IU), ``config.json`` and
``log.jsonl``; prints one row per run and, for ``--save-best``'s run, the per-class table with each class's
share of the validation pixels (from ``fcnseg eval --out``'s confusion matrix, ``--eval-json``). With
``--save-best`` it writes that run's best weights, fp16 (``--half``), without training state, to
``benchmarks/siftflow/<model>_siftflow.pt``.

Usage::

    python benchmarks/siftflow/report.py runs/siftflow/eq_32s runs/siftflow/eq_16s runs/siftflow/eq_8s \\
        --save-best runs/siftflow/lite2_8s --eval-json runs/siftflow/lite2_8s_val.json --half
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path

from fcnseg.checkpoint import load_checkpoint, save_checkpoint

HERE = Path(__file__).parent


def pct(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


def row(run: Path) -> str:
    ck = load_checkpoint(run / "best.pt")
    cfg = json.loads((run / "config.json").read_text())
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    walls = [r["wall_s"] for r in log if "wall_s" in r]  # restarts from 0 where a run was resumed
    wall = sum(w for w, after in zip(walls, [*walls[1:], 0.0], strict=True) if after < w) / 60
    m = ck.metrics or {}
    extras = [f"bn {cfg['batch_norm']}"] + (["median_freq"] if cfg.get("class_weights") == "median_freq" else [])
    return (f"| `{cfg['model']}` ({', '.join(extras)}) | {m.get('step')} / {cfg['max_steps']} | {wall:.0f} | "
            + " | ".join(pct(m.get(k)) for k in ("pixel_acc", "mean_acc", "mean_iu", "fw_iu")) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="*", type=Path)
    ap.add_argument("--save-best", type=Path, help="run whose best.pt becomes the committed checkpoint")
    ap.add_argument("--eval-json", type=Path, help="fcnseg eval --out of that run's best.pt on val")
    ap.add_argument("--half", action="store_true", help="store the float tensors as fp16")
    a = ap.parse_args()
    runs = [*a.runs, *([a.save_best] if a.save_best else [])]
    print("| run | best step / steps | train wall (min) | pixel acc | mean acc | mean IU | f.w. IU |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in runs:
        print(row(r))
    if a.eval_json:
        e = json.loads(a.eval_json.read_text())
        counts = [sum(r) for r in e["confusion_matrix"]]
        total = sum(counts)
        print("\n| class | share of val pixels (%) | IU | acc |")
        print("|---|---:|---:|---:|")
        for name, n, iu, acc in zip(e["classes"], counts, e["class_iu"], e["class_acc"], strict=True):
            print(f"| {name} | {100 * n / total:.2f} | {pct(iu)} | {pct(acc)} |")
        print(f"\nval: pixel acc {pct(e['pixel_acc'])}, mean acc {pct(e['mean_acc'])}, mean IU {pct(e['mean_iu'])}, "
              f"f.w. IU {pct(e['fw_iu'])} over {e['pixels']:,} pixels")
    if a.save_best:
        ck = load_checkpoint(a.save_best / "best.pt")
        state = {k: v.half() if a.half and v.is_floating_point() else v for k, v in ck.state_dict.items()}
        dst = HERE / f"{ck.model_name}_siftflow.pt"
        save_checkpoint(dataclasses.replace(ck, train_state=None, state_dict=state), dst)
        print(f"\nwrote {dst} ({dst.stat().st_size / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
