"""Images in, label maps out: the one inference function the service batches.

A stand-in for ``fcnseg.predict.Predictor.labels_batch`` (being added on the main branch): the same steps as
``fcnseg predict`` (the checkpoint's model through ``prepare_inference``, its normalisation,
``predict_logits``, argmax), for a whole batch at once. When ``Predictor`` lands, :func:`load_labeler` becomes
``Predictor(...).labels_batch``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import Checkpoint
from ..engine import predict_logits, prepare_inference

Labeler = Callable[[torch.Tensor], np.ndarray]
"""uint8 (N, 3, H, W) RGB images -> uint8 (N, H, W) class indices."""


def check_engine(engine: str, onnx_file: str | None, precision: str) -> None:
    """Raise ``ValueError`` / ``FileNotFoundError`` (one line) for an engine setting that cannot run."""
    if engine not in ("torch", "onnxruntime"):
        raise ValueError(f"unknown engine {engine!r}: torch or onnxruntime")
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be fp32 or bf16, not {precision!r}")
    if engine == "torch":
        if onnx_file:
            raise ValueError("--onnx is for --engine onnxruntime")
        return
    if not onnx_file:
        raise ValueError("--engine onnxruntime needs --onnx FILE (made by `fcnseg export --format onnx`)")
    if precision != "fp32":
        raise ValueError("--precision is for --engine torch; the ONNX file fixes its own precision")
    if not Path(onnx_file).is_file():
        raise FileNotFoundError(f"--onnx {onnx_file}: no such file")


def load_labeler(ck: Checkpoint, *, engine: str = "torch", onnx_file: str | None = None,
                 precision: str = "fp32", threads: int = 0) -> Labeler:
    """The checkpoint's model as a :data:`Labeler`, on the CPU, under PyTorch or ONNX Runtime.

    ``engine="onnxruntime"`` runs ``onnx_file`` (made by ``fcnseg export``: dynamic batch and size) with the
    checkpoint's normalisation; ``precision`` (fp32 or bf16) is for ``engine="torch"``. ``threads`` > 0 sets
    the intra-op threads (torch's are process-wide). Settings that cannot run raise as :func:`check_engine`.
    """
    check_engine(engine, onnx_file, precision)
    if engine == "onnxruntime":
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads > 0:
            options.intra_op_num_threads = threads
        sess = ort.InferenceSession(onnx_file, options, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name

        def run_ort(images: torch.Tensor) -> np.ndarray:
            logits = sess.run(None, {name: ck.normalization(images).numpy()})[0]  # (N, K, H, W)
            return logits.argmax(1).astype(np.uint8)

        return run_ort
    if threads > 0:
        torch.set_num_threads(threads)
    model = prepare_inference(ck.build_model(), precision=precision)

    def run_torch(images: torch.Tensor) -> np.ndarray:
        logits = predict_logits(model, ck.normalization(images))  # (N, K, H, W) float32
        return logits.argmax(1).to(torch.uint8).numpy()

    return run_torch
