"""FCN heads: score layers, bilinear upsampling and skip fusion (arXiv:1411.4038, sections 3.3 and 4.2).

``FCN`` puts the paper's head on any encoder that returns named features with known coordinate maps:
``fc7`` (stride 32, the input of ``score_fr``), and for the skip nets ``pool4`` (stride 16) and ``pool3``
(stride 8). Layer names are the reference's: ``score_fr``, ``upscore2``, ``score_pool4``, ``upscore_pool4``,
``score_pool3`` and the final ``upscore`` (32s), ``upscore16`` (16s) or ``upscore8`` (8s).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, Protocol

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..errors import ConfigError
from .geometry import CoordMap, crop_offset, layer_map
from .vgg import widen_input_filters

__all__ = ["FCN", "BilinearUpsample", "bilinear_kernel", "Encoder", "task_heads", "joined_logits", "head_labels"]


class Encoder(Protocol):
    """What ``FCN`` needs of a trunk: named features, their channels and their coordinate maps."""

    def __call__(self, x: Tensor) -> dict[str, Tensor]: ...
    @property
    def out_channels(self) -> dict[str, int]: ...
    def coord_maps(self) -> dict[str, CoordMap]: ...


def bilinear_kernel(size: int) -> Tensor:
    """2-D bilinear interpolation kernel of side ``size`` (the reference's ``upsample_filt``), (size, size)."""
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    og = torch.arange(size, dtype=torch.float64)
    filt = 1 - (og - center).abs() / factor
    return torch.outer(filt, filt).float()


class BilinearUpsample(nn.Module):
    """Transposed convolution initialised to bilinear interpolation, class by class (section 3.3).

    Frozen (the reference's choice, ``learnable=False``) it is applied as a depthwise transposed convolution:
    the dense ``channels x channels`` kernel is zero off the diagonal, so computing only the diagonal gives
    the same output for a fraction of the work (4-6x less time at 21-150 classes in NCHW, 9-47x channels-last:
    benchmarks/RESULTS.md) and holds no parameters. Learnable, it is the full dense kernel initialised to the
    same diagonal, as in the reference's learnable variant.
    """

    is_transposed = True  # for geometry.layer_map

    def __init__(self, channels: int, factor: int, kernel_size: int, *, learnable: bool = False):
        super().__init__()
        self.channels, self.stride, self.kernel_size, self.padding = channels, factor, kernel_size, 0
        self.learnable = learnable
        k = bilinear_kernel(kernel_size)
        if learnable:
            w = torch.zeros(channels, channels, kernel_size, kernel_size)
            w[range(channels), range(channels)] = k
            self.weight = nn.Parameter(w)
        else:
            self.register_buffer("weight", k.expand(channels, 1, -1, -1).clone(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        groups = 1 if self.learnable else self.channels
        return F.conv_transpose2d(x, self.weight.to(x.dtype), stride=self.stride, groups=groups)

    def extra_repr(self) -> str:
        return (
            f"{self.channels}, factor={self.stride}, kernel_size={self.kernel_size}, learnable={self.learnable}"
        )


def _upsample_for(channels: int, factor: int, source: CoordMap, target: CoordMap, learnable: bool
                  ) -> BilinearUpsample:
    """The reference's kernel 2*factor, or 2*factor-1 where 2*factor would align between pixels.

    VGG's maps make 2f align on whole pixels (offsets 19, 27, 31...); AlexNet's and modern encoders' do not,
    and the odd kernel (the reference FCN-AlexNet's 63 for stride 32) does.
    """
    for k in (2 * factor, 2 * factor - 1):
        up = BilinearUpsample(channels, factor, k, learnable=learnable)
        shift = source.then(layer_map(up)).shift - target.shift
        if shift.denominator == 1:
            return up
    raise ConfigError(f"no bilinear kernel for factor {factor} aligns {source} with {target} on whole pixels",
                      fix="choose another {model} (its encoder's maps do not align)")


def _crop(x: Tensor, offset: int, like: Tensor) -> Tensor:
    return x[:, :, offset : offset + like.shape[2], offset : offset + like.shape[3]]


class FCN(nn.Module):
    """FCN-32s, FCN-16s or FCN-8s over ``encoder``; returns logits (N, num_classes, H, W) at input size.

    Args:
        encoder: a trunk returning ``fc7`` (and ``pool4``, ``pool3`` for strides 16 and 8).
        num_classes: number of output classes; or a mapping from task name to its number of classes, for one
            head per task over the shared encoder, as the reference's SIFT Flow net (section 5: semantic and
            geometric labels). Each task's layers carry ``_<task>`` after the reference's names
            (``score_fr_sem``, ``score_pool4_sem``, ``upscore2_sem``, ``upscore16_sem``; the same with
            ``_geo``), and ``forward`` returns a dict of logits (N, K_task, H, W) in the mapping's order.
        stride: 32, 16 or 8: the finest feature the prediction fuses (section 4.2).
        learnable_upsampling: learn the upsampling kernels (the reference freezes them).
        skip_scales: multipliers on ``pool4`` and ``pool3`` before their score layers; the reference's
            at-once FCN-8s uses (0.01, 0.0001) so the skips start small relative to fc7.

    Attributes:
        heads: ``{task: classes}`` of a multi-task net, ``None`` for the single-head one.
        offsets: crop offsets, keyed by the name of the layer whose output is cropped.
        coarse_map: coordinate map from the input to the coarse scores (:meth:`coarse_scores`), the input of
            the final upsampling: stride ``stride``.
    """

    def __init__(
        self,
        encoder: nn.Module,
        num_classes: int | Mapping[str, int],
        stride: Literal[32, 16, 8] = 32,
        *,
        learnable_upsampling: bool = False,
        skip_scales: tuple[float, float] = (1.0, 1.0),
    ):
        super().__init__()
        if stride not in (32, 16, 8):
            raise ConfigError(f"stride must be 32, 16 or 8, not {stride}",
                              fix="choose fcn32s, fcn16s or fcn8s as {model}")
        self.heads: dict[str, int] | None = dict(num_classes) if isinstance(num_classes, Mapping) else None
        classes = self.heads or {"": num_classes}
        if not classes or any(not isinstance(k, int) or k < 1 for k in classes.values()):
            raise ConfigError(f"num_classes must be positive, not {num_classes}",
                              fix="give the dataset at least one class, or pass {model_args} num_classes=N")
        self.encoder = encoder
        self.num_classes, self.fcn_stride, self.skip_scales = num_classes, stride, skip_scales
        self.final_name = {32: "upscore", 16: "upscore16", 8: "upscore8"}[stride]
        self.offsets: dict[str, int] = {}
        for task, k in classes.items():
            self._add_head(k, f"_{task}" if task else "", learnable_upsampling)

    def _add_head(self, num_classes: int, suffix: str, learn: bool) -> None:
        """Score, upsampling and skip layers of one head, named ``<reference name><suffix>``."""
        chans, maps = self.encoder.out_channels, self.encoder.coord_maps()
        score_fr = nn.Conv2d(chans["fc7"], num_classes, 1)
        self.add_module("score_fr" + suffix, score_fr)
        score_layers = [score_fr]
        m = maps["fc7"]
        skips = (("pool4", "score_pool4", "upscore2"), ("pool3", "score_pool3", "upscore_pool4"))
        for skip, score_name, up_name in skips[: {32: 0, 16: 1, 8: 2}[self.fcn_stride]]:
            score = nn.Conv2d(chans[skip], num_classes, 1)
            self.add_module(score_name + suffix, score)
            score_layers.append(score)
            up = _upsample_for(num_classes, 2, m, maps[skip], learn)
            self.add_module(up_name + suffix, up)
            m_up = m.then(layer_map(up))
            if m_up.shift >= maps[skip].shift:  # the upsampled map is larger: crop it to the skip
                self.offsets[up_name + suffix] = crop_offset(m_up, maps[skip])
                m = maps[skip]
            else:  # the skip is larger (VGG's padded trunk): crop it to the upsampled map
                self.offsets[score_name + suffix] = crop_offset(maps[skip], m_up)
                m = m_up
        self.coarse_map = m
        up = _upsample_for(num_classes, self.fcn_stride, m, CoordMap(), learn)  # stride -> input resolution
        self.add_module(self.final_name + suffix, up)
        self.offsets[self.final_name + suffix] = crop_offset(m.then(layer_map(up)), CoordMap())
        for layer in score_layers:  # the reference starts the score layers at zero
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor) -> Tensor | dict[str, Tensor]:
        feats = self.encoder(x)
        if self.heads is None:
            return self._head(feats, x, "")  # (N, K, H, W)
        return {task: self._head(feats, x, f"_{task}") for task in self.heads}  # task -> (N, K_task, H, W)

    def _head(self, feats: dict[str, Tensor], x: Tensor, suffix: str) -> Tensor:
        h = getattr(self, self.final_name + suffix)(self.coarse_scores(feats, suffix))
        return _crop(h, self.offsets[self.final_name + suffix], x)  # (N, K, H, W)

    def coarse_scores(self, feats: dict[str, Tensor], suffix: str = "") -> Tensor:
        """The scores before the final upsampling, at stride ``fcn_stride`` (:attr:`coarse_map`): ``score_fr``
        of ``fc7``, fused with the skips' scores (section 4.2). ``feats``: the encoder's output; ``suffix``:
        ``_<task>`` for one head of a multi-task net."""
        h = getattr(self, "score_fr" + suffix)(feats["fc7"])  # (N, K, H/32 + pad, W/32 + pad)
        if self.fcn_stride <= 16:
            h = self._fuse(h, self._scaled(feats["pool4"], 0), "score_pool4" + suffix, "upscore2" + suffix)
        if self.fcn_stride == 8:
            h = self._fuse(h, self._scaled(feats["pool3"], 1), "score_pool3" + suffix, "upscore_pool4" + suffix)
        return h  # (N, K, ~H/stride, ~W/stride)

    def _scaled(self, x: Tensor, i: int) -> Tensor:
        return x if self.skip_scales[i] == 1.0 else x * self.skip_scales[i]

    def _fuse(self, h: Tensor, skip: Tensor, score_name: str, up_name: str) -> Tensor:
        up = getattr(self, up_name)(h)
        s = getattr(self, score_name)(skip)
        if score_name in self.offsets:
            s = _crop(s, self.offsets[score_name], up)
        else:
            up = _crop(up, self.offsets[up_name], s)
        return up + s

    def init_from(self, state_dict: dict[str, Tensor]) -> tuple[list[str], list[str]]:
        """Staged initialisation (section 4.2): copy every tensor whose name and shape match.

        FCN-16s starts from a trained FCN-32s and FCN-8s from a trained FCN-16s: the trunk and the score
        layers they share are copied by name; the new score layer stays at zero and the new upsampling
        bilinear. A first layer with more inputs than the RGB one it is given (RGB-D: 4) gets the RGB filters
        widened by :func:`~fcnseg.models.vgg.widen_input_filters` (the reference's RGB-D initialisation).
        Returns (copied names, names of this model left as initialised).
        """
        own = self.state_dict()
        copied, kept = [], []
        with torch.no_grad():
            for name, t in own.items():
                src = state_dict.get(name)
                if (src is not None and src.ndim == 4 and src.shape[1] == 3 and t.ndim == 4 and t.shape[1] > 3
                        and src.shape[0] == t.shape[0] and src.shape[2:] == t.shape[2:]):
                    src = widen_input_filters(src, t.shape[1])  # RGB filters onto RGB + depth (+...) inputs
                if src is not None and src.shape == t.shape:
                    t.copy_(src)
                    copied.append(name)
                else:
                    kept.append(name)
        return copied, kept


def task_heads(model: nn.Module) -> dict[str, int] | None:
    """``{task: classes}`` of a multi-task model (also inside DDP's wrapper), ``None`` for a single head."""
    return getattr(getattr(model, "module", model), "heads", None)


def joined_logits(out: Tensor | Mapping[str, Tensor]) -> Tensor:
    """A model's output as one tensor: a multi-task dict's logits concatenated on the class axis, in task order.

    Test-time averaging (flips, windows) is linear per channel, so it can run on the joined scores; split them
    again with :func:`head_labels`.
    """
    return torch.cat(list(out.values()), dim=1) if isinstance(out, Mapping) else out


def head_labels(scores: Tensor, heads: Mapping[str, int] | None, dim: int = 1) -> Tensor:
    """Class labels of (joined) scores: the argmax over ``dim``, or for ``heads`` each task's argmax over its
    own slice of ``dim``, stacked there (``(N, K_1 + K_2, H, W)`` -> ``(N, 2, H, W)`` with ``dim=1``)."""
    if heads is None:
        return scores.argmax(dim)
    return torch.stack([s.argmax(dim) for s in scores.split(list(heads.values()), dim=dim)], dim=dim)
