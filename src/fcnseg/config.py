"""Training configuration: one dataclass holds every default, each with its reason.

Two named recipes (``RECIPES``) override the defaults:

* ``paper``: the reference solver of arXiv:1411.4038 (section 4.3 and the released ``solver.prototxt``):
  batch 1, summed loss, SGD momentum 0.99, fixed lr 1e-10 / 1e-12 / 1e-14 for 32s / 16s / 8s, weight decay
  5e-4, biases at twice the rate without decay, frozen bilinear upsampling, whole images, no augmentation.
* ``modern``: pixel-averaged loss, batches of random crops padded with the ignore label, polynomial decay, SGD
  or AdamW, mixed precision where bf16 is native. With the defaults, a trained encoder's batch norms are frozen
  and folded into its convolutions (``batch_norm="auto"``), behind a 50-step linear warm-up
  (``warmup_steps=-1``, auto; without it lr 0.01 diverged).

Precedence: dataclass defaults < recipe < config file (YAML/JSON) < command-line flags.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any


def default_data_root() -> str:
    return os.environ.get("FCNSEG_DATA", "../shared/data")


@dataclass
class TrainConfig:
    # --- data ---
    dataset: str = "camvid"  # dataset family: voc, sbd, camvid, folder
    data_root: str = ""  # dataset folder; empty = $FCNSEG_DATA/<dataset>
    train_split: str = "train"  # split used for training
    val_split: str = "val"  # split used for validation and model selection
    val_dataset: str = ""  # family of the validation set; empty = dataset (the paper: train sbd, val voc)
    val_data_root: str = ""  # its folder; empty = data_root when the family is the same, else $FCNSEG_DATA/<family>
    dataset_args: dict[str, Any] = field(default_factory=dict)  # extra dataset kwargs (folder: binary, classes...)
    skip_bad: bool = False  # skip unreadable or inconsistent samples (logged, counted; data checked in full first)
    check_data: str = "labels"  # check all data before training: headers, labels (decode masks), full, or off
    max_pixels: int = 50_000_000  # largest image read (width x height); larger files are bad samples
    workers: int = 2  # data-loading processes, kept for the whole run; augmentation overlaps compute
    cache: str = "auto"  # keep decoded training images in memory: auto (if they fit), on, off
    # --- model ---
    model: str = "fcn8s"  # registry name (fcnseg.models.list_models())
    model_args: dict[str, Any] = field(default_factory=dict)  # extra factory kwargs (width, pretrained...)
    init_from: str = ""  # checkpoint to start from by layer name (staged 32s -> 16s -> 8s, section 4.2)
    normalization: str = ""  # input normalisation; empty = the one the weights expect
    freeze_encoder: bool = False  # train only the head on a frozen encoder (the paper's "FCN-32s-fixed")
    # --- optimisation ---
    recipe: str = "modern"  # named preset applied before any override: paper or modern
    batch_size: int = 8  # images per step (per process under DDP)
    loss: str = "mean"  # "sum" over pixels (the reference, lr ~1e-10) or "mean" over valid pixels
    optimizer: str = "sgd"  # sgd or adamw
    lr: float = 0.01  # base learning rate
    momentum: float = 0.9  # SGD momentum (0.99 in the paper with batch 1)
    weight_decay: float = 1e-4  # L2 on weights (5e-4 in the paper)
    bias_lr_mult: float = 1.0  # the paper trains biases at twice the rate
    bias_decay: bool = False  # biases (and norm parameters) are not decayed
    schedule: str = "poly"  # constant (paper) or poly
    poly_power: float = 0.9  # exponent of polynomial decay
    warmup_steps: int = -1  # linear warm-up steps; -1 = auto: 50 if batch norm is frozen (it diverged without), else 0
    class_weights: str = "none"  # none, or median_freq: rare classes weigh more (SegNet's CamVid balancing)
    ema_decay: float = 0.0  # exponential moving average of the weights, validated and saved; 0 = off (try 0.999)
    max_steps: int = 2000  # optimisation steps in all
    stop_at: int = 0  # stop (with a checkpoint) at this step, keeping max_steps' schedule; resume later; 0 = off
    precision: str = "auto"  # autocast: auto = bf16 where native (bf16 GPU, AVX512-BF16/AMX CPU), else fp32; fp32; bf16
    channels_last: bool = True  # NHWC activations: oneDNN's fast layout (1.5x per CPU step, benchmarks/RESULTS.md)
    batch_norm: str = "auto"  # auto = frozen (statistics fixed, folded into convs) for a trained encoder, else train
    compile: bool = False  # torch.compile the training step (fuses batch norm and activations; ~1-2 min to compile)
    # --- augmentation ---
    crop_size: int = 320  # random crop side; 0 = whole images (batches padded with the ignore label)
    scale_min: float = 0.5  # random scale range
    scale_max: float = 2.0
    hflip: bool = True  # random horizontal flip
    color_jitter: float = 0.0  # brightness/contrast/saturation jitter strength
    # --- bookkeeping ---
    val_every: int = 500  # steps between validations (and checkpoints)
    log_every: int = 10  # steps between log lines
    max_val_images: int = 0  # 0 = the whole validation split
    out_dir: str = "runs/train"  # run folder: checkpoints, logs, config
    overwrite: bool = False  # allow writing into an existing, non-empty run folder
    seed: int = 0  # seeds model init, sampling and augmentation
    device: str = ""  # cuda / cpu; empty = cuda if available
    dist_timeout: int = 600  # seconds a process waits for the others (torchrun) before naming the stalled rank
    resume: str = ""  # checkpoint to resume from (model, optimiser, scheduler, step, sampler, RNG)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def resolved_data_root(self) -> Path:
        return Path(self.data_root) if self.data_root else Path(default_data_root()) / self.dataset

    def resolved_val(self) -> tuple[str, Path, dict[str, Any]]:
        """(family, folder, dataset kwargs) of the validation set."""
        kind = self.val_dataset or self.dataset
        if self.val_data_root:
            root = Path(self.val_data_root)
        else:
            root = self.resolved_data_root() if kind == self.dataset else Path(default_data_root()) / kind
        return kind, root, self.dataset_args if kind == self.dataset else {}


def paper_lr(model: str) -> float:
    """The reference's fixed learning rates for the summed loss: 1e-10 (32s), 1e-12 (16s), 1e-14 (8s)."""
    if "8s" in model:
        return 1e-14
    if "16s" in model:
        return 1e-12
    return 1e-10


RECIPES: dict[str, dict[str, Any]] = {
    "paper": dict(
        batch_size=1, loss="sum", optimizer="sgd", momentum=0.99, weight_decay=5e-4, bias_lr_mult=2.0,
        bias_decay=False, schedule="constant", warmup_steps=0, crop_size=0, scale_min=1.0, scale_max=1.0,
        hflip=False, color_jitter=0.0, precision="fp32", normalization="caffe",
    ),
    "modern": dict(
        batch_size=8, loss="mean", optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=1e-4, bias_lr_mult=1.0,
        schedule="poly", crop_size=320, scale_min=0.5, scale_max=2.0, hflip=True,
    ),
}


def make_config(recipe: str | None = None, file: str | None = None, **overrides: Any) -> TrainConfig:
    """Resolve a config: defaults, then the recipe, then ``file`` (YAML or JSON), then ``overrides``.

    The recipe is ``recipe`` if given, else the file's ``recipe`` key, else ``"modern"``. Overrides of
    ``None`` are ignored (unset flags); ``model_args`` and ``dataset_args`` are merged key by key. Unknown
    keys are errors naming the key, so a typo never silently falls back to a default.
    """
    from_file = _read_file(Path(file)) if file else {}
    recipe = recipe or from_file.get("recipe") or "modern"
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; known: {', '.join(RECIPES)}")
    values: dict[str, Any] = {"recipe": recipe, **RECIPES[recipe]}
    given = {k: v for k, v in overrides.items() if v is not None}
    for layer in (from_file, given):
        for k, v in layer.items():
            if k in ("model_args", "dataset_args") and isinstance(v, dict):
                values[k] = {**values.get(k, {}), **v}
            else:
                values[k] = v
    values["recipe"] = recipe
    _translate_legacy(values)
    names = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown config keys {unknown}; known: {sorted(names)}")
    cfg = replace(TrainConfig(), **values)
    if recipe == "paper" and "lr" not in given and "lr" not in from_file:
        cfg.lr = paper_lr(cfg.model)  # the reference's rate for the summed loss of this net's stage
    _validate(cfg)
    return cfg


def _translate_legacy(values: dict[str, Any]) -> None:
    """Config files written before ``precision`` existed: ``amp_cpu: true`` asked for bf16 on the CPU,
    ``amp: false`` for fp32 everywhere; otherwise ``auto`` (what ``amp: true`` meant on GPUs) applies."""
    amp, amp_cpu = values.pop("amp", None), values.pop("amp_cpu", None)
    if "precision" not in values or values["precision"] == "auto":
        if amp_cpu:
            values["precision"] = "bf16"
        elif amp is False:
            values["precision"] = "fp32"


def _read_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text) or {}
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping of keys to values")
    return data


def _validate(cfg: TrainConfig) -> None:
    checks = [
        (cfg.loss in ("sum", "mean"), f"loss must be 'sum' or 'mean', not {cfg.loss!r}"),
        (cfg.optimizer in ("sgd", "adamw"), f"optimizer must be 'sgd' or 'adamw', not {cfg.optimizer!r}"),
        (cfg.schedule in ("constant", "poly"), f"schedule must be 'constant' or 'poly', not {cfg.schedule!r}"),
        (cfg.batch_size >= 1, "batch_size must be at least 1"),
        (cfg.max_steps >= 1, "max_steps must be at least 1"),
        (0 <= cfg.stop_at <= cfg.max_steps, "stop_at must lie between 0 (off) and max_steps"),
        (cfg.lr > 0, "lr must be positive"),
        (cfg.val_every >= 1, "val_every must be at least 1"),
        (cfg.log_every >= 1, "log_every must be at least 1"),
        (cfg.workers >= 0, "workers must be 0 or more"),
        (cfg.check_data in ("headers", "labels", "full", "off"),
         f"check_data must be headers, labels, full or off, not {cfg.check_data!r}"),
        (cfg.precision in ("auto", "fp32", "bf16"), f"precision must be auto, fp32 or bf16, not {cfg.precision!r}"),
        (cfg.class_weights in ("none", "median_freq"),
         f"class_weights must be none or median_freq, not {cfg.class_weights!r}"),
        (0 <= cfg.ema_decay < 1, "ema_decay must lie in [0, 1): 0 is off, 0.999 a common choice"),
        (cfg.warmup_steps >= -1, "warmup_steps must be -1 (auto), 0 (off) or a number of steps"),
        (cfg.batch_norm in ("auto", "train", "frozen"),
         f"batch_norm must be auto, train or frozen, not {cfg.batch_norm!r}"),
        (cfg.cache in ("auto", "on", "off"), f"cache must be auto, on or off, not {cfg.cache!r}"),
        (cfg.max_pixels >= 1, "max_pixels must be at least 1"),
        (cfg.dist_timeout >= 1, "dist_timeout must be at least 1 second"),
        (cfg.crop_size >= 0, "crop_size must be 0 (whole images) or a side in pixels"),
        (0 < cfg.scale_min <= cfg.scale_max, "need 0 < scale_min <= scale_max"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ValueError(msg)


@dataclass
class EvalConfig:
    """``fcnseg eval``'s options (``fcnseg.evaluate.run_eval``). Empty dataset/data_root/split: the checkpoint's
    validation set."""

    checkpoint: str = ""  # fcnseg checkpoint (.pt); gives the classes and, for engine=torch, the weights
    dataset: str = ""  # dataset family; empty = the checkpoint's validation set
    data_root: str = ""  # dataset folder; empty = the checkpoint's validation folder
    split: str = ""  # split to score; empty = the checkpoint's validation split
    dataset_args: dict[str, Any] = field(default_factory=dict)  # extra dataset kwargs
    out: str = ""  # JSON file for the metrics and the confusion matrix (checked before any work)
    overwrite: bool = False  # replace out if it exists
    engine: str = "torch"  # torch: the checkpoint's weights; onnxruntime: the exported onnx_file
    onnx_file: str = ""  # ONNX file for engine=onnxruntime (made by `fcnseg export`)
    flip: bool = False  # average with the mirrored prediction (torch engine)
    scales: tuple[float, ...] = (1.0,)  # multi-scale test-time augmentation factors (torch engine)
    precision: str = "auto"  # auto = bf16 where native, else fp32; fp32; bf16
    window: int = 0  # sliding-window side in pixels (0 = whole images)
    device: str = ""  # cpu, cuda, cuda:1; empty = cuda if available
    workers: int = 2  # data-loading processes
    skip_bad: bool = False  # skip unreadable or inconsistent samples (counted) instead of stopping
    check_data: str = "headers"  # validate the split before scoring: headers, labels, full, off
    max_pixels: int = 50_000_000  # largest image read (width x height)
    max_images: int = 0  # evaluate only the first N images (0 = all)


@dataclass
class PredictConfig:
    """``fcnseg predict``'s options (``fcnseg.predict.run_predict``)."""

    checkpoint: str = ""  # fcnseg checkpoint (.pt)
    inputs: list[str] = field(default_factory=list)  # image files or folders (searched recursively)
    out_dir: str = ""  # output folder (checked before any work)
    overlay: bool = True  # also write <stem>_overlay.png
    overwrite: bool = False  # write into a non-empty output folder
    skip_bad: bool = False  # skip unreadable images (counted) instead of stopping
    flip: bool = False  # average with the mirrored prediction
    window: int = 0  # sliding-window side in pixels, averaged (0 = off)
    tile_pixels: int = 1024 * 1024  # images with more pixels are predicted in tiles of about this many
    max_pixels: int = 50_000_000  # largest image read (width x height); larger files are refused
    device: str = ""  # cpu, cuda, cuda:1; empty = cuda if available
    workers: int = 2  # image-decoding processes
    engine: str = "torch"  # torch: the checkpoint's weights; onnxruntime: the exported onnx_file
    onnx_file: str = ""  # ONNX file for engine=onnxruntime
    precision: str = "auto"  # auto = bf16 where native, else fp32; fp32; bf16
