"""Per-pixel multinomial logistic loss with an ignore label (arXiv:1411.4038, section 3)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from torch import Tensor
from torch.nn import functional as F


def segmentation_loss(logits: Tensor | Mapping[str, Tensor], target: Tensor, *, ignore_index: int = 255,
                      reduction: Literal["sum", "mean"] = "mean") -> Tensor:
    """Cross-entropy over pixels; ``logits`` (N, K, H, W), ``target`` (N, H, W) int64.

    ``sum`` is the reference's loss (Caffe ``SoftmaxWithLoss`` with ``normalize: false``) that its learning
    rates of 1e-10..1e-14 assume; ``mean`` averages over the pixels that are not ignored, which needs a
    learning rate about (pixels per image) times larger. A batch whose pixels are all ignored gives 0.

    A multi-task model's dict of logits takes stacked targets (N, T, H, W), channel ``t`` for the ``t``-th
    task in the dict's order; the tasks' losses are summed, as the reference's SIFT Flow net sums its
    semantic and geometric losses (each ``mean`` over its own labelled pixels).
    """
    if isinstance(logits, Mapping):
        if target.ndim != 4 or target.shape[1] != len(logits):
            raise ValueError(f"{len(logits)} tasks ({', '.join(logits)}) need targets (N, {len(logits)}, H, W), "
                             f"got {tuple(target.shape)}")
        losses = [segmentation_loss(x, target[:, t], ignore_index=ignore_index, reduction=reduction)
                  for t, x in enumerate(logits.values())]
        return sum(losses[1:], losses[0])
    loss = F.cross_entropy(logits.float(), target, ignore_index=ignore_index, reduction="sum")
    if reduction == "sum":
        return loss
    valid = (target != ignore_index).sum().clamp_min(1)
    return loss / valid
