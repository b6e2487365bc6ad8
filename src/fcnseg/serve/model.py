"""Images in, label maps out: the one inference function the service batches,
:meth:`fcnseg.predict.Predictor.labels_batch` over a :class:`fcnseg.scorer.Scorer` (the code path of
``fcnseg predict``). The engine rules are the scorer's (:class:`fcnseg.scorer.ScorerSpec`)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ..checkpoint import Checkpoint
from ..predict import DEFAULT_TILE_PIXELS, Predictor
from ..scorer import ScorerSpec

Labeler = Callable[[torch.Tensor], np.ndarray]
"""uint8 (N, 3, H, W) RGB images -> uint8 (N, H, W) class indices."""

SERVICE_USE = "the service, which answers one label map per image,"
"""How a refusal of a multi-task model names the service (:func:`fcnseg.scorer.require_single_task`)."""


def serve_spec(ck: Checkpoint, *, engine: str = "torch", onnx_file: str = "", precision: str = "auto",
               threads: int = 0, device: str = "cpu") -> ScorerSpec:
    """The checked scorer request of a served model (fast, no model built): single-task, no test-time
    augmentation. Raises :class:`~fcnseg.errors.ConfigError` / :class:`~fcnseg.errors.CheckpointError`."""
    return ScorerSpec(ck, engine=engine, onnx_file=onnx_file, precision=precision, device=device, threads=threads,
                      single_task_for=SERVICE_USE)


def build_labeler(spec: ScorerSpec, tile_pixels: int = DEFAULT_TILE_PIXELS) -> Labeler:
    """Load the model of ``spec`` (seconds) as a :data:`Labeler`; images over ``tile_pixels`` are tiled."""
    return Predictor(spec.build(), tile_pixels=tile_pixels).labels_batch


def load_labeler(ck: Checkpoint, *, engine: str = "torch", onnx_file: str = "", precision: str = "auto",
                 threads: int = 0, tile_pixels: int = DEFAULT_TILE_PIXELS, device: str = "cpu") -> Labeler:
    """The checkpoint's model as a :data:`Labeler`, under PyTorch or ONNX Runtime: :func:`serve_spec`, then
    :func:`build_labeler`.

    ``engine="onnxruntime"`` runs ``onnx_file`` (made by ``fcnseg export``: dynamic batch and size) with the
    checkpoint's normalisation; ``precision`` (auto, fp32 or bf16) and ``device`` ("" = cuda if available) are
    for ``engine="torch"`` (labels come back on the CPU either way). ``threads`` > 0 sets the intra-op threads
    (torch's are process-wide).
    """
    spec = serve_spec(ck, engine=engine, onnx_file=onnx_file, precision=precision, threads=threads, device=device)
    return build_labeler(spec, tile_pixels)
