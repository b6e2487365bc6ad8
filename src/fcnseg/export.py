"""``fcnseg export``: ONNX or TorchScript with dynamic batch, height and width.

The crop offsets are constants of the network and the crop sizes are read from the input's shape at run
time, so the exported graph keeps the geometry for every input size.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from .checkpoint import Checkpoint, load_checkpoint

FORMATS = ("onnx", "torchscript")


class _Logits(nn.Module):
    """Wraps a model so the exported graph takes normalised float images and returns logits."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


def export_model(checkpoint: str | Path | Checkpoint, out: str | Path, *, fmt: str = "onnx",
                 opset: int = 18, overwrite: bool = False, sample_size: tuple[int, int] = (67, 93)) -> Path:
    """Export the checkpoint's model; input ``image`` (N, C, H, W) float, normalised as the checkpoint says.

    ``sample_size`` is the (odd, non-square) size traced; every size works after export.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")
    ck = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists: pass --overwrite or choose another -o")
    out.parent.mkdir(parents=True, exist_ok=True)
    model = _Logits(ck.build_model()).eval()
    c = ck.model_args.get("in_channels", 3)
    x = torch.randn(1, c, *sample_size)
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracing warns about shape-dependent slicing, which is intended
            traced = torch.jit.trace(model, x, check_trace=False)
        traced.save(str(out))
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (x,), str(out), input_names=["image"], output_names=["logits"], opset_version=opset,
            dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"},
                          "logits": {0: "batch", 2: "height", 3: "width"}},
            dynamo=False,
        )
    return out
