"""Crop offsets derived from layer arithmetic (arXiv:1411.4038, section 4.1 / the reference's ``coord_map``).

Every spatial layer maps coordinates affinely: a position ``x`` in a layer's input corresponds to the position
``a * x + b`` in its output. Convolutions and poolings with kernel ``k``, stride ``s``, padding ``p`` give
``a = 1/s``, ``b = (p - (k - 1) / 2) / s``; transposed convolutions give ``a = s``, ``b = (k - 1) / 2 - p``.
Composing the maps along two paths from the input tells how far one feature map must be cropped to align
with another. Nothing here is tabulated per network or per input size.

Containers compose too: an ``nn.Sequential`` is its children in order, and a block of parallel branches whose
outputs are concatenated (GoogLeNet's inception modules) declares them with a ``branches()`` method; every
branch must map coordinates the same way, and that map is the block's. :func:`receptive_field` composes the
same layers for the paper's Table 1 columns "rf size" and "max stride".
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction

from torch import nn

from ..errors import ConfigError

_GEOMETRY_FIX = "choose another {model}: its encoder's feature maps do not align with the input"

__all__ = ["CoordMap", "coord_map", "crop_offset", "layer_map", "ReceptiveField", "receptive_field"]


@dataclass(frozen=True)
class CoordMap:
    """Affine map ``out = scale * in + shift`` between two layers' pixel coordinates, exact in rationals."""

    scale: Fraction = Fraction(1)
    shift: Fraction = Fraction(0)

    def then(self, other: CoordMap) -> CoordMap:
        """The map that applies ``self`` first and ``other`` after it."""
        return CoordMap(self.scale * other.scale, other.scale * self.shift + other.shift)

    def inverse(self) -> CoordMap:
        return CoordMap(1 / self.scale, -self.shift / self.scale)


def _pair_first(v: int | tuple[int, ...]) -> int:
    # Square kernels only: the FCN nets are isotropic; reject anything else explicitly below.
    return v if isinstance(v, int) else v[0]


def _branches(layer: nn.Module) -> list[list[nn.Module]] | None:
    """The parallel branches of a block that declares them (``branches()``), each its layers in order."""
    branches = getattr(layer, "branches", None)
    return [list(b) for b in branches()] if callable(branches) else None


def layer_map(layer: nn.Module) -> CoordMap:
    """Coordinate map of one layer; pointwise layers (ReLU, dropout, LRN, 1x1 with no padding) are identity.

    An ``nn.Sequential`` maps as its children composed; a block with ``branches()`` as its branches, which must
    agree (raises :class:`~fcnseg.errors.ConfigError` where they do not: their outputs could not be concatenated).
    """
    if isinstance(layer, nn.Sequential):
        return coord_map(layer)
    branches = _branches(layer)
    if branches is not None:
        maps = [coord_map(b) for b in branches]
        if any(m != maps[0] for m in maps):
            raise ConfigError(f"the branches of {type(layer).__name__} map coordinates differently ({maps}): their "
                              "outputs do not align position by position", fix=_GEOMETRY_FIX)
        return maps[0]
    if isinstance(layer, nn.ConvTranspose2d) or getattr(layer, "is_transposed", False):
        k, s, p = (_pair_first(layer.kernel_size), _pair_first(layer.stride), _pair_first(layer.padding))
        return CoordMap(Fraction(s), Fraction(k - 1, 2) - p)
    if isinstance(layer, nn.Conv2d | nn.MaxPool2d | nn.AvgPool2d):
        k, s, p = (_pair_first(layer.kernel_size), _pair_first(layer.stride), _pair_first(layer.padding))
        d = _pair_first(getattr(layer, "dilation", 1))
        k_eff = d * (k - 1) + 1
        return CoordMap(Fraction(1, s), (Fraction(p) - Fraction(k_eff - 1, 2)) / s)
    return CoordMap()


def coord_map(layers: Iterable[nn.Module]) -> CoordMap:
    """Compose the maps of ``layers`` applied in order (input coordinates -> output coordinates)."""
    m = CoordMap()
    for layer in layers:
        m = m.then(layer_map(layer))
    return m




def crop_offset(source: CoordMap, reference: CoordMap) -> int:
    """Offset at which to crop the map reached by ``source`` so that it aligns with the one reached by ``reference``.

    Both maps start at the same ancestor (usually the network input). Like the reference's ``crop()``, this
    requires the two to share a scale and to differ by a whole, non-negative number of pixels.
    """
    rel = source.inverse().then(reference)  # source coords -> reference coords
    if rel.scale != 1:
        raise ConfigError(f"cannot crop: maps have different scales ({source.scale} vs {reference.scale})",
                          fix=_GEOMETRY_FIX)
    offset = -rel.shift
    if offset.denominator != 1 or offset < 0:
        raise ConfigError(f"cannot crop: alignment offset {offset} is not a non-negative whole number of pixels",
                          fix=_GEOMETRY_FIX)
    return int(offset)


@dataclass(frozen=True)
class ReceptiveField:
    """What a path of layers sees of its input: the paper's Table 1 columns for a net (arXiv:1411.4038, 3.1).

    Attributes:
        size: receptive field, in input pixels, of one output position ("rf size").
        stride: input pixels between neighbouring output positions ("max stride").
        conv_layers: convolutions along the path (Table 1's "conv. layers" when the path ends at the score layer).
    """

    size: int = 1
    stride: int = 1
    conv_layers: int = 0


def receptive_field(layers: Iterable[nn.Module]) -> ReceptiveField:
    """Receptive field of ``layers`` applied in order, from their kernels, strides and dilations.

    Each convolution or pooling with kernel ``k``, dilation ``d`` and stride ``s`` grows the field by
    ``(d * (k - 1)) * jump`` and multiplies ``jump`` (the stride so far) by ``s``; padding moves the field, not its
    size, and pointwise layers leave it alone. A block of parallel branches (``branches()``, as GoogLeNet's
    inception modules) contributes its largest branch: its 5x5 path, whose field covers the others'; the
    branches must share a stride. ``nn.Sequential`` containers are walked through. Upsampling layers have no
    field in this sense: raises :class:`~fcnseg.errors.ConfigError` for them.
    """
    rf = ReceptiveField()
    for layer in layers:
        rf = _grow(rf, layer)
    return rf


def _grow(rf: ReceptiveField, layer: nn.Module) -> ReceptiveField:
    if isinstance(layer, nn.Sequential):
        for child in layer:
            rf = _grow(rf, child)
        return rf
    branches = _branches(layer)
    if branches is not None:
        ends = []
        for branch in branches:
            end = rf
            for child in branch:
                end = _grow(end, child)
            ends.append(end)
        if len({e.stride for e in ends}) != 1:
            raise ConfigError(f"the branches of {type(layer).__name__} have different strides "
                              f"({[e.stride for e in ends]})", fix=_GEOMETRY_FIX)
        return ReceptiveField(max(e.size for e in ends), ends[0].stride, max(e.conv_layers for e in ends))
    if isinstance(layer, nn.ConvTranspose2d) or getattr(layer, "is_transposed", False):
        raise ConfigError(f"{type(layer).__name__} upsamples: a receptive field is defined for the downsampling "
                          "trunk only", fix="pass the encoder's layers, up to the score layer")
    if isinstance(layer, nn.Conv2d | nn.MaxPool2d | nn.AvgPool2d):
        k, s = _pair_first(layer.kernel_size), _pair_first(layer.stride)
        d = _pair_first(getattr(layer, "dilation", 1))
        return ReceptiveField(rf.size + d * (k - 1) * rf.stride, rf.stride * s,
                              rf.conv_layers + isinstance(layer, nn.Conv2d))
    return rf
