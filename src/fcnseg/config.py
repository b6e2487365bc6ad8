"""Every command's options: one dataclass per command, each default with its reason (``fcnseg.options``).

``TrainConfig`` is ``fcnseg train``'s; ``EvalConfig``, ``PredictConfig``, ``ExportConfig``, ``ConvertConfig``,
``HhaConfig`` and ``ModelsConfig`` the other commands' (``ServeConfig`` lives with the service). The CLI's
flags and their help are generated from these fields.

Two named recipes (``RECIPES``) override the defaults:

* ``paper``: the reference solver of arXiv:1411.4038 (section 4.3 and the released ``solver.prototxt``):
  batch 1, summed loss, SGD momentum 0.99, fixed lr 1e-10 / 1e-12 / 1e-14 for 32s / 16s / 8s, weight decay
  5e-4, biases at twice the rate without decay, frozen bilinear upsampling, whole images, no augmentation.
* ``modern``: pixel-averaged loss, batches of random crops padded with the ignore label, polynomial decay, SGD
  or AdamW, mixed precision where bf16 is native. With the defaults, a trained encoder's batch norms are frozen
  and folded into its convolutions (``batch_norm="auto"``), behind a 50-step linear warm-up
  (``warmup_steps=-1``, auto; without it lr 0.01 diverged), the encoder at a tenth of the rate
  (``encoder_lr_mult=-1``) and the gradients' norm clipped to 5 (``clip_grad_norm=-1``): without the last
  two, the unnormalised encoder blew up on SIFT Flow and on small CamVid batches (benchmarks/RESULTS.md).

Precedence: dataclass defaults < recipe < config file (YAML/JSON) < command-line flags.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal, get_args

from .errors import ConfigError
from .options import CheckData, Engine, Precision, check_choices, check_known, opt, read_mapping, scales, shared


def default_data_root() -> str:
    return os.environ.get("FCNSEG_DATA", "../shared/data")


DATA_FOLDERS = {"siftflow": "sift-flow"}
"""A dataset's folder under ``$FCNSEG_DATA`` where it is not the dataset's name (SIFT Flow's archive name)."""


def dataset_folder(kind: str) -> Path:
    """Where dataset ``kind`` is read from when no folder is given: ``$FCNSEG_DATA/<folder>``."""
    return Path(default_data_root()) / DATA_FOLDERS.get(kind, kind)


Recipe = Literal["paper", "modern"]


@dataclass
class TrainConfig:
    """``fcnseg train``'s options: every default with its reason (``help``), flags generated from the fields."""

    # --- data ---
    dataset: str = shared("dataset", "camvid")
    data_root: str = shared("data_root", note="empty = $FCNSEG_DATA/<dataset>")
    train_split: str = opt("train", "split used for training")
    val_split: str = opt("val", "split used for validation and model selection")
    val_dataset: str = opt("", "family of the validation set; empty = dataset (the paper: train sbd, val voc)")
    val_data_root: str = opt("", "its folder; empty = data_root when the family is the same, else "
                             "$FCNSEG_DATA/<family>")
    dataset_args: dict[str, Any] = shared("dataset_args")
    skip_bad: bool = shared("skip_bad", note="training checks the data in full first")
    check_data: CheckData = shared("check_data", "labels", note="training reads every mask anyway, so a bad one "
                                   "is found before hours are spent")
    max_pixels: int = shared("max_pixels")
    workers: int = shared("workers", note="kept for the whole run; augmentation overlaps compute")
    cache: Literal["auto", "on", "off"] = opt("auto", "keep decoded training images in memory: auto (if they "
                                              "fit), on, off")
    # --- model ---
    model: str = opt("fcn8s", "registry name (`fcnseg models --names`)")
    model_args: dict[str, Any] = shared("model_args")
    init_from: str = opt("", "checkpoint to start from by layer name (staged 32s -> 16s -> 8s, section 4.2)")
    normalization: str = opt("", "input normalisation; empty = the one the weights expect")
    freeze_encoder: bool = opt(False, "train only the head on a frozen encoder (the paper's \"FCN-32s-fixed\")")
    # --- optimisation ---
    recipe: Recipe = opt("modern", "named preset applied before any override: paper (the reference solver) or "
                         "modern (batched crops, poly decay)")
    batch_size: int = opt(8, "images per step (per process under DDP)")
    loss: Literal["sum", "mean"] = opt("mean", "sum over pixels (the reference, lr ~1e-10) or mean over valid "
                                       "pixels")
    optimizer: Literal["sgd", "adamw"] = opt("sgd", "sgd or adamw")
    lr: float = opt(0.01, "base learning rate")
    momentum: float = opt(0.9, "SGD momentum (0.99 in the paper with batch 1)")
    weight_decay: float = opt(1e-4, "L2 on weights (5e-4 in the paper)")
    bias_lr_mult: float = opt(1.0, "learning-rate factor of biases; the paper trains them at twice the rate")
    encoder_lr_mult: float = opt(-1.0, "learning-rate factor of the encoder's parameters (the head's is 1); -1 = "
                                 "auto: 0.1 if batch norm is frozen (an unnormalised encoder diverged at 1), else 1")
    clip_grad_norm: float = opt(-1.0, "clip the gradients' global norm to this before each step; 0 = off, -1 = "
                                "auto: 5 if batch norm is frozen, else off")
    bias_decay: bool = opt(False, "decay biases (and norm parameters) too; off, as in the paper")
    schedule: Literal["constant", "poly"] = opt("poly", "constant (paper) or poly")
    poly_power: float = opt(0.9, "exponent of polynomial decay")
    warmup_steps: int = opt(-1, "linear warm-up steps; -1 = auto: 50 if batch norm is frozen, else 0")
    class_weights: Literal["none", "median_freq"] = opt("none", "none, or median_freq: rare classes weigh more "
                                                        "(SegNet's CamVid balancing)")
    loss_sampling: float = opt(1.0, "keep each final-layer cell's loss with this probability (the paper's patch "
                               "sampling, section 4.3); 1 = whole-image training", metavar="P")
    ema_decay: float = opt(0.0, "exponential moving average of the weights, validated and saved; 0 = off (try "
                           "0.999)")
    max_steps: int = opt(2000, "optimisation steps in all")
    stop_at: int = opt(0, "stop (with a checkpoint) at this step, keeping max_steps' schedule; resume later; "
                       "0 = off")
    precision: Precision = shared("precision")
    channels_last: bool = opt(True, "NHWC activations: oneDNN's fast layout (1.5x per CPU step, "
                              "benchmarks/RESULTS.md)")
    batch_norm: Literal["auto", "train", "frozen"] = opt("auto", "auto = frozen (statistics fixed) for a "
                                                         "trained encoder, else train")
    compile: bool = opt(False, "torch.compile the training step (fuses batch norm and activations; ~1-2 min to "
                        "compile)")
    # --- augmentation ---
    crop_size: int = opt(320, "random crop side; 0 = whole images (batches padded with the ignore label)")
    scale_min: float = opt(0.5, "random scale range, low end")
    scale_max: float = opt(2.0, "random scale range, high end")
    hflip: bool = opt(True, "random horizontal flip")
    color_jitter: float = opt(0.0, "brightness/contrast/saturation jitter strength")
    # --- bookkeeping ---
    val_every: int = opt(500, "steps between validations (and checkpoints)")
    log_every: int = opt(10, "steps between log lines")
    max_val_images: int = opt(0, "0 = the whole validation split")
    out_dir: str = opt("runs/train", "run folder: checkpoints, log.jsonl, tensorboard/, config.json", flag="--out")
    overwrite: bool = shared("overwrite", note="allows writing into an existing, non-empty run folder")
    seed: int = opt(0, "seeds model init, sampling and augmentation")
    device: str = shared("device")
    dist_timeout: int = opt(600, "seconds a process waits for the others (torchrun) before naming the stalled "
                            "rank")
    resume: str = opt("", "checkpoint to resume from (model, optimiser, scheduler, step, sampler, RNG)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def resolved_data_root(self) -> Path:
        return Path(self.data_root) if self.data_root else dataset_folder(self.dataset)

    def resolved_val(self) -> tuple[str, Path, dict[str, Any]]:
        """(family, folder, dataset kwargs) of the validation set."""
        kind = self.val_dataset or self.dataset
        if self.val_data_root:
            root = Path(self.val_data_root)
        else:
            root = self.resolved_data_root() if kind == self.dataset else dataset_folder(kind)
        return kind, root, self.dataset_args if kind == self.dataset else {}


def paper_lr(model: str) -> float:
    """The reference's fixed learning rates for the summed loss: 1e-10 (32s), 1e-12 (16s), 1e-14 (8s).

    At-once FCN-8s starts from VGG16, not from a trained FCN-16s, and trains at 1e-10 like FCN-32s (its skips are
    scaled down instead: the reference's ``voc-fcn8s-atonce/solver.prototxt``).
    """
    if "atonce" in model:
        return 1e-10
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


assert set(get_args(Recipe)) == set(RECIPES), "every recipe is a choice of TrainConfig.recipe"


def make_config(recipe: str | None = None, file: str | Path | None = None, **overrides: Any) -> TrainConfig:
    """Resolve a config: defaults, then the recipe, then ``file`` (YAML or JSON), then ``overrides``.

    The recipe is ``recipe`` if given, else the file's ``recipe`` key, else ``"modern"``. Overrides of
    ``None`` are ignored (unset flags); ``model_args`` and ``dataset_args`` are merged key by key. Unknown
    keys and values outside an option's choices or range are :class:`~fcnseg.errors.ConfigError` naming the
    option, so a typo never silently falls back to a default.
    """
    from_file = read_mapping(file) if file else {}
    recipe = recipe or from_file.get("recipe") or "modern"
    if recipe not in RECIPES:
        raise ConfigError(f"unknown recipe {recipe!r}; known: {', '.join(RECIPES)}",
                          fix="choose " + " or ".join(RECIPES) + " for {recipe}")
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
    check_known(TrainConfig, values, f"config file {file}" if file else "train options")
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


def _validate(cfg: TrainConfig) -> None:
    """Choices come from the fields' ``Literal`` types; ranges are checked here, each naming its option."""
    check_choices(cfg)
    checks = [  # (holds, option, what is wrong, what to set)
        (cfg.batch_size >= 1, "batch_size", "must be at least 1", "1 or more"),
        (cfg.max_steps >= 1, "max_steps", "must be at least 1", "1 or more"),
        (0 <= cfg.stop_at <= cfg.max_steps, "stop_at", "must lie between 0 (off) and max_steps",
         "0 (off) or a step up to max_steps"),
        (cfg.lr > 0, "lr", "must be positive", "a positive rate"),
        (cfg.val_every >= 1, "val_every", "must be at least 1", "1 or more"),
        (cfg.log_every >= 1, "log_every", "must be at least 1", "1 or more"),
        (cfg.workers >= 0, "workers", "must be 0 or more", "0 or more"),
        (0 <= cfg.ema_decay < 1, "ema_decay", "must lie in [0, 1)", "0 (off) or e.g. 0.999"),
        (cfg.warmup_steps >= -1, "warmup_steps", "must be -1 (auto), 0 (off) or a number of steps",
         "-1, 0 or a number of steps"),
        (cfg.encoder_lr_mult == -1 or cfg.encoder_lr_mult >= 0, "encoder_lr_mult",
         "must be -1 (auto) or a factor of 0 or more", "-1 or a factor such as 0.1"),
        (cfg.clip_grad_norm == -1 or cfg.clip_grad_norm >= 0, "clip_grad_norm",
         "must be -1 (auto), 0 (off) or a positive norm", "-1, 0 or e.g. 5"),
        (0 < cfg.loss_sampling <= 1, "loss_sampling", "must lie in (0, 1]", "1 (off) or e.g. 0.5"),
        (cfg.max_pixels >= 1, "max_pixels", "must be at least 1", "1 or more"),
        (cfg.dist_timeout >= 1, "dist_timeout", "must be at least 1 second", "1 or more seconds"),
        (cfg.crop_size >= 0, "crop_size", "must be 0 (whole images) or a side in pixels", "0 or a side"),
        (0 < cfg.scale_min <= cfg.scale_max, "scale_min", "and scale_max: need 0 < scale_min <= scale_max",
         "0 < scale_min <= scale_max"),
    ]
    for ok, name, what, to in checks:
        if not ok:
            raise ConfigError(f"{name} {what}, not {getattr(cfg, name)!r}", fix=f"set {{{name}}} to {to}")


@dataclass
class EvalConfig:
    """``fcnseg eval``'s options (``fcnseg.evaluate.run_eval``). Empty dataset/data_root/split: the checkpoint's
    validation set."""

    checkpoint: str = shared("checkpoint", note="for engine torch also the weights")
    dataset: str = shared("dataset", note="empty = the checkpoint's validation set")
    data_root: str = shared("data_root", note="empty = the checkpoint's validation folder")
    split: str = opt("", "split to score; empty = the checkpoint's validation split")
    dataset_args: dict[str, Any] = shared("dataset_args")
    out: str = opt("", "JSON file for the metrics and the confusion matrix (checked before any work)")
    overwrite: bool = shared("overwrite")
    engine: Engine = shared("engine")
    onnx_file: str = shared("onnx_file")
    flip: bool = shared("flip", note="torch engine")
    scales: tuple[float, ...] = opt((1.0,), "multi-scale test-time augmentation: average the predictions at "
                                    "these resize factors, e.g. 0.75,1,1.25 (torch engine)", metavar="S,S,...",
                                    parse=scales)
    precision: Precision = shared("precision")
    window: int = shared("window")
    shift_and_stitch: int = shared("shift_and_stitch")
    device: str = shared("device")
    workers: int = shared("workers")
    skip_bad: bool = shared("skip_bad")
    check_data: CheckData = shared("check_data")
    max_pixels: int = shared("max_pixels")
    max_images: int = opt(0, "evaluate only the first N images (0 = all)")
    boundary: tuple[int, ...] = opt((), "also score edges within these distances in pixels, e.g. 1 2 5: boundary "
                                    "F-score and trimap IU (docs/explanations/metrics.md); empty = off",
                                    metavar="D")


@dataclass
class PredictConfig:
    """``fcnseg predict``'s options (``fcnseg.predict.run_predict``)."""

    checkpoint: str = shared("checkpoint")
    inputs: list[str] = opt(help="image files, folders (searched recursively) or URLs that fsspec reads (https://: "
                                 "pip install 'fcnseg[remote]'; s3://, gs://, file://...)", default_factory=list,
                            positional=True, required=True)
    out_dir: str = opt("", "output folder (checked before any work)", flag="--out", short="-o", required=True)
    overlay: bool = opt(True, "also write <stem>_overlay.png (--no-overlay: only the label PNGs)")
    overwrite: bool = shared("overwrite", note="writes into a non-empty output folder")
    format: tuple[str, ...] = opt(("png",), "what to write, comma-separated: png (label PNGs and overlays), rle "
                                  "(predictions.jsonl: COCO run-length masks per class), or png,rle",
                                  metavar="png,rle", parse=lambda text: tuple(text.split(",")))
    resume: bool = opt(False, "go on in a non-empty output folder: skip the inputs whose outputs exist and whose "
                       "manifest.jsonl line names the same checkpoint; predict the others (a new checkpoint: all)")
    ray: str = opt("", "predict on a Ray cluster (pip install 'fcnseg[ray]'): auto joins a running one, local starts "
                   "one on this machine, or a cluster's address; empty = this process", metavar="ADDRESS")
    ray_actors: int = opt(2, "Ray actors that each hold the model (one CPU each, or one GPU with device cuda)")
    ray_object_store_mb: int = opt(512, "object store of the cluster that --ray local starts, in MiB: the image "
                                   "bytes in flight stay within it (larger objects spill to disk), which keeps the "
                                   "actors' memory from growing over a long job; a cluster joined (auto, an "
                                   "address) keeps its own")
    skip_bad: bool = shared("skip_bad")
    flip: bool = shared("flip")
    window: int = shared("window")
    shift_and_stitch: int = shared("shift_and_stitch")
    tile_pixels: int = opt(1024 * 1024, "images with more pixels are predicted in tiles of about this many "
                           "(bounds memory)")
    max_pixels: int = shared("max_pixels")
    device: str = shared("device")
    workers: int = shared("workers")
    engine: Engine = shared("engine")
    onnx_file: str = shared("onnx_file")
    precision: Precision = shared("precision")


@dataclass
class ExportConfig:
    """``fcnseg export``'s options (mapped onto ``fcnseg.export.export_model``)."""

    checkpoint: str = shared("checkpoint", positional=True)
    out: str = opt("", "output file (.onnx or .pt)", short="-o", required=True)
    format: Literal["auto", "onnx", "torchscript"] = opt("auto", "auto: from the suffix of out (.onnx -> onnx, "
                                                         ".pt/.ts -> torchscript)")
    opset: int = opt(18, "ONNX opset version")
    int8: list[str] = opt(help="quantise the ONNX graph to int8 (ONNX Runtime, static), calibrating on these "
                          "image files or folders (e.g. training images)", default_factory=list,
                          metavar="IMAGES")
    calibration_images: int = opt(32, "at most this many images for int8")
    overwrite: bool = shared("overwrite")


@dataclass
class ConvertConfig:
    """``fcnseg convert``'s options: weights made elsewhere into a self-describing checkpoint."""

    format: Literal["caffe", "torchvision"] = opt("caffe", "what source is", positional=True)
    source: str = opt("", ".caffemodel or .pth file", positional=True, required=True)
    out: str = opt("", "checkpoint to write (.pt)", short="-o", required=True)
    model: str = opt("", "registry name the weights become, e.g. fcn8s, fcn32s", required=True)
    num_classes: int | None = opt(None, "default: score_fr's outputs in the file, or 21 (PASCAL VOC)")
    classes: str = opt("", "text file of class names, one per line")
    model_args: dict[str, Any] = shared("model_args")
    overwrite: bool = shared("overwrite")


@dataclass
class HhaConfig:
    """``fcnseg hha``'s options: depth PNGs into HHA images."""

    depth: list[str] = opt(help="depth PNGs (16-bit, depth_scale units a metre)", default_factory=list,
                           positional=True, required=True)
    out: str = opt("", "output folder", short="-o", required=True)
    depth_scale: float = opt(1000.0, "depth units a metre (1000: millimetres)")
    fx: float | None = opt(None, "camera focal length x in pixels (default: NYUDv2's)")
    fy: float | None = opt(None, "camera focal length y in pixels (default: NYUDv2's)")
    cx: float | None = opt(None, "camera principal point x in pixels (default: NYUDv2's)")
    cy: float | None = opt(None, "camera principal point y in pixels (default: NYUDv2's)")
    overwrite: bool = shared("overwrite")


@dataclass
class ModelsConfig:
    """``fcnseg models``'s options."""

    names: bool = opt(False, "only the registered names, one a line")
    time: bool = opt(False, "also time Table 1's nets here: one fp32 forward pass at 500x500 on this CPU, median "
                     "of 3 (tens of seconds)")
