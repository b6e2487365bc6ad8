"""``fcnseg eval``: the paper's four metrics of a checkpoint over a whole split (``run_eval``)."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import fields, replace
from pathlib import Path
from typing import Any, NamedTuple

from torch.utils.data import DataLoader, Dataset, Subset

from . import data as fdata
from .checkpoint import Checkpoint, load_checkpoint
from .config import EvalConfig
from .distributed import ShardedSampler, init_distributed, is_main, on_main
from .engine import evaluate_scores
from .errors import CheckpointError, ConfigError
from .metrics import BoundaryMetrics, BoundaryScores, ConfusionMatrix, MultiTaskConfusion, SegMetrics
from .outputs import atomic_write, check_output_file
from .scorer import ScorerSpec

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


def format_boundary(b: dict[int, BoundaryMetrics], classes: list[str]) -> str:
    """The edge measures as printed after the metrics table: one line of means per distance ``D``, then each
    class's BF score and trimap IU at each distance."""

    def pct(v: float) -> str:
        return "   -  " if math.isnan(v) else f"{100 * v:6.2f}"

    lines = ["edges within D pixels (Chebyshev): boundary F-score (Csurka et al. 2013), trimap IU and accuracy"]
    for d, m in b.items():
        lines.append(f"D={d:<3} BF {pct(m.bf_score)}   trimap IU {pct(m.trimap_iu)}   trimap acc "
                     f"{pct(m.trimap_pixel_acc)}   ({m.trimap_pixels:,} band pixels)")
    head = "".join(f" {f'BF@{d}':>6}" for d in b) + "".join(f" {f'tIU@{d}':>6}" for d in b)
    lines.append(f"{'class':<20}{head}")
    for c, name in enumerate(classes):
        row = [pct(m.class_bf_score[c]) for m in b.values()] + [pct(m.class_trimap_iu[c]) for m in b.values()]
        lines.append(f"{name:<20} {' '.join(row)}")
    return "\n".join(lines)


def run_eval(cfg: EvalConfig, *, progress: bool = True) -> SegMetrics:
    """Evaluate ``cfg.checkpoint`` on ``cfg.split`` at the labels' original resolution; write JSON to ``cfg.out``.

    By default the split, dataset and folder are those the checkpoint was validated on during training.
    The engine settings and ``out`` are checked before any work; the data is validated (``check_data``) before
    the first image, bad samples dropped and counted with ``skip_bad``. The images are scored by the
    :class:`fcnseg.scorer.Scorer` that ``predict`` and ``serve`` use: ``engine="onnxruntime"`` scores an
    exported ONNX file (``onnx_file``, e.g. an int8 export) instead of the checkpoint's weights, which still
    give the classes; ``precision`` ``auto`` computes in bf16 only where the device does so natively
    (:func:`fcnseg.precision.resolve_precision`). Under ``torchrun`` the split is sharded over processes and
    their confusion matrices summed. ``boundary`` distances add the boundary F-score and trimap IU
    (:class:`fcnseg.metrics.BoundaryScores`; a multi-task model's first task) in ``SegMetrics.boundary``, printed
    after the table. Refusals are :class:`~fcnseg.errors.FcnsegError`.
    """
    ck = load_checkpoint(cfg.checkpoint)
    _, _, dev = init_distributed(cfg.device)
    spec = ScorerSpec(ck, engine=cfg.engine, onnx_file=cfg.onnx_file, precision=cfg.precision, device=str(dev),
                      flip=cfg.flip, window=cfg.window, scales=tuple(cfg.scales),
                      shift_and_stitch=cfg.shift_and_stitch)  # refused before any work
    out_path = check_output_file(cfg.out, overwrite=cfg.overwrite) if cfg.out else None
    boundary = BoundaryScores(next(iter(ck.heads.values())) if ck.heads else len(ck.classes), tuple(cfg.boundary),
                              ck.ignore_index, device=dev) if cfg.boundary else None  # distances refused now
    scorer = spec.build()  # before the data: a shift-and-stitch factor the net cannot take is refused here
    data = _eval_data(cfg, ck, progress=progress)
    loader = DataLoader(data.scored, batch_size=1, sampler=ShardedSampler(len(data.scored), shuffle=False, pad=False),
                        num_workers=cfg.workers, collate_fn=fdata.pad_collate)
    cm = evaluate_scores(scorer, loader, num_classes=len(ck.classes), heads=scorer.heads, device=scorer.device,
                         ignore_index=ck.ignore_index, progress=progress and is_main(), boundary=boundary)
    m = cm.compute(present_only=data.dataset.present_only)
    if boundary is not None:
        m = replace(m, boundary=boundary.compute(present_only=data.dataset.present_only))
    if data.dataset.skipped:
        log.warning("skipped %d samples that failed to load (skip_bad)", data.dataset.skipped)
    if is_main():
        tasks = {t: names for t, (names, _) in ck.tasks.items()} if ck.tasks else None
        print(format_metrics(m, ck.classes, tasks))
        if m.boundary:
            print(format_boundary(m.boundary, next(iter(tasks.values())) if tasks else ck.classes))
        if out_path is not None:
            _write_record(out_path, cfg, ck, data, m, cm)
    return m


class _EvalData(NamedTuple):
    dataset: fdata.SegmentationDataset  # the whole (checked) split: counts skipped samples
    scored: Dataset  # what is scored: the split, or its first max_images
    kind: str
    root: Path
    split: str


def _eval_data(cfg: EvalConfig, ck: Checkpoint, *, progress: bool) -> _EvalData:
    """The split to score, validated (``cfg.check_data``) and checked to fit the checkpoint's classes and tasks."""
    kind, root, args, split = _resolve_data(ck.config or {}, cfg.checkpoint, cfg.dataset, cfg.data_root, cfg.split)
    args = fdata.task_args(kind, {**args, **cfg.dataset_args}, bool(ck.heads))  # a test tree may lack GeoLabels
    ds = fdata.build_dataset(kind, root, split, **args)
    ds.max_pixels = cfg.max_pixels
    if cfg.check_data != "off":
        def check() -> tuple[list[tuple[Path, Path]], int, int]:
            report = ds.validate(cfg.check_data, skip_bad=cfg.skip_bad, progress=progress and is_main())
            return ds.samples, len(report.bad), report.samples

        ds.samples, n_bad, n_all = on_main(check)  # every rank shards the same, checked list
        if n_bad and is_main():
            log.warning("%s: skipped %d bad samples of %d (skip_bad)", ds, n_bad, n_all)
    ds.skip_bad = cfg.skip_bad
    ds.share_skip_counter()
    if len(ds) == 0:
        raise fdata.DataError(f"split {split!r} of {root} is empty", fix="choose another {split}", path=root)
    ds_heads = {t: len(names) for t, (names, _) in ds.tasks.items()} if ds.tasks else None
    if ds.num_classes != len(ck.classes) or ds_heads != ck.heads:
        what = (f"{ds.num_classes} classes", f"{len(ck.classes)}") if ds.num_classes != len(ck.classes) else \
            (f"tasks {list(ds_heads or ['one'])}", f"{list(ck.heads or ['one'])}")
        raise CheckpointError(f"{root} has {what[0]}; checkpoint {cfg.checkpoint} predicts {what[1]}", path=root,
                              fix="evaluate on the dataset the model was trained for ({dataset}, {data_root})")
    scored = Subset(ds, range(min(cfg.max_images, len(ds)))) if cfg.max_images else ds
    return _EvalData(ds, scored, kind, root, split)


def _write_record(out: Path, cfg: EvalConfig, ck: Checkpoint, data: _EvalData, m: SegMetrics,
                  cm: ConfusionMatrix | MultiTaskConfusion) -> None:
    """The metrics, the settings and the confusion matrix (each task's, for a multi-task model) as JSON."""
    record = {"checkpoint": str(cfg.checkpoint), "engine": cfg.engine, "onnx": cfg.onnx_file or None,
              "dataset": data.kind, "root": str(data.root), "split": data.split, "flip": cfg.flip,
              "scales": list(cfg.scales), "window": cfg.window,
              "shift_and_stitch": cfg.shift_and_stitch, "classes": ck.classes, **m.to_dict()}
    matrices = cm.matrices if isinstance(cm, MultiTaskConfusion) else {"": cm}
    for t, tcm in matrices.items():  # a multi-task model: each task's classes and matrix too
        if t:
            record["tasks"][t].update(classes=ck.tasks[t][0] if ck.tasks else None,
                                      confusion_matrix=tcm.mat.cpu().tolist())
    record["confusion_matrix"] = next(iter(matrices.values())).mat.cpu().tolist()  # the first task's
    text = (json.dumps(record, indent=2) + "\n").encode()
    atomic_write(out, lambda f: f.write(text))


def _resolve_data(cfg: dict[str, Any], checkpoint: str | Path, dataset: str, data_root: str,
                  split: str) -> tuple[str, Path, dict[str, Any], str]:
    """(family, folder, dataset kwargs, split) to evaluate on: what is given (empty: not given), else what the
    checkpoint was validated on during training (its ``val_dataset``, ``val_data_root`` and ``val_split``)."""
    from .config import TrainConfig

    names = {f.name for f in fields(TrainConfig)}
    trained = TrainConfig(**{k: v for k, v in cfg.items() if k in names}) if cfg.get("dataset") else None
    if trained is None and not dataset:
        raise ConfigError(f"checkpoint {checkpoint} does not record the dataset it was trained on",
                          fix="pass {dataset} and {data_root}")
    if trained is not None and (not dataset or dataset == trained.resolved_val()[0]):
        kind, root, args = trained.resolved_val()
        split = split or trained.val_split
    elif trained is not None and dataset == trained.dataset:
        kind, root, args = dataset, trained.resolved_data_root(), trained.dataset_args
    else:
        kind, root, args = str(dataset), TrainConfig(dataset=str(dataset)).resolved_data_root(), {}
    if data_root:
        root = Path(data_root)
    return kind, root, dict(args), split or "val"
