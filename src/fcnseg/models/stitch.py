"""Shift-and-stitch and filter rarefaction: denser output from a coarse net (arXiv:1411.4038, section 3.2).

A net of output stride ``S`` scores one cell per ``S x S`` pixels. Section 3.2 gives two ways to score ``F``
times more densely with the same weights:

* **shift-and-stitch** (:class:`ShiftAndStitch`): run the net on the ``F x F`` shifted copies of its input and
  interlace the ``F^2`` coarse outputs into one map of stride ``S / F``;
* **filter rarefaction** (:func:`rarefy`): set the stride of the layers that subsample by ``F`` to 1 and
  dilate every later filter by the stride removed before it (``f'_ij = f_{i/s, j/s}`` when ``s`` divides ``i``
  and ``j``, else 0), so the one pass computes the dense map directly.

The paper says the two are the same computation. They are, exactly, when the shift is applied where the
stride is removed: :class:`ShiftAndStitch` shifts the (padded) *input of each subsampling layer* it removes
the stride of, by ``t`` in ``[0, s)`` of that layer's input cells, rather than the image, so the zero padding
of the earlier layers sees the same pixels as in the rarefied net; the tests check the equality at float
tolerance, borders and odd sizes included. (Shifting the image itself, the literal reading, differs from the
rarefied net near the borders, where earlier layers pad.) The stitched scores are then upsampled to the input
by a frozen bilinear kernel of factor ``S / F`` aligned by the same geometry code as :class:`~.fcn.FCN`'s own
(``F = S``: no upsampling, only the crop), so a learned final upsampling is not reused.

The cost is ``F^2`` passes (the paper's reason to prefer skip fusion); the layers before the first shifted
one are recomputed for each copy, which keeps the implementation one forward per copy.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..errors import ConfigError
from .fcn import FCN
from .geometry import CoordMap

__all__ = ["ShiftAndStitch", "DenseUpsample", "rarefy", "subsampling_stages", "Stage"]

_FIX = "set {shift_and_stitch} to 1 or to a product of the net's last subsampling strides (2, 4, ... up to its stride)"


@dataclass(frozen=True)
class Stage:
    """The layers of one subsampling step of an encoder: every strided layer reading the same input (a ResNet
    block's strided conv and its shortcut), their common ``stride``, and ``input_stride``, the stride of that
    input relative to the image."""

    layers: tuple[nn.Module, ...]
    stride: int
    input_stride: int


def subsampling_stages(encoder: nn.Module, in_channels: int = 3, probe: int = 64) -> list[Stage]:
    """The encoder's subsampling steps in execution order, found by one forward pass on a zero ``probe`` x
    ``probe`` image (eval mode, no gradients): each strided convolution or pooling, grouped by the input it
    reads."""
    calls: list[tuple[nn.Module, tuple[int, ...], tuple[int, ...]]] = []  # (layer, input size, output size)

    def record(m: nn.Module, args: tuple[Tensor, ...], out: Tensor) -> None:
        if args and isinstance(args[0], Tensor) and args[0].ndim == 4:
            calls.append((m, tuple(args[0].shape[2:]), tuple(out.shape[2:])))

    strided = [m for m in encoder.modules() if isinstance(m, nn.Conv2d | nn.MaxPool2d | nn.AvgPool2d)
               and _square(m, "stride") > 1]
    handles = [m.register_forward_hook(record) for m in strided]
    p = next(encoder.parameters(), torch.zeros(()))
    was_training = encoder.training
    try:
        encoder.eval()
        with torch.no_grad():
            encoder(torch.zeros(1, in_channels, probe, probe, device=p.device, dtype=p.dtype))
    finally:
        encoder.train(was_training)
        for h in handles:
            h.remove()
    # A call joins the step before it when it reads an input of that step's input size that is not the step's
    # output (a ResNet shortcut beside its block's strided conv); else it starts a step (AlexNet's pool1 reads
    # conv1's output, of conv1's input size when conv1 pads by 100).
    groups: list[tuple[list[nn.Module], tuple[int, ...], tuple[int, ...]]] = []
    for m, size_in, size_out in calls:
        if groups and size_in == groups[-1][1] and size_in != groups[-1][2]:
            groups[-1][0].append(m)
        else:
            groups.append(([m], size_in, size_out))
    stages: list[Stage] = []
    total = 1
    for layers, _, _ in groups:
        strides = {_square(m, "stride") for m in layers}
        if len(strides) != 1:
            raise ConfigError(f"layers reading the same input subsample by different strides {sorted(strides)}",
                              fix=_FIX)
        s = strides.pop()
        stages.append(Stage(tuple(layers), s, total))
        total *= s
    return stages


def _square(m: nn.Module, attr: str) -> int:
    v = getattr(m, attr)
    v = v if isinstance(v, tuple) else (v, v)
    if isinstance(v[0], str) or v[0] != v[1]:
        raise ConfigError(f"{type(m).__name__} has non-square {attr} {v}", fix=_FIX)
    return int(v[0])


def _stages_for(model: FCN, factor: int) -> list[Stage]:
    """The stages whose strides make the last factor ``factor`` of the coarse stride ``model.fcn_stride``."""
    if not isinstance(model, FCN):
        raise ConfigError(f"shift-and-stitch takes an FCN (score layers over one encoder), not "
                          f"{type(model).__name__}", fix="set {shift_and_stitch} to 1 for this model")
    stride = model.fcn_stride
    if factor < 1 or stride % factor:
        raise ConfigError(f"shift-and-stitch factor {factor} does not divide the net's output stride {stride}",
                          fix=_FIX)
    stages = subsampling_stages(model.encoder, _input_channels(model.encoder))
    chosen = [st for st in stages if st.input_stride * st.stride <= stride and st.input_stride >= stride // factor]
    if math.prod(st.stride for st in chosen) != factor:
        strides = [st.stride for st in stages]
        raise ConfigError(f"shift-and-stitch factor {factor} is not a product of whole subsampling steps of "
                          f"the net (strides {strides} in order, output stride {stride})", fix=_FIX)
    return chosen


def _input_channels(encoder: nn.Module) -> int:
    first = next((m for m in encoder.modules() if isinstance(m, nn.Conv2d)), None)
    return first.in_channels if first is not None else 3


class DenseUpsample(nn.Module):
    """Bilinear interpolation of scores of stride ``S / F`` to the input's pixels, placed by their coordinate
    map ``stitched`` (input pixel ``u`` reads the scores at ``stitched.scale * u + stitched.shift``), with the
    border cells repeated beyond the map.

    The net's own transposed-convolution upsampling of factor ``S`` reaches ``S - 1/2`` pixels past the
    outer cells; one of factor ``S / F`` reaches ``F`` times less, which for VGG16 (whose first cell lies 12.5
    pixels inside the image) leaves a border uncovered at ``F >= 4``: sampling at the map's coordinates
    instead covers every pixel and equals the linear interpolation the frozen kernel computes inside.
    """

    def __init__(self, stitched: CoordMap):
        super().__init__()
        self.scale, self.shift = float(stitched.scale), float(stitched.shift)

    def forward(self, scores: Tensor, size: tuple[int, int]) -> Tensor:
        n, k, h, w = scores.shape

        def grid(out: int, cells: int) -> Tensor:  # normalised sampling positions for align_corners=True
            pos = torch.arange(out, device=scores.device, dtype=torch.float32) * self.scale + self.shift
            return pos * (2 / (cells - 1)) - 1 if cells > 1 else torch.zeros_like(pos)

        gy, gx = grid(size[0], h), grid(size[1], w)
        g = torch.stack(torch.broadcast_tensors(gx[None, :], gy[:, None]), dim=-1)  # (H, W, 2): x, y
        out = F.grid_sample(scores.float(), g.expand(n, *g.shape), mode="bilinear", padding_mode="border",
                            align_corners=True)
        return out.to(scores.dtype)  # (N, K, H, W)


def _stitched_map(model: FCN, factor: int) -> CoordMap:
    m = model.coarse_map
    return CoordMap(m.scale * factor, m.shift * factor)  # stride S / F; cell 0 is the coarse cell 0


class _Shift:
    """Forward pre-hook of a subsampling layer whose padding was set to 0: pad its input as the layer padded it
    (zeros, or -inf for a max pooling), then drop the first ``layer.fcnseg_shift`` = (ty, tx) rows and columns."""

    def __init__(self, pad: int, is_max: bool):
        self.pad, self.value = pad, float("-inf") if is_max else 0.0

    def __call__(self, m: nn.Module, args: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        ty, tx = getattr(m, "fcnseg_shift", (0, 0))
        x = args[0]
        if self.pad:
            x = F.pad(x, (self.pad,) * 4, value=self.value)
        return (x[..., ty:, tx:], *args[1:])


class ShiftAndStitch(nn.Module):
    """``model`` made ``factor`` times denser by shift-and-stitch (section 3.2); same output as the model:
    logits (N, K, H, W) at input size, or a dict of them for a multi-task net.

    Args:
        model: an :class:`~fcnseg.models.fcn.FCN` (any stride, skips and heads included); it is copied, so the
            caller's model is unchanged.
        factor: ``F``, a product of the net's last subsampling strides within its output stride (2, 4, ...);
            1 is refused here: plain inference needs no wrapper.

    For each of the ``F^2`` shifts, the input of every subsampling layer that makes the last ``F`` of the
    stride is padded as the layer pads and shifted by ``t < s`` of its cells (the layer's own padding is set to
    0 in the copy); the coarse scores of the copies are interlaced and upsampled by ``S / F``.
    Raises :class:`~fcnseg.errors.ConfigError` (naming ``shift_and_stitch``) for a factor that does not split
    the net at a layer, or a model that is not an FCN.
    """

    def __init__(self, model: FCN, factor: int):
        super().__init__()
        if factor == 1:
            raise ConfigError("shift-and-stitch factor 1 is plain inference",
                              fix="run the model itself ({shift_and_stitch} 1)")
        self.factor = factor
        stages = _stages_for(model, factor)
        self.model = copy.deepcopy(model)
        by_id = dict(zip(map(id, model.modules()), self.model.modules(), strict=True))
        self.stages = [Stage(tuple(by_id[id(m)] for m in st.layers), st.stride, st.input_stride) for st in stages]
        # weight of each stage's shift in stitched cells: t cells of its input = t * input_stride image pixels
        self.weights = [st.input_stride * factor // model.fcn_stride for st in stages]
        for st in self.stages:
            for layer in st.layers:
                pad = _square(layer, "padding")
                if isinstance(layer, nn.Conv2d) and layer.padding_mode != "zeros":
                    raise ConfigError(f"shift-and-stitch needs zero-padded convolutions, not "
                                      f"{layer.padding_mode!r}", fix=_FIX)
                if isinstance(layer, nn.AvgPool2d) and pad:
                    raise ConfigError("shift-and-stitch cannot shift a padded average pooling", fix=_FIX)
                if isinstance(layer, nn.MaxPool2d | nn.AvgPool2d) and pad and layer.ceil_mode:
                    # moving the padding out of the layer would change PyTorch's rule for its last window
                    raise ConfigError("shift-and-stitch cannot shift a padded ceil-mode pooling", fix=_FIX)
                layer.padding = 0 if isinstance(layer, nn.MaxPool2d | nn.AvgPool2d) else (0, 0)
                layer.register_forward_pre_hook(_Shift(pad, isinstance(layer, nn.MaxPool2d)))
        self.upsample = DenseUpsample(_stitched_map(model, factor))

    def stitched_scores(self, x: Tensor) -> dict[str, Tensor]:
        """The interlaced coarse scores by task ("" for a single head): (N, K, ~H F / S, ~W F / S)."""
        shifts = list(itertools.product(*(range(st.stride) for st in self.stages)))
        copies: dict[tuple[tuple[int, ...], tuple[int, ...]], dict[str, Tensor]] = {}
        tasks = list(self.model.heads or [""])
        for sy in shifts:
            for sx in shifts:
                with self._shifted(sy, sx):
                    feats = self.model.encoder(x)
                    copies[sy, sx] = {t: self.model.coarse_scores(feats, f"_{t}" if t else "") for t in tasks}
        f = self.factor

        def offset(s: tuple[int, ...]) -> int:
            return sum(t * w for t, w in zip(s, self.weights, strict=True))

        out = {}
        for t in tasks:
            # The cells every copy reaches: all of them where the net's crops keep each copy's full map (FCN-32s:
            # section 3.2's exact equality); a skip net crops a copy's fused map to its coarsest path, so the far
            # border cells of some copies are missing and the stitched map stops before them.
            h = min(offset(sy) + f * c[t].shape[2] for (sy, _), c in copies.items())
            w = min(offset(sx) + f * c[t].shape[3] for (_, sx), c in copies.items())
            ref = copies[shifts[0], shifts[0]][t]
            dense = ref.new_zeros(ref.shape[0], ref.shape[1], h, w)
            for (sy, sx), c in copies.items():
                oy, ox = offset(sy), offset(sx)
                n, m = -(-(h - oy) // f), -(-(w - ox) // f)  # this copy's cells below h, w
                dense[:, :, oy:h:f, ox:w:f] = c[t][:, :, :n, :m]
            out[t] = dense  # every cell written once: the offsets are distinct in [0, F) (mixed radix)
        return out

    @contextmanager
    def _shifted(self, sy: tuple[int, ...], sx: tuple[int, ...]) -> Iterator[None]:
        # The shift lives on the hooked layers themselves, so a copy of this module shifts its own layers.
        for st, ty, tx in zip(self.stages, sy, sx, strict=True):
            for layer in st.layers:
                layer.fcnseg_shift = (ty, tx)
        try:
            yield
        finally:
            for st in self.stages:
                for layer in st.layers:
                    layer.fcnseg_shift = (0, 0)

    def forward(self, x: Tensor) -> Tensor | dict[str, Tensor]:
        out = {t: self.upsample(s, x.shape[2:]) for t, s in self.stitched_scores(x).items()}  # (N, K, H, W)
        return out[""] if self.model.heads is None else out


class _DenseMaxPool(nn.Module):
    """A max pooling with its stride removed and its window dilated by ``rate``.

    A strided ceil-mode pooling (Caffe's) also scores the windows that start in its input and run past its end,
    up to ``min(s - 1, d (k - 1))`` input cells past the last full window (PyTorch's rule: a window starts
    inside the input); the dense layer keeps exactly those by padding its far side with -inf by that many
    cells, ``rate`` pixels each.
    """

    def __init__(self, pool: nn.MaxPool2d, rate: int, strided: bool):
        super().__init__()
        k, s, p, d = (_square(pool, a) for a in ("kernel_size", "stride", "padding", "dilation"))
        if p and pool.ceil_mode and s > 1:  # at stride 1 ceil mode adds no window
            raise ConfigError("cannot rarefy a padded, strided ceil-mode max pooling", fix=_FIX)
        self.kernel, self.dilation, self.padding = k, d * rate, p * rate
        self.extra = rate * min(s - 1, d * (k - 1)) if pool.ceil_mode and strided else 0

    def forward(self, x: Tensor) -> Tensor:
        p, q = self.padding, self.padding + self.extra  # explicit: PyTorch caps a pooling's padding at k / 2
        if p or q:
            x = F.pad(x, (p, q, p, q), value=float("-inf"))
        return F.max_pool2d(x, self.kernel, 1, 0, self.dilation)


def rarefy(model: FCN, factor: int) -> nn.Module:
    """A copy of ``model`` (an FCN-32s-style net: no skips) that scores ``factor`` times more densely in one
    pass: the last subsampling layers' strides set to 1 and every later filter dilated by the stride removed
    before it (section 3.2's filter rarefaction), then the frozen bilinear upsampling by ``S / F``.

    Equals :class:`ShiftAndStitch` of the same model to float tolerance. Convolutions, max poolings and 1x1
    or stride-1 average poolings are rarefied; other layers that change the size are refused.
    """
    if not isinstance(model, FCN) or model.fcn_stride != 32 or model.heads is not None:
        raise ConfigError("rarefy takes a single-head net without skips (FCN-32s)",
                          fix="rarefy the FCN-32s of the encoder, or use ShiftAndStitch")
    stages = _stages_for(model, factor)
    net = copy.deepcopy(model)
    by_id = dict(zip(map(id, model.modules()), net.modules(), strict=True))
    stage_of = {id(by_id[id(m)]): k for k, st in enumerate(stages) for m in st.layers}
    order: list[nn.Module] = []  # the encoder's leaves in execution order
    hooks = [m.register_forward_pre_hook(lambda m, a: order.append(m)) for m in net.encoder.modules()
             if not any(True for _ in m.children())]
    p = next(net.parameters())
    try:
        net.eval()
        with torch.no_grad():
            net.encoder(torch.zeros(1, _input_channels(net.encoder), 64, 64, device=p.device, dtype=p.dtype))
    finally:
        for h in hooks:
            h.remove()
    net.train(model.training)
    parents = {id(child): (parent, name) for parent in net.modules() for name, child in parent.named_children()}
    started: list[int] = []  # the stages whose strides are removed, in the order their layers ran
    seen: set[int] = set()
    for layer in order:
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        k = stage_of.get(id(layer))
        if k is not None:  # a layer of a removed stride: dilated by the strides removed before its stage
            rate = math.prod(st.stride for st in stages[:k])
            if k not in started:
                started.append(k)
        else:  # a later layer: dilated by every stride removed before it ran
            rate = math.prod(stages[j].stride for j in started)
        if rate == 1 and k is None:
            continue
        if isinstance(layer, nn.Conv2d):
            d, pad = _square(layer, "dilation"), _square(layer, "padding")
            layer.dilation, layer.padding = (d * rate, d * rate), (pad * rate, pad * rate)
            if k is not None:
                layer.stride = (1, 1)
        elif isinstance(layer, nn.MaxPool2d):
            parent, name = parents[id(layer)]
            setattr(parent, name, _DenseMaxPool(layer, rate, strided=k is not None))
        elif isinstance(layer, nn.AvgPool2d) and _square(layer, "kernel_size") != 1:
            raise ConfigError("cannot rarefy an average pooling wider than 1", fix=_FIX)
    net.coarse_map = _stitched_map(model, factor)
    return _Rarefied(net, DenseUpsample(net.coarse_map))


class _Rarefied(nn.Module):
    """A rarefied FCN-32s and the dense upsampling of its scores: logits (N, K, H, W)."""

    def __init__(self, net: FCN, upsample: DenseUpsample):
        super().__init__()
        self.net, self.upsample = net, upsample

    def coarse_scores(self, x: Tensor) -> Tensor:
        """The dense scores, stride ``S / F``: (N, K, ~H F / S, ~W F / S)."""
        return self.net.coarse_scores(self.net.encoder(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.upsample(self.coarse_scores(x), x.shape[2:])

