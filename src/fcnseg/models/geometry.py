"""Crop offsets derived from layer arithmetic (arXiv:1411.4038, section 4.1 / the reference's ``coord_map``).

Every spatial layer maps coordinates affinely: a position ``x`` in a layer's input corresponds to the position
``a * x + b`` in its output. Convolutions and poolings with kernel ``k``, stride ``s``, padding ``p`` give
``a = 1/s``, ``b = (p - (k - 1) / 2) / s``; transposed convolutions give ``a = s``, ``b = (k - 1) / 2 - p``.
Composing the maps along two paths from the input tells how far one feature map must be cropped to align
with another. Nothing here is tabulated per network or per input size.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction

from torch import nn

from ..errors import ConfigError

__all__ = ["CoordMap", "coord_map", "crop_offset"]


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


def layer_map(layer: nn.Module) -> CoordMap:
    """Coordinate map of one layer; pointwise layers (ReLU, dropout, LRN, 1x1 with no padding) are identity."""
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


_GEOMETRY_FIX = "choose another {model}: its encoder's feature maps do not align with the input"


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
