"""Frozen batch norm for fine-tuning, as modules: :class:`FrozenBatchNorm2d`, and its fold into the convolution
before it (:class:`FoldedConv2d` + :class:`FoldedBatchNorm2d`).

When an encoder starts from trained weights (ImageNet, or an earlier fcnseg run), its batch-norm statistics are
already estimated; fine-tuning with small batches (8 crops on a CPU) gains little from re-estimating them, and
detectron2's and torchvision's ``FrozenBatchNorm2d`` and DeepLab's fine-tuning keep them fixed. Frozen, a batch
norm is an affine map ``y = gamma * (x - mean) / sqrt(var + eps) + beta`` with fixed ``mean``/``var``; unlike
``torchvision.ops.FrozenBatchNorm2d`` (whose ``gamma``/``beta`` are buffers) fcnseg keeps ``gamma``/``beta``
trained, as ``nn.BatchNorm2d`` in eval mode would. ``fcnseg train`` freezes them when the encoder starts trained
(``--batch-norm auto``), behind a 50-step learning-rate warm-up: without one, fine-tuning at lr 0.01 diverged.

An affine map after a convolution folds into the convolution's weights and bias (per output channel):

    w' = w * s,   b' = beta + (b - mean) * s,   s = gamma / sqrt(var + eps)

:class:`FoldedConv2d` recomputes ``w'`` and ``b'`` from ``w``, ``gamma`` and ``beta`` at every forward pass (a few
thousand multiplications), so gradients reach all three exactly as through conv -> frozen BN, and the per-pixel
batch-norm pass and its backward disappear: about 1.1x over the unfolded frozen batch norm per training step
(``benchmarks/train_step.py --bn-compare``; benchmarks/RESULTS.md, issue 17, also for the end-to-end runs).
A batch norm is folded only where its parent module's forward, traced with ``torch.fx`` (children as opaque
calls), feeds the convolution's output to the batch norm and to nothing else; elsewhere it is frozen only (a
log line names each module whose forward does not trace).

The replacements hold the very parameters and buffers of the modules they replace, under the same names, so
``state_dict`` keys are those of ``nn.Conv2d`` and ``nn.BatchNorm2d``: a checkpoint of a frozen model loads
strictly into a plain one (evaluation, export, serving) and the other way round.
"""

from __future__ import annotations

import logging
from collections import Counter

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["FrozenBatchNorm2d", "FoldedBatchNorm2d", "FoldedConv2d", "freeze_batch_norm", "unfreeze_batch_norm",
           "has_batch_norm", "frozen_batch_norms"]

log = logging.getLogger(__name__)

# timm's BatchNormAct2d normalises, then applies these children in this order; a plain BatchNorm2d has none.
_AFTER = ("drop", "act")


class FrozenBatchNorm2d(nn.Module):
    """A 2-d batch norm with fixed running statistics and trained ``weight`` (gamma) and ``bias`` (beta).

    Computes ``nn.BatchNorm2d``'s eval-mode output in training mode too (``train()`` leaves it in eval mode), then
    the optional ``drop`` and ``act`` children (timm's ``BatchNormAct2d``). Parameters ``weight``, ``bias``;
    buffers ``running_mean``, ``running_var``, ``num_batches_tracked``: the ``state_dict`` keys of
    ``nn.BatchNorm2d``. ``unfrozen_type`` is the batch-norm class :meth:`to_batch_norm` rebuilds.
    """

    _version = 2  # nn.BatchNorm2d's state-dict version (2: has num_batches_tracked), saved in the metadata

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, *,
                 drop: nn.Module | None = None, act: nn.Module | None = None,
                 unfrozen_type: type[nn.BatchNorm2d] = nn.BatchNorm2d) -> None:
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum  # momentum: for unfreezing only
        self.unfrozen_type = unfrozen_type
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))
        if drop is not None:
            self.drop = drop
        if act is not None:
            self.act = act
        self.training = False

    @classmethod
    def from_batch_norm(cls, bn: nn.BatchNorm2d) -> FrozenBatchNorm2d:
        """The frozen form of ``bn``, sharing its parameters, buffers and ``drop``/``act`` children."""
        frozen = cls(bn.num_features, bn.eps, bn.momentum, unfrozen_type=type(bn),
                     **{name: getattr(bn, name) for name in _AFTER if hasattr(bn, name)})
        frozen.weight, frozen.bias = bn.weight, bn.bias
        frozen.running_mean, frozen.running_var = bn.running_mean, bn.running_var
        frozen.num_batches_tracked = bn.num_batches_tracked
        return frozen

    def to_batch_norm(self) -> nn.BatchNorm2d:
        """A training batch norm of ``unfrozen_type`` sharing this one's parameters, buffers and children."""
        bn = self.unfrozen_type(self.num_features, eps=self.eps, momentum=self.momentum)
        bn.weight, bn.bias = self.weight, self.bias
        bn.running_mean, bn.running_var = self.running_mean, self.running_var
        bn.num_batches_tracked = self.num_batches_tracked
        for name, child in self.named_children():  # drop, act
            setattr(bn, name, child)
        return bn

    def train(self, mode: bool = True) -> FrozenBatchNorm2d:
        """Children follow ``mode``; the statistics stay fixed, so this module stays in eval mode."""
        super().train(mode)
        self.training = False
        return self

    def normalise(self, x: Tensor) -> Tensor:
        """``gamma * (x - mean) / sqrt(var + eps) + beta`` per channel of ``x`` (N, C, H, W)."""
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)

    def after(self, x: Tensor) -> Tensor:
        """What follows the normalisation: ``drop`` then ``act``, where present."""
        for name in _AFTER:
            if name in self._modules:
                x = self._modules[name](x)  # type: ignore[misc]
        return x

    def forward(self, x: Tensor) -> Tensor:
        return self.after(self.normalise(x))

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


class FoldedBatchNorm2d(FrozenBatchNorm2d):
    """A :class:`FrozenBatchNorm2d` whose normalisation :class:`FoldedConv2d` computes: its forward applies only
    ``drop``/``act``. It still owns ``weight``, ``bias`` and the statistics (and their ``state_dict`` keys);
    ``folded_into`` names the convolution (its qualified name in the model)."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, *,
                 drop: nn.Module | None = None, act: nn.Module | None = None,
                 unfrozen_type: type[nn.BatchNorm2d] = nn.BatchNorm2d, folded_into: str = "") -> None:
        super().__init__(num_features, eps, momentum, drop=drop, act=act, unfrozen_type=unfrozen_type)
        self.folded_into = folded_into

    def forward(self, x: Tensor) -> Tensor:
        return self.after(x)  # x is already normalised: FoldedConv2d computed it

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, folded into {self.folded_into}"


class FoldedConv2d(nn.Conv2d):
    """``nn.Conv2d`` followed by a frozen batch norm, computed as one convolution with ``w'``, ``b'`` of the module
    docstring, recomputed at every call. Owns ``weight`` (and ``bias``) under ``nn.Conv2d``'s keys; the batch norm
    (``bn``, a :class:`FoldedBatchNorm2d` registered in the model under ``bn.folded_into``'s sibling name) owns
    gamma, beta and the statistics. ``bn`` is a reference, not a child, so that no ``state_dict`` key moves."""

    def __init__(self, conv: nn.Conv2d, bn: FoldedBatchNorm2d, bn_name: str) -> None:
        super().__init__(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,  # type: ignore[arg-type]
                         conv.padding, conv.dilation, conv.groups, conv.bias is not None,  # type: ignore[arg-type]
                         conv.padding_mode, device="meta")
        self.weight, self.bias = conv.weight, conv.bias
        object.__setattr__(self, "bn", bn)  # not registered: the model registers it where it was
        self.bn_name = bn_name

    def to_conv(self) -> nn.Conv2d:
        """The plain ``nn.Conv2d``, sharing this one's ``weight`` and ``bias``."""
        conv = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride,  # type: ignore[arg-type]
                         self.padding, self.dilation, self.groups, self.bias is not None,  # type: ignore[arg-type]
                         self.padding_mode, device="meta")
        conv.weight, conv.bias = self.weight, self.bias
        return conv

    def forward(self, x: Tensor) -> Tensor:
        bn: FoldedBatchNorm2d = self.bn  # type: ignore[assignment]
        scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)  # (C_out,)
        weight = self.weight * scale.reshape(-1, 1, 1, 1)  # (C_out, C_in / groups, kH, kW)
        shift = bn.running_mean if self.bias is None else bn.running_mean - self.bias
        return self._conv_forward(x, weight, bn.bias - shift * scale)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, folds {self.bn_name}"

    @torch.no_grad()
    def absorb_scale(self) -> None:
        """Move the batch norm's scale ``s`` into ``weight`` for good, computing the same function: ``weight``
        becomes ``w * s``, the batch norm's statistics mean 0 and variance ``1 - eps`` (so ``sqrt(var + eps)``
        is 1), gamma 1, and beta the whole folded bias ``beta + (b - mean) * s`` (less ``b``, which the
        convolution still adds). An SGD step then moves the effective weight by the learning rate itself,
        not by ``s^2`` times it (module docstring)."""
        bn: FoldedBatchNorm2d = self.bn  # type: ignore[assignment]
        scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
        bias = torch.zeros_like(bn.bias) if self.bias is None else self.bias
        bn.bias.copy_(bn.bias + (bias - bn.running_mean) * scale - bias)
        self.weight.mul_(scale.reshape(-1, 1, 1, 1).to(self.weight.dtype))
        bn.running_mean.zero_()
        bn.running_var.fill_(1.0 - bn.eps)
        bn.weight.fill_(1.0)


def _freezable(m: nn.Module) -> bool:
    """A plain ``nn.BatchNorm2d``, or a subclass whose only children are ``drop``/``act`` (timm's
    ``BatchNormAct2d``), with affine parameters and running statistics."""
    return (isinstance(m, nn.BatchNorm2d) and (type(m) is nn.BatchNorm2d or (
        any(True for _ in m.children()) and all(n in _AFTER for n, _ in m.named_children())))
            and m.affine and m.track_running_stats and m.running_mean is not None and m.running_var is not None)


def has_batch_norm(model: nn.Module) -> bool:
    """Whether ``model`` has a 2-d batch norm with running statistics (trained, or frozen by this module)."""
    return any(_freezable(m) or isinstance(m, FrozenBatchNorm2d) for m in model.modules())


def frozen_batch_norms(model: nn.Module) -> tuple[int, int]:
    """``(frozen, folded)``: how many batch norms of ``model`` are frozen, and how many of those are folded."""
    found = [m for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]
    return len(found), sum(isinstance(m, FoldedBatchNorm2d) for m in found)


class _ChildrenAsLeaves(torch.fx.Tracer):
    """Traces one module's own forward; every submodule call is one opaque ``call_module`` node."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return True


def _fold_pairs(parent: nn.Module, prefix: str) -> list[tuple[str, str]]:
    """``(conv, bn)`` child names of ``parent`` where, in its forward, the convolution's output goes to the batch
    norm and nowhere else, each called once. Empty (and a log line) when the forward does not trace."""
    kids = dict(parent.named_children())
    if not (any(type(k) is nn.Conv2d for k in kids.values()) and any(_freezable(k) for k in kids.values())):
        return []
    try:
        graph = _ChildrenAsLeaves().trace(parent)
    except Exception as e:  # noqa: BLE001  any forward torch.fx cannot follow (shape-dependent branches...)
        log.info("batch norm: frozen, not folded, in %s (%s): its forward does not trace (%s)",
                 prefix or "the model", type(parent).__name__, str(e).splitlines()[0] if str(e) else type(e).__name__)
        return []
    calls = [n for n in graph.nodes if n.op == "call_module"]
    count = Counter(n.target for n in calls)
    pairs = []
    for node in calls:
        bn, src = kids.get(str(node.target)), node.args[0] if len(node.args) == 1 and not node.kwargs else None
        if not (_freezable(bn) and isinstance(src, torch.fx.Node) and src.op == "call_module"):
            continue
        conv = kids.get(str(src.target))
        if (type(conv) is nn.Conv2d and conv.out_channels == bn.num_features  # type: ignore[union-attr]
                and count[node.target] == count[src.target] == 1 and len(src.users) == 1):
            pairs.append((str(src.target), str(node.target)))
    return pairs


def freeze_batch_norm(model: nn.Module, *, fold: bool = True, absorb: bool = False) -> tuple[int, int]:
    """Freeze every batch norm inside ``model`` (running statistics fixed, gamma and beta trained), in place, by
    replacing it with a :class:`FrozenBatchNorm2d`; returns :func:`frozen_batch_norms`' ``(frozen, folded)``.

    With ``fold``, each one fed by a convolution alone is computed inside it (:class:`FoldedConv2d`, module
    docstring). With ``absorb``, each folded batch norm's scale moves into its convolution's weights for good
    (:meth:`FoldedConv2d.absorb_scale`): the same function, each layer trained at the learning rate itself rather
    than at ``s^2`` times it. It is off by default: measured, it did not stop the divergence that frozen batch
    norm had at lr 0.01 (``benchmarks/frozen_bn.py --fold unit``, benchmarks/RESULTS.md). The replacements share
    the replaced modules' tensors, so build the optimiser after this call or before, either way; ``state_dict``
    keys do not change (their values do, with ``absorb``: a plain model loading them computes the same).
    Undo with :func:`unfreeze_batch_norm`.
    """
    uses = Counter(id(m) for _, m in model.named_modules(remove_duplicate=False))
    for prefix, parent in list(model.named_modules()):
        pairs = _fold_pairs(parent, prefix) if fold else []
        for conv_name, bn_name in pairs:
            conv, bn = getattr(parent, conv_name), getattr(parent, bn_name)
            if uses[id(conv)] == uses[id(bn)] == 1:  # a module registered twice may run elsewhere unfolded
                folded = FoldedBatchNorm2d.from_batch_norm(bn)
                folded.folded_into = f"{prefix}.{conv_name}".lstrip(".")
                setattr(parent, conv_name, FoldedConv2d(conv, folded, bn_name))
                setattr(parent, bn_name, folded)
                if absorb:
                    getattr(parent, conv_name).absorb_scale()
        for name, child in list(parent.named_children()):
            if _freezable(child):
                setattr(parent, name, FrozenBatchNorm2d.from_batch_norm(child))  # type: ignore[arg-type]
    return frozen_batch_norms(model)


def unfreeze_batch_norm(model: nn.Module) -> None:
    """Undo :func:`freeze_batch_norm`: plain convolutions and batch norms of the original classes again (sharing
    the same tensors), in ``model``'s training mode."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, FoldedConv2d):
                setattr(parent, name, child.to_conv())
            elif isinstance(child, FrozenBatchNorm2d):
                setattr(parent, name, child.to_batch_norm().train(model.training))
