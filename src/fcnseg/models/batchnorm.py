"""Frozen batch norm for fine-tuning, folded into the convolution before it (the training fast path).

When an encoder starts from trained weights (ImageNet, or an earlier fcnseg run), its batch-norm statistics are
already estimated; fine-tuning with small batches (8 crops on a CPU) gains little from re-estimating them, and
detectron2's ``FrozenBatchNorm2d`` and DeepLab's fine-tuning keep them fixed. Frozen, a batch norm is an affine
map ``y = gamma * (x - mean) / sqrt(var + eps) + beta`` with fixed ``mean``/``var`` and trained ``gamma``/``beta``,
and an affine map after a convolution folds into the convolution's weights and bias:

    w' = w * s,   b' = beta + (b - mean) * s,   s = gamma / sqrt(var + eps)        (per output channel)

The folded convolution is recomputed from ``w``, ``gamma`` and ``beta`` at every forward pass (a few thousand
multiplications), so gradients reach all three exactly as through conv -> frozen BN, and the per-pixel batch-norm
pass and its backward disappear: ``fcnseg train`` of the EfficientNet-Lite0 FCN-8s ran at 6.96 against
5.97 images/s with ``--batch-norm train`` (1.17x; ``benchmarks/train_speed.py``, benchmarks/RESULTS.md).
``fcnseg train`` freezes them when the encoder starts trained (``--batch-norm auto``), behind a 50-step
learning-rate warm-up: without one, fine-tuning at lr 0.01 diverged.

Parameters, buffers and ``state_dict`` keys are unchanged (the modules change class, not contents), so
checkpoints load into unfolded models and the other way round. A batch norm whose input is not the output of the
convolution registered just before it is left unfolded (frozen only); :func:`freeze_batch_norm` checks the folded
model against the unfolded one on a probe input and undoes the fold if they differ.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["freeze_batch_norm", "unfreeze_batch_norm", "has_batch_norm", "frozen_batch_norms"]


def has_batch_norm(model: nn.Module) -> bool:
    """Whether ``model`` has a 2-d batch norm that tracks running statistics."""
    return any(_foldable_bn(m) for m in model.modules())


def _foldable_bn(m: nn.Module) -> bool:
    return (isinstance(m, nn.BatchNorm2d) and m.affine and m.track_running_stats
            and m.running_mean is not None and m.running_var is not None)


def _keep_eval(self: nn.Module, mode: bool = True) -> nn.Module:
    """``train()`` of a frozen batch norm: statistics stay fixed, so the module stays in eval mode."""
    for child in self.children():
        child.train(mode)
    self.training = False
    return self


def _bn_act_only(self: nn.Module, x: Tensor) -> Tensor:
    """Forward of a batch norm folded into its convolution: only what follows the normalisation (timm's
    ``BatchNormAct2d`` applies dropout and an activation; plain ``BatchNorm2d`` nothing)."""
    drop, act = getattr(self, "drop", None), getattr(self, "act", None)
    if drop is not None:
        x = drop(x)
    return act(x) if act is not None else x


def _folded_conv_forward(self: nn.Conv2d, x: Tensor) -> Tensor:
    """Forward of a convolution with the frozen batch norm after it folded in (the module docstring's formula)."""
    bn = self._fcnseg_folded_bn  # type: ignore[attr-defined]
    scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)  # (C_out,)
    weight = self.weight * scale.reshape(-1, *([1] * (self.weight.dim() - 1)))
    shift = bn.running_mean if self.bias is None else bn.running_mean - self.bias
    bias = bn.bias - shift * scale
    return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)


_CLASSES: dict[tuple[type, str], type] = {}


def _swap(m: nn.Module, kind: str) -> None:
    """Give ``m`` a subclass of its class with the ``kind`` behaviour; its contents stay as they are."""
    base = m.__class__
    key = (base, kind)
    if key not in _CLASSES:
        body = {"frozen": {"train": _keep_eval},
                "folded_bn": {"train": _keep_eval, "forward": _bn_act_only},
                "folded_conv": {"forward": _folded_conv_forward}}[kind]
        _CLASSES[key] = type(f"{kind.title().replace('_', '')}{base.__name__}", (base,),
                             {**body, "_fcnseg_base": base})
    m.__class__ = _CLASSES[key]


def _swapped(m: nn.Module) -> bool:
    return hasattr(type(m), "_fcnseg_base")


def _unswap(m: nn.Module) -> None:
    base = getattr(type(m), "_fcnseg_base", None)
    if base is not None:
        m.__class__ = base
        m.__dict__.pop("_fcnseg_folded_bn", None)


def frozen_batch_norms(model: nn.Module) -> tuple[int, int]:
    """``(frozen, folded)``: how many batch norms of ``model`` are frozen, and how many of those are folded."""
    frozen = folded = 0
    for m in model.modules():
        base = getattr(type(m), "_fcnseg_base", None)
        if base is not None and issubclass(base, nn.BatchNorm2d):
            frozen += 1
            folded += type(m).forward is _bn_act_only
    return frozen, folded


def _fold_pairs(model: nn.Module) -> list[tuple[nn.Conv2d, nn.BatchNorm2d]]:
    """(conv, bn) siblings registered one after the other, where the bn normalises the conv's output channels."""
    pairs = []
    for parent in model.modules():
        children = list(parent.children())
        for conv, bn in zip(children, children[1:], strict=False):
            if (type(conv) is nn.Conv2d and conv.padding_mode == "zeros" and _foldable_bn(bn)
                    and bn.num_features == conv.out_channels and not _swapped(bn)):
                pairs.append((conv, bn))
    return pairs


def _outputs(model: nn.Module, x: Tensor) -> list[Tensor]:
    out = model(x)
    if isinstance(out, Tensor):
        return [out]
    if isinstance(out, dict):
        return [v for v in out.values() if isinstance(v, Tensor)]
    return [v for v in out if isinstance(v, Tensor)]


@torch.no_grad()
def _fold_matches(model: nn.Module, pairs: list[tuple[nn.Conv2d, nn.BatchNorm2d]], in_channels: int,
                  size: int = 64) -> bool:
    """Whether folding ``pairs`` leaves ``model``'s eval-mode output unchanged on a probe input."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        p = next(model.parameters())
        x = torch.randn(1, in_channels, size, size, generator=torch.Generator().manual_seed(0)).to(p.device, p.dtype)
        before = _outputs(model, x)
        for conv, bn in pairs:
            _fold(conv, bn)
        after = _outputs(model, x)
        ok = len(before) == len(after) and all(
            a.shape == b.shape and torch.allclose(a, b, rtol=1e-3, atol=1e-3 * (1 + float(b.abs().max())))
            for a, b in zip(before, after, strict=True))
    finally:
        for m, t in modes.items():
            m.training = t
    return ok


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    conv.__dict__["_fcnseg_folded_bn"] = bn  # a plain reference: not a submodule, not in state_dict
    _swap(conv, "folded_conv")
    _swap(bn, "folded_bn")


def freeze_batch_norm(model: nn.Module, *, in_channels: int | None = None) -> tuple[int, int]:
    """Freeze the running statistics of every batch norm of ``model``, in place; returns ``(frozen, folded)``.

    Frozen batch norms stay in eval mode through ``model.train()``; ``gamma`` and ``beta`` still train. Each one
    that directly follows a convolution is computed inside it (module docstring), after a probe check that the
    folded model's eval output equals the unfolded one's (else nothing is folded).
    ``in_channels`` is the probe's channel count (default: the first convolution's). Undo with
    :func:`unfreeze_batch_norm`; ``state_dict`` is the same either way.
    """
    pairs = _fold_pairs(model)
    if pairs:
        if in_channels is None:
            in_channels = getattr(model, "in_channels", None) or next(
                m for m in model.modules() if isinstance(m, nn.Conv2d)).in_channels
        try:
            same = _fold_matches(model, pairs, in_channels)
        except (RuntimeError, ValueError):  # the probe does not fit the model (channels, size): fold nothing
            same = False
        if not same:
            unfreeze_batch_norm(model)
    for m in model.modules():
        if _foldable_bn(m):
            if not _swapped(m):
                _swap(m, "frozen")
            m.training = False
    return frozen_batch_norms(model)


def unfreeze_batch_norm(model: nn.Module) -> None:
    """Undo :func:`freeze_batch_norm`: plain convolutions and batch norms again (training mode as ``model``'s)."""
    for m in model.modules():
        _unswap(m)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.training = model.training
