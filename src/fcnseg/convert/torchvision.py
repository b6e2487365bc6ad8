"""torchvision's ImageNet VGG16 (``vgg16-397923af.pth``) -> an fcnseg checkpoint ready for FCN training.

The classifier becomes the FCN trunk through :func:`fcnseg.models.convolutionalize_vgg16` (arXiv:1411.4038,
section 3.1: fc6 a 7x7 and fc7 a 1x1 convolution, fc8 dropped); the score layers start at zero and the
upsampling bilinear, as in the paper (sections 4.3, 3.3). torchvision's weights expect RGB in 0-1
normalised by the ImageNet mean and std, and the checkpoint says so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..models import VGG16Trunk, convolutionalize_vgg16
from ..models.vgg import TORCHVISION_VGG16_CONVS
from ..normalization import IMAGENET
from ._common import ConvertError, PathLike, build_target, write_checkpoint

__all__ = ["convert_torchvision_vgg16", "vgg16_trunk_state", "TORCHVISION_VGG16_KEYS"]

_PLAIN_VGG16 = "convert torchvision's plain VGG16 weights (vgg16-397923af.pth)"
_SAVE_STATE_DICT = "save torchvision.models.vgg16's model.state_dict() with torch.save"

# Every key of torchvision's ``vgg16().state_dict()``: 13 convolutions and 3 fully connected layers.
TORCHVISION_VGG16_KEYS = frozenset(
    f"{module}.{p}"
    for module in [*(f"features.{i}" for i in TORCHVISION_VGG16_CONVS), "classifier.0", "classifier.3",
                   "classifier.6"]
    for p in ("weight", "bias")
)


def vgg16_trunk_state(state_dict: Mapping[str, Tensor], source: str) -> dict[str, Tensor]:
    """Check ``state_dict`` is torchvision VGG16's and convolutionalise it into ``VGG16Trunk`` weights.

    ``source`` names the weights in error messages. Raises :class:`ConvertError` for anything else
    (VGG16-BN, VGG19, another network, a training checkpoint that wraps the state dict).
    """
    keys = set(state_dict)
    if any(k.endswith("running_mean") for k in keys):
        raise ConvertError(f"{source} has batch-norm statistics (vgg16_bn?); only plain torchvision vgg16 "
                           "weights convert (the paper's VGG16 has no batch norm)", fix=_PLAIN_VGG16)
    missing, extra = sorted(TORCHVISION_VGG16_KEYS - keys), sorted(keys - TORCHVISION_VGG16_KEYS)
    if missing or extra:
        found = [f"missing {_few(missing)}"] * bool(missing) + [f"unexpected {_few(extra)}"] * bool(extra)
        raise ConvertError(f"{source} is not a torchvision VGG16 state dict (vgg16-397923af.pth layout): "
                           + "; ".join(found), fix=_PLAIN_VGG16)
    try:
        return convolutionalize_vgg16(state_dict)
    except (KeyError, ValueError) as e:
        raise ConvertError(f"{source}: {e}", fix=_PLAIN_VGG16) from e


def convert_torchvision_vgg16(
    src: PathLike,
    dst: PathLike,
    *,
    model: str = "fcn32s",
    num_classes: int = 21,
    classes: Sequence[str] | None = None,
    model_args: Mapping[str, Any] | None = None,
) -> Path:
    """Write an fcnseg checkpoint at ``dst`` holding ``model`` with torchvision VGG16 weights from ``src``.

    Args:
        src: a ``torch.save``-d torchvision VGG16 state dict (``features.N.*``, ``classifier.0/3/6.*``).
        dst: the checkpoint to write (atomically).
        model: a VGG16 FCN of the registry: ``fcn32s``, ``fcn16s``, ``fcn8s`` or ``fcn8s_atonce``.
        num_classes: outputs of the score layers, which start at zero.
        classes: class names (default: VOC's for 21 classes, ``class_i`` otherwise).
        model_args: further factory arguments (``learnable_upsampling``, ``width`` ...), recorded in the file.

    Returns: ``dst`` as a Path. Raises :class:`ConvertError` (naming ``src``) when the weights do not fit.
    """
    src = Path(src)
    if not src.is_file():
        raise ConvertError(f"{src} does not exist", fix="check the path of the .pth file", path=src)
    try:
        # A state dict holds only tensors; weights_only refuses arbitrary pickled code.
        state = torch.load(src, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means the same to the user
        raise ConvertError(f"{src} could not be read as a torch state dict ({type(e).__name__}: {e})",
                           fix=_SAVE_STATE_DICT, path=src) from e
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ConvertError(f"{src} does not hold a state dict (a mapping of names to tensors)",
                           fix=_SAVE_STATE_DICT, path=src)
    trunk = vgg16_trunk_state(state, str(src))
    net, args = build_target(model, num_classes, model_args)
    if not isinstance(net.encoder, VGG16Trunk):
        raise ConvertError(f"model {model!r} has no VGG16 trunk; VGG16 weights ({src}) cannot initialise it",
                           fix="set {model} to fcn32s, fcn16s, fcn8s or fcn8s_atonce", path=src)
    try:
        net.encoder.load_state_dict(trunk)
    except RuntimeError as e:  # shape mismatches, e.g. a model built with another width
        raise ConvertError(f"{src} does not fit {model}'s trunk: {e}", path=src,
                           fix="build the model at the weights' size: no width in {model_args}") from e
    return write_checkpoint(dst, net, model, args, classes, IMAGENET, src, "torchvision-vgg16")


def _few(names: list[str], n: int = 4) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")
