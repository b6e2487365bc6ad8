"""Multi-modal FCNs of the paper's NYUDv2 experiments (arXiv:1411.4038, section 5, Table 4).

* **Early fusion** (``fcn32s_rgbd``): one VGG16 FCN-32s whose ``conv1_1`` reads four channels, colour and
  log depth. Initialised from RGB weights, the depth filter is the mean of the colour filters
  (:func:`~fcnseg.models.vgg.widen_input_filters`, the reference's ``nyud-fcn32s-color-d``).
* **Late fusion** (``fcn32s_rgb_hha``, ``fcn16s_rgb_hha``): two whole FCNs, one on colour (channels 0-2) and
  one on HHA (channels 3-5), their class scores averaged (:class:`LateFusion`, the reference's
  ``nyud-fcn32s-color-hha``: ``score_fused = 0.5 score_frcolor + 0.5 score_frhha``, then one upsampling).
  Upsampling and cropping are linear and frozen, so averaging the two nets' upsampled logits is the same as
  the reference's averaging before upsampling. The paper trains it from the separately trained RGB and HHA
  nets: ``--init-from color=runs/nyud_rgb/best.pt,hha=runs/nyud_hha/best.pt``.

The ``*_efficientnet_lite0`` variants put the same fusions over EfficientNet-Lite0 (ImageNet weights with
``pretrained=True``), small enough to train on a CPU.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from . import fcn16s, fcn32s, register
from .fcn import FCN
from .vgg import widen_input_filters

__all__ = ["LateFusion", "fcn32s_rgbd", "fcn32s_rgb_hha", "fcn16s_rgb_hha", "fcn8s_rgbd_efficientnet_lite0",
           "fcn8s_rgb_hha_efficientnet_lite0"]


class LateFusion(nn.Module):
    """Several nets, each on its own channels of one input; returns the mean of their logits (N, K, H, W).

    Args:
        branches: ``{name: (net, channels)}`` in input channel order; each net maps (N, channels, H, W) to
            logits (N, K, H, W) at input size. The nets are submodules under their names (``color.*``,
            ``hha.*``), so trained single-stream weights map onto them by prefix.
    """

    def __init__(self, branches: Mapping[str, tuple[nn.Module, int]]):
        super().__init__()
        if len(branches) < 2:
            raise ConfigError("late fusion needs at least two branches", fix="choose a single-stream {model}")
        self.groups: list[tuple[str, int, int]] = []  # (name, first channel, last channel + 1)
        start = 0
        for name, (net, channels) in branches.items():
            self.add_module(name, net)
            self.groups.append((name, start, start + channels))
            start += channels
        self.in_channels = start

    @property
    def encoder(self) -> nn.ModuleList:
        """The branches' encoders together (``--freeze-encoder`` freezes them all)."""
        return nn.ModuleList(getattr(self, name).encoder for name, _, _ in self.groups)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[1] != self.in_channels:
            raise ConfigError(f"late fusion of {', '.join(n for n, _, _ in self.groups)} takes {self.in_channels} "
                              f"channels, got {x.shape[1]}",
                              fix="choose the input modality ({dataset_args} modality) that the {model} takes")
        logits = [getattr(self, name)(x[:, a:b]) for name, a, b in self.groups]  # each (N, K, H, W)
        return torch.stack(logits).mean(0)

    def init_from(self, state_dict: Mapping[str, Tensor]) -> tuple[list[str], list[str]]:
        """Initialise each branch by its name prefix, with that branch's ``init_from`` (copy by name and shape).

        Keys ``color.<name>`` go to the ``color`` branch, and so on: a trained late-fusion net (FCN-32s RGB-HHA
        for FCN-16s RGB-HHA), or single-stream nets merged under prefixes (``--init-from
        color=rgb.pt,hha=hha.pt``). A state dict without any branch prefix (one single-stream net, e.g. VGG16
        weights) initialises every branch. Returns (copied names, names left as initialised).
        """
        names = [n for n, _, _ in self.groups]
        prefixed = any(k.split(".", 1)[0] in names for k in state_dict)
        copied: list[str] = []
        kept: list[str] = []
        for name in names:
            sub = {k[len(name) + 1:]: v for k, v in state_dict.items() if k.startswith(name + ".")} \
                if prefixed else dict(state_dict)
            c, k = getattr(self, name).init_from(sub)
            copied += [f"{name}.{n}" for n in c]
            kept += [f"{name}.{n}" for n in k]
        return copied, kept


@register
def fcn32s_rgbd(*, num_classes: int = 40, learnable_upsampling: bool = False, width: float = 1.0,
                dropout: float = 0.5) -> FCN:
    """FCN-32s on RGB-D, early fusion (Table 4): VGG16 with a 4-channel conv1_1 (colour + log depth)."""
    return fcn32s(num_classes=num_classes, in_channels=4, learnable_upsampling=learnable_upsampling, width=width,
                  dropout=dropout)


def _vgg_late_fusion(stride: int, *, num_classes: int, learnable_upsampling: bool, width: float,
                     dropout: float) -> LateFusion:
    factory = {32: fcn32s, 16: fcn16s}[stride]
    kw = dict(num_classes=num_classes, learnable_upsampling=learnable_upsampling, width=width, dropout=dropout)
    return LateFusion({"color": (factory(**kw), 3), "hha": (factory(**kw), 3)})


@register
def fcn32s_rgb_hha(*, num_classes: int = 40, learnable_upsampling: bool = False, width: float = 1.0,
                   dropout: float = 0.5) -> LateFusion:
    """FCN-32s RGB-HHA, late fusion (Table 4): VGG16 FCN-32s on colour and on HHA, scores averaged; 6 channels."""
    return _vgg_late_fusion(32, num_classes=num_classes, learnable_upsampling=learnable_upsampling, width=width,
                            dropout=dropout)


@register
def fcn16s_rgb_hha(*, num_classes: int = 40, learnable_upsampling: bool = False, width: float = 1.0,
                   dropout: float = 0.5) -> LateFusion:
    """FCN-16s RGB-HHA, late fusion (Table 4): two VGG16 FCN-16s (colour, HHA), scores averaged; 6 channels."""
    return _vgg_late_fusion(16, num_classes=num_classes, learnable_upsampling=learnable_upsampling, width=width,
                            dropout=dropout)


@register
def fcn8s_rgbd_efficientnet_lite0(*, num_classes: int = 40, learnable_upsampling: bool = False,
                                  pretrained: bool = False) -> FCN:
    """FCN-8s on RGB-D over EfficientNet-Lite0, early fusion: 4-channel stem, depth filter = mean of RGB's."""
    from .backbones import fcn8s_efficientnet_lite0

    model = fcn8s_efficientnet_lite0(num_classes=num_classes, in_channels=4,
                                     learnable_upsampling=learnable_upsampling, pretrained=pretrained)
    if pretrained:  # the packaged weights start the extra channel at zero; the paper's way is the mean
        stem = model.encoder.body.conv_stem
        with torch.no_grad():
            stem.weight.copy_(widen_input_filters(stem.weight[:, :3], 4))
    return model


@register
def fcn8s_rgb_hha_efficientnet_lite0(*, num_classes: int = 40, learnable_upsampling: bool = False,
                                     pretrained: bool = False) -> LateFusion:
    """FCN-8s RGB-HHA over EfficientNet-Lite0, late fusion: one net on colour, one on HHA, scores averaged."""
    from .backbones import fcn8s_efficientnet_lite0

    kw = dict(num_classes=num_classes, learnable_upsampling=learnable_upsampling, pretrained=pretrained)
    return LateFusion({"color": (fcn8s_efficientnet_lite0(**kw), 3), "hha": (fcn8s_efficientnet_lite0(**kw), 3)})
