"""Model registry: ``build(name, **kwargs)``, ``list_models()``, one short typed factory per variant.

The paper's networks (arXiv:1411.4038): ``fcn32s``, ``fcn16s``, ``fcn8s`` (staged), ``fcn8s_atonce``
(section 4.2, the reference's at-once net), ``fcn_alexnet`` and ``fcn32s_googlenet`` (Table 1), and the
two-headed SIFT Flow nets ``fcn{32,16,8}s_siftflow`` (section 5, table 5: semantic and geometric logits as a
dict); modern encoders are registered by :mod:`fcnseg.models.backbones`, the NYUDv2 multi-modal nets (RGB-D
early fusion, RGB-HHA late fusion) by :mod:`fcnseg.models.fusion`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from ..errors import ConfigError
from .fcn import FCN, BilinearUpsample, bilinear_kernel, head_labels, joined_logits, task_heads
from .geometry import CoordMap, ReceptiveField, coord_map, crop_offset, receptive_field
from .googlenet import GoogLeNetTrunk
from .vgg import AlexNetTrunk, VGG16Trunk, convolutionalize_vgg16, widen_input_filters

__all__ = [
    "FCN", "BilinearUpsample", "bilinear_kernel", "CoordMap", "coord_map", "crop_offset", "VGG16Trunk",
    "AlexNetTrunk", "GoogLeNetTrunk", "convolutionalize_vgg16", "widen_input_filters", "build", "list_models",
    "register", "ReceptiveField", "receptive_field", "fcn32s", "fcn16s", "fcn8s", "fcn8s_atonce", "fcn_alexnet",
    "fcn32s_googlenet", "fcn32s_siftflow", "fcn16s_siftflow",
    "fcn8s_siftflow", "is_multitask", "task_heads", "joined_logits", "head_labels", "siftflow_heads",
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


def is_multitask(name: str) -> bool:
    """Whether model ``name`` has one head per SIFT Flow task (its factory takes ``geo_classes``), without
    building it; ``False`` for an unknown name (:func:`build` refuses it)."""
    _load_backbones()
    return name in _REGISTRY and "geo_classes" in inspect.signature(_REGISTRY[name]).parameters


def build(name: str, **kwargs: Any) -> nn.Module:
    """Build the model registered as ``name``; ``kwargs`` go to its factory (e.g. ``num_classes=21``)."""
    _load_backbones()
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model {name!r}; available: {', '.join(sorted(_REGISTRY))}",
                          fix="choose one of them for {model}")
    factory = _REGISTRY[name]
    params = inspect.signature(factory).parameters
    unknown = sorted(k for k in kwargs if k not in params)
    if unknown and not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        weights = " (ImageNet weights: the *_efficientnet_lite* models, or fcnseg convert for VGG16)"
        raise ConfigError(f"model {name!r} takes no argument {', '.join(map(repr, unknown))}; it takes: "
                          f"{', '.join(params)}", fix="remove it from {model_args}, or choose another {model}"
                          + (weights if "pretrained" in unknown else ""))
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


@register
def fcn32s_googlenet(*, num_classes: int = 21, in_channels: int = 3, learnable_upsampling: bool = False,
                     width: float = 1.0, dropout: float = 0.4) -> FCN:
    """FCN-GoogLeNet (bvlc_googlenet trunk, average pooling discarded), stride 32, upsampling kernel 63 (Table 1).

    ``score_fr`` scores ``inception_5b`` (the paper keeps only the final loss layer); the crop offset (16) and
    the kernel are derived from the layers like every other net's (:mod:`fcnseg.models.googlenet`).
    """
    trunk = GoogLeNetTrunk(in_channels, width=width, dropout=dropout)
    return FCN(trunk, num_classes, 32, learnable_upsampling=learnable_upsampling)


def siftflow_heads(num_classes: int = 33, geo_classes: int = 3) -> dict[str, int]:
    """The SIFT Flow nets' heads: ``sem`` (33 semantic classes) and ``geo`` (sky, horizontal, vertical)."""
    return {"sem": num_classes, "geo": geo_classes}


@register
def fcn32s_siftflow(*, num_classes: int = 33, geo_classes: int = 3, in_channels: int = 3,
                    learnable_upsampling: bool = False, width: float = 1.0, dropout: float = 0.5) -> FCN:
    """FCN-32s VGG16 with a semantic and a geometric head (``score_fr_sem``, ``score_fr_geo``; section 5)."""
    trunk = VGG16Trunk(in_channels, width=width, dropout=dropout)
    return FCN(trunk, siftflow_heads(num_classes, geo_classes), 32, learnable_upsampling=learnable_upsampling)


@register
def fcn16s_siftflow(*, num_classes: int = 33, geo_classes: int = 3, in_channels: int = 3,
                    learnable_upsampling: bool = False, width: float = 1.0, dropout: float = 0.5) -> FCN:
    """The reference's SIFT Flow FCN-16s (table 5): each head fuses its own pool4 scores (``score_pool4_sem``,
    ``upscore2_sem``, ``upscore16_sem``; the same with ``_geo``); returns ``{"sem": ..., "geo": ...}``."""
    trunk = VGG16Trunk(in_channels, width=width, dropout=dropout)
    return FCN(trunk, siftflow_heads(num_classes, geo_classes), 16, learnable_upsampling=learnable_upsampling)


@register
def fcn8s_siftflow(*, num_classes: int = 33, geo_classes: int = 3, in_channels: int = 3,
                   learnable_upsampling: bool = False, width: float = 1.0, dropout: float = 0.5) -> FCN:
    """SIFT Flow FCN-8s: both heads fused again with their own pool3 scores."""
    trunk = VGG16Trunk(in_channels, width=width, dropout=dropout)
    return FCN(trunk, siftflow_heads(num_classes, geo_classes), 8, learnable_upsampling=learnable_upsampling)
