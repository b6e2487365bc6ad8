"""The paper's trunks: VGG16 and CaffeNet-style AlexNet, convolutionalised (arXiv:1411.4038, section 3.1).

Layer names follow the reference Caffe nets (``conv1_1`` ... ``conv5_3``, ``fc6``, ``fc7``; AlexNet ``conv1`` ...
``fc7``) so that reference weights map key by key. As in the reference:

* ``conv1_1`` (``conv1``) is padded by 100 pixels so that the coarse output covers every input size;
* max pooling rounds up (Caffe's ceil mode);
* ``fc6`` is a 7x7 (AlexNet: 6x6) convolution with 4096 outputs and ``fc7`` a 1x1 one, each followed by ReLU
  and dropout 0.5.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..errors import ConfigError, ConvertError
from .geometry import CoordMap, coord_map

__all__ = ["VGG16Trunk", "AlexNetTrunk", "convolutionalize_vgg16", "widen_input_filters", "TORCHVISION_VGG16_CONVS"]

# (stage, number of 3x3 convolutions, channels) of VGG16 (Simonyan & Zisserman, configuration D).
_VGG16_STAGES = ((1, 2, 64), (2, 2, 128), (3, 3, 256), (4, 3, 512), (5, 3, 512))

# torchvision's ``vgg16().features`` indices of the 13 convolutions, in order.
TORCHVISION_VGG16_CONVS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)


def _ch(c: int, width: float) -> int:
    return max(1, round(c * width))


class _Trunk(nn.Module):
    """A chain of named layers; every convolution is followed by ReLU.

    ``outputs`` maps a feature's name to the layer whose activation it is; ``forward`` returns those
    activations, ``out_channels`` and ``coord_maps`` describe them. The coordinate maps are composed from
    the layers themselves (see ``geometry``), so nothing about the alignment is written down twice.
    """

    outputs: dict[str, str]

    def __init__(self) -> None:
        super().__init__()
        self.layer_names: list[str] = []

    def _add(self, name: str, layer: nn.Module) -> None:
        self.add_module(name, layer)
        self.layer_names.append(name)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        wanted = {layer: feat for feat, layer in self.outputs.items()}
        feats: dict[str, Tensor] = {}
        for name in self.layer_names:
            layer = getattr(self, name)
            x = layer(x)
            if isinstance(layer, nn.Conv2d):
                x = F.relu(x, inplace=True)
            if name in wanted:
                feats[wanted[name]] = x
        return feats

    def path(self, feature: str) -> list[nn.Module]:
        """The layers from the input to output ``feature``, in order (what its coordinate map composes)."""
        return [getattr(self, n) for n in self.layer_names[: self.layer_names.index(self.outputs[feature]) + 1]]

    def coord_maps(self) -> dict[str, CoordMap]:
        """Map from input pixel coordinates to each output feature's coordinates."""
        return {feat: coord_map(self.path(feat)) for feat in self.outputs}

    @property
    def out_channels(self) -> dict[str, int]:
        return {feat: [m for m in self.path(feat) if isinstance(m, nn.Conv2d)][-1].out_channels
                for feat in self.outputs}


class VGG16Trunk(_Trunk):
    """VGG16 with fc6/fc7 as convolutions; returns ``pool3``, ``pool4`` and ``fc7`` (after dropout).

    Args:
        in_channels: image channels (3 for RGB; 4 for RGB-D, ...).
        pad: padding of ``conv1_1``; 100 in the paper, 1 (VGG's own) to reproduce the classifier at 224x224.
        width: channel multiplier; 1.0 is the paper's network, smaller values make tiny test models.
        dropout: dropout after fc6 and fc7 (0.5 in the paper).
    """

    # score_fr reads drop7's output in the reference nets.
    outputs = {"pool3": "pool3", "pool4": "pool4", "fc7": "drop7"}

    def __init__(self, in_channels: int = 3, *, pad: int = 100, width: float = 1.0, dropout: float = 0.5):
        super().__init__()
        c_in = in_channels
        for stage, n_convs, c in _VGG16_STAGES:
            c = _ch(c, width)
            for i in range(1, n_convs + 1):
                p = pad if (stage, i) == (1, 1) else 1
                self._add(f"conv{stage}_{i}", nn.Conv2d(c_in, c, 3, padding=p))
                c_in = c
            self._add(f"pool{stage}", nn.MaxPool2d(2, 2, ceil_mode=True))
        fc = _ch(4096, width)
        self._add("fc6", nn.Conv2d(c_in, fc, 7))
        self._add("drop6", nn.Dropout(dropout))
        self._add("fc7", nn.Conv2d(fc, fc, 1))
        self._add("drop7", nn.Dropout(dropout))


class AlexNetTrunk(_Trunk):
    """CaffeNet-style AlexNet, convolutionalised, as in the reference FCN-AlexNet; returns ``fc7``.

    96 11x11 stride-4 ``conv1`` padded by 100, LRN after pool1 and pool2, grouped ``conv2``/``conv4``/``conv5``
    (2 groups), ``fc6`` a 6x6 convolution.
    """

    outputs = {"fc7": "drop7"}

    def __init__(self, in_channels: int = 3, *, pad: int = 100, width: float = 1.0, dropout: float = 0.5):
        super().__init__()
        # Grouped layers need even channel counts.
        c1, c2, c3, c5 = (max(2, _ch(c, width) // 2 * 2) for c in (96, 256, 384, 256))
        fc = _ch(4096, width)
        self._add("conv1", nn.Conv2d(in_channels, c1, 11, stride=4, padding=pad))
        self._add("pool1", nn.MaxPool2d(3, 2, ceil_mode=True))
        self._add("norm1", nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0))
        self._add("conv2", nn.Conv2d(c1, c2, 5, padding=2, groups=2))
        self._add("pool2", nn.MaxPool2d(3, 2, ceil_mode=True))
        self._add("norm2", nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0))
        self._add("conv3", nn.Conv2d(c2, c3, 3, padding=1))
        self._add("conv4", nn.Conv2d(c3, c3, 3, padding=1, groups=2))
        self._add("conv5", nn.Conv2d(c3, c5, 3, padding=1, groups=2))
        self._add("pool5", nn.MaxPool2d(3, 2, ceil_mode=True))
        self._add("fc6", nn.Conv2d(c5, fc, 6))
        self._add("drop6", nn.Dropout(dropout))
        self._add("fc7", nn.Conv2d(fc, fc, 1))
        self._add("drop7", nn.Dropout(dropout))


def convolutionalize_vgg16(state_dict: Mapping[str, Tensor], *, keep_fc8: bool = False) -> dict[str, Tensor]:
    """Turn torchvision VGG16 classifier weights into FCN trunk weights (arXiv:1411.4038, section 3.1).

    ``state_dict`` is in torchvision's layout (``features.N.weight``, ``classifier.0/3/6.*``, as in
    ``vgg16-397923af.pth``). The fully connected ``classifier.0`` (25088 -> 4096) becomes ``fc6``, a 7x7
    convolution over 512 channels, and ``classifier.3`` (4096 -> 4096) becomes the 1x1 ``fc7``: the same
    weights reshaped, so the network computes the classifier at every 224x224 window, stride 32.
    The final classifier (``classifier.6``) is discarded, as in the paper, unless ``keep_fc8`` is set, in
    which case it is returned as a 1x1 convolution under ``fc8.*``.

    Returns: a state dict for :class:`VGG16Trunk` (keys ``conv1_1.weight`` ... ``fc7.bias``).
    """
    names = [f"conv{s}_{i}" for s, n, _ in _VGG16_STAGES for i in range(1, n + 1)]
    out: dict[str, Tensor] = {}
    for name, idx in zip(names, TORCHVISION_VGG16_CONVS, strict=True):
        for p in ("weight", "bias"):
            key = f"features.{idx}.{p}"
            if key not in state_dict:
                raise ConvertError(f"torchvision VGG16 weights lack {key!r}: is this a vgg16 state dict?",
                                   fix="convert torchvision's plain vgg16 weights (vgg16-397923af.pth)")
            out[f"{name}.{p}"] = state_dict[key]
    fcs = {"fc6": ("classifier.0", 7), "fc7": ("classifier.3", 1)}
    if keep_fc8:
        fcs["fc8"] = ("classifier.6", 1)
    c_prev = out["conv5_3.weight"].shape[0]
    for name, (src, k) in fcs.items():
        w = state_dict[f"{src}.weight"]  # (out, in) of the fully connected layer
        c_in = w.shape[1] // (k * k)
        if name == "fc6" and c_in != c_prev:
            raise ConvertError(f"{src}.weight has {w.shape[1]} inputs; expected {c_prev}*7*7",
                               fix="convert torchvision's plain vgg16 weights (vgg16-397923af.pth)")
        # torchvision flattens (C, 7, 7) row-major, the same order a 7x7 convolution's kernel uses.
        out[f"{name}.weight"] = w.reshape(w.shape[0], c_in, k, k)
        out[f"{name}.bias"] = state_dict[f"{src}.bias"]
    return out


def widen_input_filters(weight: Tensor, in_channels: int) -> Tensor:
    """First-layer filters ``(O, 3, k, k)`` learned on RGB, widened to ``(O, in_channels, k, k)`` for extra inputs.

    The reference's RGB-D early-fusion net (``nyud-fcn32s-color-d/solve.py``, the paper's Table 4 "RGB-D")
    keeps ``conv1_1``'s colour filters and initialises the depth channel's filter as their mean over the three
    colour channels, so that depth starts as a grey image would; every extra channel gets that mean here.
    """
    if weight.ndim != 4 or weight.shape[1] != 3:
        raise ConvertError(f"expected RGB filters (O, 3, k, k), got {tuple(weight.shape)}",
                           fix="start from weights trained on RGB input")
    if in_channels < 3:
        raise ConfigError(f"cannot widen RGB filters to {in_channels} input channels",
                          fix="choose a {model} (or {dataset_args} modality) with 3 or more input channels")
    mean = weight.mean(dim=1, keepdim=True)  # (O, 1, k, k)
    return torch.cat([weight, mean.expand(-1, in_channels - 3, -1, -1)], dim=1)
