"""Model registry: ``build(name, **kwargs)``, ``list_models()``, one short typed factory per variant.

The paper's networks (arXiv:1411.4038): ``fcn32s``, ``fcn16s``, ``fcn8s`` (staged), ``fcn8s_atonce``
(section 4.2, the reference's at-once net) and ``fcn_alexnet``; modern encoders are registered by
:mod:`fcnseg.models.backbones`, the NYUDv2 multi-modal nets (RGB-D early fusion, RGB-HHA late fusion) by
:mod:`fcnseg.models.fusion`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from .fcn import FCN, BilinearUpsample, bilinear_kernel
from .geometry import CoordMap, coord_map, crop_offset
from .vgg import AlexNetTrunk, VGG16Trunk, convolutionalize_vgg16, widen_input_filters

__all__ = [
    "FCN", "BilinearUpsample", "bilinear_kernel", "CoordMap", "coord_map", "crop_offset", "VGG16Trunk",
    "AlexNetTrunk", "convolutionalize_vgg16", "widen_input_filters", "build", "list_models", "register",
    "fcn32s", "fcn16s", "fcn8s", "fcn8s_atonce", "fcn_alexnet",
]

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a factory under its function name."""
    _REGISTRY[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    """Names accepted by :func:`build`, sorted."""
    _load_backbones()
    return sorted(_REGISTRY)


def build(name: str, **kwargs: Any) -> nn.Module:
    """Build the model registered as ``name``; ``kwargs`` go to its factory (e.g. ``num_classes=21``)."""
    _load_backbones()
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    factory = _REGISTRY[name]
    params = inspect.signature(factory).parameters
    unknown = sorted(k for k in kwargs if k not in params)
    if unknown and not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        raise ValueError(f"model {name!r} takes no argument {', '.join(map(repr, unknown))}; it takes: "
                         f"{', '.join(params)}" + (" (ImageNet weights: the *_efficientnet_lite* models, or "
                                                    "`fcnseg convert` for VGG16)" if "pretrained" in unknown else ""))
    return factory(**kwargs)


def _load_backbones() -> None:
    # Imported lazily: timm is only needed for the modern-encoder variants (and the fusion nets over them).
    from . import backbones, fusion  # noqa: F401


@register
def fcn32s(*, num_classes: int = 21, in_channels: int = 3, learnable_upsampling: bool = False,
           width: float = 1.0, dropout: float = 0.5) -> FCN:
    """FCN-32s VGG16: score_fr on fc7, one 32x bilinear upsampling (paper, Table 2)."""
    trunk = VGG16Trunk(in_channels, width=width, dropout=dropout)
    return FCN(trunk, num_classes, 32, learnable_upsampling=learnable_upsampling)


@register
def fcn16s(*, num_classes: int = 21, in_channels: int = 3, learnable_upsampling: bool = False,
           width: float = 1.0, dropout: float = 0.5) -> FCN:
    """FCN-16s VGG16: fc7 scores upsampled 2x and fused with pool4 scores, then 16x (section 4.2)."""
    trunk = VGG16Trunk(in_channels, width=width, dropout=dropout)
    return FCN(trunk, num_classes, 16, learnable_upsampling=learnable_upsampling)


@register
def fcn8s(*, num_classes: int = 21, in_channels: int = 3, learnable_upsampling: bool = False,
          width: float = 1.0, dropout: float = 0.5) -> FCN:
    """FCN-8s VGG16: FCN-16s fused again with pool3 scores, then 8x (section 4.2)."""
    trunk = VGG16Trunk(in_channels, width=width, dropout=dropout)
    return FCN(trunk, num_classes, 8, learnable_upsampling=learnable_upsampling)


@register
def fcn8s_atonce(*, num_classes: int = 21, in_channels: int = 3, learnable_upsampling: bool = False,
                 width: float = 1.0, dropout: float = 0.5) -> FCN:
    """FCN-8s for at-once training: pool4 scaled by 0.01 and pool3 by 0.0001 before scoring (PAMI 2016)."""
    trunk = VGG16Trunk(in_channels, width=width, dropout=dropout)
    return FCN(trunk, num_classes, 8, learnable_upsampling=learnable_upsampling, skip_scales=(1e-2, 1e-4))


@register
def fcn_alexnet(*, num_classes: int = 21, in_channels: int = 3, learnable_upsampling: bool = False,
                width: float = 1.0, dropout: float = 0.5) -> FCN:
    """FCN-AlexNet (CaffeNet trunk), stride 32, upsampling kernel 63 (paper, Table 1)."""
    trunk = AlexNetTrunk(in_channels, width=width, dropout=dropout)
    return FCN(trunk, num_classes, 32, learnable_upsampling=learnable_upsampling)
