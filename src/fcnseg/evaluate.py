"""``fcnseg eval``: the paper's four metrics of a checkpoint over a whole split (``run_eval``)."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from . import data as fdata
from .checkpoint import load_checkpoint
from .config import EvalConfig
from .distributed import ShardedSampler, init_distributed, is_main, on_main
from .engine import evaluate
from .metrics import ConfusionMatrix, MultiTaskConfusion, SegMetrics
from .outputs import atomic_write, check_output_file
from .precision import resolve_precision
from .predict import make_scorer
from .progress import Progress

log = logging.getLogger(__name__)


def format_metrics(m: SegMetrics, classes: list[str], tasks: dict[str, list[str]] | None = None) -> str:
    """The four metrics and a per-class table, as printed on the terminal; for a multi-task model (``tasks``:
    class names by task, with ``m.tasks``) one block per task under its name."""
    if tasks and m.tasks:
        return "\n\n".join(f"[{t}]\n{format_metrics(m.tasks[t], names)}" for t, names in tasks.items())

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


def run_eval(cfg: EvalConfig, *, progress: bool = True) -> SegMetrics:
    """Evaluate ``cfg.checkpoint`` on ``cfg.split`` at the labels' original resolution; write JSON to ``cfg.out``.

    By default the split, dataset and folder are those the checkpoint was validated on during training.
    ``out`` is checked before any work; the data is validated (``check_data``) before the first image, bad
    samples dropped and counted with ``skip_bad``. ``engine="onnxruntime"`` scores an exported ONNX file
    (``onnx_file``, e.g. an int8 export) instead of the checkpoint's weights, which still give the classes.
    ``precision`` ``auto`` computes in bf16 (autocast) only where the device does so natively
    (:func:`fcnseg.precision.resolve_precision`). Under ``torchrun`` the split is sharded over processes and
    their confusion matrices summed.
    """
    checkpoint, out, overwrite, flip, scales = cfg.checkpoint, cfg.out or None, cfg.overwrite, cfg.flip, cfg.scales
    window, device, workers, skip_bad, precision = cfg.window, cfg.device, cfg.workers, cfg.skip_bad, cfg.precision
    max_images, engine, onnx_file = cfg.max_images, cfg.engine, cfg.onnx_file or None
    max_pixels, check_data, dataset_args = cfg.max_pixels, cfg.check_data, cfg.dataset_args
    dataset, data_root, split = cfg.dataset or None, cfg.data_root or None, cfg.split or None
    ck = load_checkpoint(checkpoint)
    cfg: dict[str, Any] = ck.config or {}
    out_path = check_output_file(out, overwrite=overwrite) if out else None
    kind, root, args, split = _resolve_data(cfg, checkpoint, dataset, data_root, split)
    args = {**args, **(dataset_args or {})}

    _, _, dev = init_distributed(device)
    ds = fdata.build_dataset(kind, root, split, **args)
    ds.max_pixels = max_pixels
    if check_data != "off":
        def check() -> tuple[list[tuple[Path, Path]], int, int]:
            report = ds.validate(check_data, skip_bad=skip_bad, progress=progress and is_main())
            return ds.samples, len(report.bad), report.samples

        ds.samples, n_bad, n_all = on_main(check)  # every rank shards the same, checked list
        if n_bad and is_main():
            log.warning("%s: skipped %d bad samples of %d (--skip-bad)", ds, n_bad, n_all)
    ds.skip_bad = skip_bad
    ds.share_skip_counter()
    if len(ds) == 0:
        raise fdata.DataError(f"split {split!r} of {root} is empty; fix: choose another --split")
    if ds.num_classes != len(ck.classes):
        raise ValueError(f"--data {root} has {ds.num_classes} classes; --checkpoint {checkpoint} predicts "
                         f"{len(ck.classes)}; fix: evaluate on the dataset the model was trained for")
    ds_heads = {t: len(names) for t, (names, _) in ds.tasks.items()} if ds.tasks else None
    if ds_heads != ck.heads:
        raise ValueError(f"--data {root} labels tasks {list(ds_heads or ['one'])}; --checkpoint {checkpoint} predicts "
                         f"{list(ck.heads or ['one'])}; fix: evaluate on the dataset the model was trained for")
    full = ds
    if max_images:
        ds = torch.utils.data.Subset(ds, range(min(max_images, len(ds))))  # type: ignore[assignment]
    loader = DataLoader(ds, batch_size=1, sampler=ShardedSampler(len(ds), shuffle=False, pad=False),
                        num_workers=workers, collate_fn=fdata.pad_collate)
    if engine == "torch":
        model = ck.build_model().to(dev)
        cm = evaluate(model, loader, num_classes=len(ck.classes), norm=ck.normalization, device=dev,
                      ignore_index=ck.ignore_index, flip=flip, window=window, scales=scales,
                      amp=resolve_precision(precision, dev) == "bf16",
                      progress=progress and is_main())
    else:
        if tuple(scales) != (1.0,):
            raise ValueError("--scales is for --engine torch")
        scores = make_scorer(ck, dev, engine, onnx_file, flip, window, precision)
        cm = ConfusionMatrix(len(ck.classes), ck.ignore_index)
        with Progress(len(loader), "eval", "img", enabled=progress and is_main()) as bar:
            for images, masks in loader:
                if images.shape[0]:
                    cm.update(scores(images).argmax(1).cpu(), masks)
                bar.update(1)
        cm.reduce()
    m = cm.compute()
    if full.skipped:
        log.warning("skipped %d samples that failed to load (--skip-bad)", full.skipped)
    if is_main():
        tasks = ck.tasks
        print(format_metrics(m, ck.classes, {t: names for t, (names, _) in tasks.items()} if tasks else None))
        if out_path is not None:
            record = {"checkpoint": str(checkpoint), "engine": engine, "onnx": onnx_file, "dataset": kind,
                      "root": str(root), "split": split, "flip": flip, "scales": list(scales), "window": window,
                      "classes": ck.classes, **m.to_dict()}
            matrices = cm.matrices if isinstance(cm, MultiTaskConfusion) else {"": cm}
            for t, tcm in matrices.items():  # a multi-task model: each task's classes and matrix too
                if t:
                    record["tasks"][t].update(classes=tasks[t][0] if tasks else None,
                                              confusion_matrix=tcm.mat.cpu().tolist())
            record["confusion_matrix"] = next(iter(matrices.values())).mat.cpu().tolist()  # the first task's
            text = (json.dumps(record, indent=2) + "\n").encode()
            atomic_write(out_path, lambda f: f.write(text))
    return m


def _resolve_data(cfg: dict[str, Any], checkpoint: str | Path, dataset: str | None, data_root: str | None,
                  split: str | None) -> tuple[str, Path, dict[str, Any], str]:
    """(family, folder, dataset kwargs, split) to evaluate on: what is given, else what the checkpoint was
    validated on during training (its ``val_dataset``, ``val_data_root`` and ``val_split``)."""
    from .config import TrainConfig

    names = {f.name for f in fields(TrainConfig)}
    trained = TrainConfig(**{k: v for k, v in cfg.items() if k in names}) if cfg.get("dataset") else None
    if trained is None and not dataset:
        raise ValueError(f"--checkpoint {checkpoint} does not record its dataset; fix: pass --dataset and --data")
    if trained is not None and (dataset is None or dataset == trained.resolved_val()[0]):
        kind, root, args = trained.resolved_val()
        split = split or trained.val_split
    elif trained is not None and dataset == trained.dataset:
        kind, root, args = dataset, trained.resolved_data_root(), trained.dataset_args
    else:
        kind, root, args = str(dataset), TrainConfig(dataset=str(dataset)).resolved_data_root(), {}
    if data_root:
        root = Path(data_root)
    return kind, root, dict(args), split or "val"
