"""``fcnseg eval``: the paper's four metrics of a checkpoint over a whole split (``run_eval``)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from . import data as fdata
from .checkpoint import load_checkpoint
from .distributed import ShardedSampler, init_distributed, is_main
from .engine import evaluate
from .metrics import SegMetrics


def format_metrics(m: SegMetrics, classes: list[str]) -> str:
    """The four metrics and a per-class table, as printed on the terminal."""
    def pct(v: float) -> str:
        return "   -  " if math.isnan(v) else f"{100 * v:6.2f}"

    lines = [
        f"pixel acc {pct(m.pixel_acc)}   mean acc {pct(m.mean_acc)}   mean IU {pct(m.mean_iu)}   "
        f"f.w. IU {pct(m.fw_iu)}   ({m.pixels:,} pixels)",
        f"{'class':<20} {'IU':>6} {'acc':>6}",
    ]
    for name, iu, acc in zip(classes, m.class_iu, m.class_acc, strict=True):
        lines.append(f"{name:<20} {pct(iu)} {pct(acc)}")
    return "\n".join(lines)


def run_eval(checkpoint: str | Path, *, dataset: str | None = None, data_root: str | None = None,
             split: str = "val", out: str | Path | None = None, overwrite: bool = False, flip: bool = False,
             window: int = 0, device: str = "", workers: int = 2, skip_bad: bool = False, amp: bool = False,
             max_images: int = 0, progress: bool = True) -> SegMetrics:
    """Evaluate ``checkpoint`` on ``split`` at the labels' original resolution; write JSON to ``out``.

    ``dataset`` and ``data_root`` default to those the checkpoint was trained on. Under ``torchrun`` the
    split is sharded over processes and their confusion matrices summed.
    """
    ck = load_checkpoint(checkpoint)
    cfg: dict[str, Any] = ck.config or {}
    same = dataset is None or dataset == cfg.get("dataset")
    dataset = dataset or cfg.get("dataset")
    if not dataset:
        raise ValueError(f"{checkpoint} does not record its dataset: pass --dataset")
    root = Path(data_root) if data_root else None
    if root is None:
        from .config import TrainConfig

        root = TrainConfig(dataset=dataset, data_root=cfg.get("data_root", "") if same else "").resolved_data_root()
    out_path = Path(out) if out else None
    if out_path is not None and out_path.exists() and not overwrite:
        raise FileExistsError(f"{out_path} exists: pass --overwrite or choose another --out")

    _, _, dev = init_distributed(device)
    ds = fdata.build_dataset(dataset, root, split, **((cfg.get("dataset_args") or {}) if same else {}))
    if skip_bad:
        ds.check(skip_bad=True, progress=progress and is_main())
    if len(ds) == 0:
        raise fdata.DataError(f"split {split!r} of {root} is empty")
    if ds.num_classes != len(ck.classes):
        raise ValueError(f"{root} has {ds.num_classes} classes; {checkpoint} predicts {len(ck.classes)}")
    if max_images:
        ds = torch.utils.data.Subset(ds, range(min(max_images, len(ds))))  # type: ignore[assignment]
    loader = DataLoader(ds, batch_size=1, sampler=ShardedSampler(len(ds), shuffle=False, pad=False),
                        num_workers=workers, collate_fn=fdata.pad_collate)
    model = ck.build_model().to(dev)
    cm = evaluate(model, loader, num_classes=len(ck.classes), norm=ck.normalization, device=dev,
                  ignore_index=ck.ignore_index, flip=flip, window=window, amp=amp, progress=progress and is_main())
    m = cm.compute()
    if is_main():
        print(format_metrics(m, ck.classes))
        if out_path is not None:
            out_path.parent.mkdir(parents=True, exist_ok=True)
            record = {"checkpoint": str(checkpoint), "dataset": dataset, "root": str(root), "split": split,
                      "flip": flip, "window": window, "classes": ck.classes, **m.to_dict(),
                      "confusion_matrix": cm.mat.cpu().tolist()}
            out_path.write_text(json.dumps(record, indent=2) + "\n")
    return m
