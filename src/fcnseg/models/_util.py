"""Small helpers shared by the model files."""

from __future__ import annotations

import torch


def exporting() -> bool:
    """True while the model is traced, scripted, compiled or exported to ONNX.

    Fast CPU paths (fc6 as a GEMM, upsampling as banded matrix products) step aside then, so exported graphs
    hold the standard operators (Conv, ConvTranspose) that every runtime optimises.
    """
    compiling = getattr(getattr(torch, "compiler", None), "is_compiling", lambda: False)
    return bool(torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export() or compiling())
