"""Import weights users bring: Caffe caffemodels and torchvision's VGG16, as self-describing checkpoints.

``convert_caffemodel`` reads the reference FCN caffemodels (and Caffe's ImageNet VGG16 / CaffeNet) with
google.protobuf and a declared subset of caffe.proto (no Caffe needed); ``convert_torchvision_vgg16`` convolutionalises
``vgg16-397923af.pth``.
Both write an fcnseg checkpoint that records the input normalisation the weights expect.
"""

from __future__ import annotations

from typing import Any

from ._common import ConvertError
from .torchvision import convert_torchvision_vgg16, vgg16_trunk_state

_CAFFE = ("CaffeLayer", "read_caffe_layers", "read_caffemodel", "convert_caffemodel")


def __getattr__(name: str) -> Any:
    """The Caffe readers, imported on first use: they need protobuf (the ``convert`` extra), torchvision's don't."""
    if name in _CAFFE:
        from . import caffe

        return getattr(caffe, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "ConvertError", "CaffeLayer", "read_caffe_layers", "read_caffemodel", "convert_caffemodel",
    "convert_torchvision_vgg16", "vgg16_trunk_state",
]
