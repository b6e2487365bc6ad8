"""Images in, label maps out: the one inference function the service batches,
:meth:`fcnseg.predict.Predictor.labels_batch` (the same code path as ``fcnseg predict``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import Checkpoint
from ..precision import PRECISIONS
from ..predict import DEFAULT_TILE_PIXELS, Predictor

Labeler = Callable[[torch.Tensor], np.ndarray]
"""uint8 (N, 3, H, W) RGB images -> uint8 (N, H, W) class indices."""


def check_engine(engine: str, onnx_file: str | None, precision: str) -> None:
    """Raise ``ValueError`` / ``FileNotFoundError`` (one line) for an engine setting that cannot run."""
    if engine not in ("torch", "onnxruntime"):
        raise ValueError(f"unknown engine {engine!r}: torch or onnxruntime")
    if precision not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if engine == "torch":
        if onnx_file:
            raise ValueError("--onnx is for --engine onnxruntime")
        return
    if not onnx_file:
        raise ValueError("--engine onnxruntime needs --onnx FILE (made by `fcnseg export --format onnx`)")
    if precision not in ("auto", "fp32"):
        raise ValueError("--precision is for --engine torch; the ONNX file fixes its own precision")
    if not Path(onnx_file).is_file():
        raise FileNotFoundError(f"--onnx {onnx_file}: no such file")


def check_single_task(ck: Checkpoint) -> None:
    """Raise ``ValueError`` (one line) for a multi-task checkpoint: the service answers one label map."""
    if ck.heads:
        raise ValueError(f"{ck.model_name} has {len(ck.heads)} heads ({', '.join(ck.heads)}): the service answers "
                         f"one label map per image, so it serves single-task models only; use `fcnseg predict`, "
                         f"which writes a map per task")


def load_labeler(ck: Checkpoint, *, engine: str = "torch", onnx_file: str | None = None,
                 precision: str = "auto", threads: int = 0, tile_pixels: int = DEFAULT_TILE_PIXELS,
                 device: str = "cpu") -> Labeler:
    """The checkpoint's model as a :data:`Labeler`, on the CPU, under PyTorch or ONNX Runtime: the same
    :class:`fcnseg.predict.Predictor` that ``fcnseg predict`` uses (images over ``tile_pixels`` are tiled).

    ``engine="onnxruntime"`` runs ``onnx_file`` (made by ``fcnseg export``: dynamic batch and size) with the
    checkpoint's normalisation; ``precision`` (fp32 or bf16) is for ``engine="torch"``. ``threads`` > 0 sets
    the intra-op threads (torch's are process-wide); ``device`` ("" = cuda if available) is for
    ``engine="torch"`` (labels come back on the CPU either way). Settings that cannot run raise as :func:`check_engine`.
    """
    check_engine(engine, onnx_file, precision)
    check_single_task(ck)
    predictor = Predictor(ck, device=device, engine=engine, onnx_file=onnx_file, precision=precision,
                          tile_pixels=tile_pixels, threads=threads)
    return predictor.labels_batch
