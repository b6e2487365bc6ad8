"""One scorer for every command that runs a trained model: ``eval``, ``predict``, ``serve`` and ``export``.

The engine rules live here, once: which engine (PyTorch on the checkpoint's weights, or ONNX Runtime on a file
``fcnseg export`` wrote), which precision, which test-time augmentation, and which models an engine (or a
caller) can take. :class:`ScorerSpec` checks a request for a scorer when it is made (fast: no model is built)
and raises one family error per refusal; :meth:`ScorerSpec.build` then loads the model. :func:`make_scorer`
does both::

    scorer = make_scorer(ck, engine="onnxruntime", onnx_file="m_int8.onnx")
    scores = scorer(images)          # uint8 (N, 3, H, W) -> float32 (N, K, H, W), on scorer.device
    labels = scorer.labels(images)   # (N, H, W) int64; (N, T, H, W) for a multi-task model's T heads

Both engines read the same input: the checkpoint's normalisation of the uint8 image (:func:`model_input`),
which is also what ``fcnseg export --int8`` calibrates on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

import torch
from torch import Tensor

from .checkpoint import Checkpoint
from .engine import predict_logits, prepare_inference
from .errors import CheckpointError, ConfigError, optional_import
from .models import head_labels
from .options import Engine
from .precision import PRECISIONS, resolve_precision

__all__ = ["ENGINES", "Scorer", "ScorerSpec", "make_scorer", "model_input", "require_single_task"]

ENGINES: tuple[str, ...] = get_args(Engine)
"""``torch``: the checkpoint's weights in PyTorch; ``onnxruntime``: an exported ONNX file, on the CPU."""

ORT_NEEDED_FOR = "engine onnxruntime"
"""What :class:`~fcnseg.errors.MissingDependency` says needs onnxruntime when the ``export`` extra is missing."""


def model_input(ck: Checkpoint, images: Tensor) -> Tensor:
    """uint8 RGB images (N, C, H, W) -> the float32 input of ``ck``'s network (its normalisation), on the
    images' device. The one input of both engines and of int8 calibration."""
    return ck.normalization(images)


def require_single_task(ck: Checkpoint, use: str) -> None:
    """Refuse a multi-task checkpoint (SIFT Flow's two heads) for ``use``, which handles one label map.

    Raises :class:`~fcnseg.errors.CheckpointError` with the one wording of this refusal.
    """
    if ck.heads:
        raise CheckpointError(f"{ck.model_name} has {len(ck.heads)} heads ({', '.join(ck.heads)}): {use} takes "
                              "single-task models only",
                              fix="predict or evaluate it with `fcnseg predict` or `fcnseg eval` and {engine} torch, "
                                  "which handle every task")


@dataclass(frozen=True)
class Scorer:
    """Class scores of uint8 RGB images from one checkpoint's model, under the engine chosen once.

    ``scorer(images)`` takes uint8 (N, 3, H, W) on any device and returns float32 scores (N, K, H, W) on
    :attr:`device` (the CPU for ONNX Runtime); a multi-task model's heads come back side by side on the class
    axis (K = the sum of :attr:`heads`). Made by :func:`make_scorer` or :meth:`ScorerSpec.build`.
    """

    checkpoint: Checkpoint
    engine: str
    device: torch.device  # where images are normalised and scores returned
    precision: str  # what runs: fp32 or bf16 (torch, resolved); "as exported" for ONNX Runtime (fp32 or int8)
    run: Callable[[Tensor], Tensor]  # the model input (N, C, H, W) on `device` -> float32 scores (N, K, H, W)

    @property
    def heads(self) -> dict[str, int] | None:
        """``{task: classes}`` of a multi-task model, else ``None``."""
        return self.checkpoint.heads

    def __call__(self, images: Tensor) -> Tensor:
        return self.run(model_input(self.checkpoint, images.to(self.device)))

    def labels(self, images: Tensor) -> Tensor:
        """int64 labels (N, H, W) of uint8 images (N, 3, H, W), or (N, T, H, W) by task; on :attr:`device`."""
        return head_labels(self(images), self.heads)


@dataclass(frozen=True)
class ScorerSpec:
    """A checked request for a :class:`Scorer`: constructing it validates engine, precision and task (fast, no
    model built) and raises :class:`~fcnseg.errors.ConfigError` or :class:`~fcnseg.errors.CheckpointError`,
    one wording per refusal; :meth:`build` loads the model.

    Args:
        checkpoint: the model's description; gives the classes and normalisation for both engines, the
            weights for ``torch``.
        engine: ``torch`` or ``onnxruntime`` (:data:`ENGINES`).
        onnx_file: the ONNX file for ``onnxruntime`` (made by ``fcnseg export``); "" for ``torch``.
        precision: ``auto``, ``fp32`` or ``bf16`` (:func:`fcnseg.precision.resolve_precision`); ``torch`` only.
        device: ``cpu``, ``cuda``, ``cuda:1``; "" = cuda if available. ``torch`` only: ONNX Runtime runs on the CPU.
        threads: intra-op threads when > 0 (ONNX Runtime's session; PyTorch's, which are process-wide).
        flip, window, scales: test-time augmentation (:func:`fcnseg.engine.predict_logits`); ``torch`` only.
        shift_and_stitch: ``F`` > 1 scores ``F`` times more densely by shift-and-stitch
            (:class:`fcnseg.models.stitch.ShiftAndStitch`, section 3.2; ``F x F`` passes); 1 runs the model as
            it is, bit for bit. ``torch`` only; a factor the net's strides do not allow is refused by
            :meth:`build`.
        single_task_for: non-empty when the caller handles one label map per image; names the caller in the
            refusal of a multi-task model (``onnxruntime`` always needs one: export writes single-task graphs).
    """

    checkpoint: Checkpoint
    engine: str = "torch"
    onnx_file: str = ""
    precision: str = "auto"
    device: str = ""
    threads: int = 0
    flip: bool = False
    window: int = 0
    scales: Sequence[float] = (1.0,)
    shift_and_stitch: int = 1
    single_task_for: str = ""

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ConfigError(f"unknown engine {self.engine!r}", fix="set {engine} to torch or onnxruntime")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"unknown precision {self.precision!r}", fix="set {precision} to auto, fp32 or bf16")
        if self.window < 0:
            raise ConfigError(f"window {self.window} is negative", fix="set {window} to 0 (whole images) or a side")
        if not self.scales or min(self.scales) <= 0:
            raise ConfigError(f"scales {tuple(self.scales)} must be positive factors",
                              fix="set {scales} to resize factors such as 0.75,1,1.25 (1 alone: off)")
        if self.shift_and_stitch < 1:
            raise ConfigError(f"shift-and-stitch factor {self.shift_and_stitch} is below 1",
                              fix="set {shift_and_stitch} to 1 (off) or to 2, 4, ...")
        if self.single_task_for:
            require_single_task(self.checkpoint, self.single_task_for)
        if self.engine == "torch":
            if self.onnx_file:
                raise ConfigError(f"ONNX file {self.onnx_file} given to engine torch, which runs the checkpoint",
                                  fix="set {engine} to onnxruntime to run it, or leave {onnx_file} out")
            return
        self._check_onnxruntime()

    def _check_onnxruntime(self) -> None:
        require_single_task(self.checkpoint, "engine onnxruntime")
        torch_only = [name for name, on in (("flip", self.flip), ("window", self.window > 0),
                                            ("scales", tuple(self.scales) != (1.0,)),
                                            ("shift_and_stitch", self.shift_and_stitch != 1),
                                            ("precision", self.precision == "bf16")) if on]
        if torch_only:
            raise ConfigError("engine onnxruntime runs the ONNX file as exported: its own precision (fp32, or int8 "
                              "from `fcnseg export`), no test-time augmentation",
                              fix=" and ".join(f"{{{name}}}" for name in torch_only) + " are for {engine} torch: "
                                  "leave them out or set {engine} to torch")
        if not self.onnx_file:
            raise ConfigError("engine onnxruntime needs an ONNX file (made by `fcnseg export`)",
                              fix="pass the file as {onnx_file}")
        if not Path(self.onnx_file).is_file():
            raise CheckpointError(f"ONNX file {self.onnx_file} does not exist", path=self.onnx_file,
                                  fix="pass the file `fcnseg export` wrote as {onnx_file}")
        optional_import("onnxruntime", needed_for=ORT_NEEDED_FOR)  # a missing extra is refused now, not later

    def build(self) -> Scorer:
        """Load the model (seconds): the checkpoint's network on :attr:`device`, or an ONNX Runtime session."""
        if self.engine == "onnxruntime":
            return Scorer(self.checkpoint, self.engine, torch.device("cpu"), "as exported", _onnx_runner(self))
        dev = torch.device(self.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        precision = resolve_precision(self.precision, dev)  # warns where bf16 is emulated
        if self.threads > 0:
            torch.set_num_threads(self.threads)
        model = self.checkpoint.build_model()
        if self.shift_and_stitch != 1:  # wraps a copy: on the CPU, before the device holds the weights
            from .models.stitch import ShiftAndStitch

            model = ShiftAndStitch(model, self.shift_and_stitch)
        model = prepare_inference(model.to(dev), precision=precision)
        flip, window, scales = self.flip, self.window, tuple(self.scales)

        def run(x: Tensor) -> Tensor:
            return predict_logits(model, x, flip=flip, window=window, scales=scales)  # on the device

        return Scorer(self.checkpoint, self.engine, dev, precision, run)


def _onnx_runner(spec: ScorerSpec) -> Callable[[Tensor], Tensor]:
    """ONNX Runtime's session over ``spec.onnx_file`` (CPU), checked to predict the checkpoint's classes."""
    ort = optional_import("onnxruntime", needed_for=ORT_NEEDED_FOR)
    options = ort.SessionOptions()
    if spec.threads > 0:
        options.intra_op_num_threads = spec.threads
    try:
        sess = ort.InferenceSession(spec.onnx_file, options, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - ONNX Runtime raises its own types for unreadable or invalid files
        raise CheckpointError(f"ONNX file {spec.onnx_file}: ONNX Runtime cannot load it ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''})", path=spec.onnx_file,
                              fix="export it again with `fcnseg export`") from e
    name = sess.get_inputs()[0].name
    k = sess.get_outputs()[0].shape[1]  # an int, or a name for a dynamic axis
    classes = len(spec.checkpoint.classes)
    if isinstance(k, int) and k != classes:
        raise CheckpointError(f"ONNX file {spec.onnx_file} scores {k} classes; the checkpoint "
                              f"{spec.checkpoint.model_name} has {classes}", path=spec.onnx_file,
                              fix="pass the checkpoint the file was exported from, or export it again")

    def run(x: Tensor) -> Tensor:
        return torch.from_numpy(sess.run(None, {name: x.numpy()})[0])

    return run


def make_scorer(checkpoint: Checkpoint, *, engine: str = "torch", onnx_file: str = "", precision: str = "auto",
                device: str = "", threads: int = 0, flip: bool = False, window: int = 0,
                scales: Sequence[float] = (1.0,), shift_and_stitch: int = 1, single_task_for: str = "") -> Scorer:
    """Check the settings and load the model: ``ScorerSpec(...).build()`` (see :class:`ScorerSpec` for the
    arguments and the refusals)."""
    return ScorerSpec(checkpoint, engine=engine, onnx_file=onnx_file, precision=precision, device=device,
                      threads=threads, flip=flip, window=window, scales=tuple(scales),
                      shift_and_stitch=shift_and_stitch, single_task_for=single_task_for).build()
