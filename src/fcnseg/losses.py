"""Per-pixel multinomial logistic loss with an ignore label (arXiv:1411.4038, section 3)."""

from __future__ import annotations

from typing import Literal

from torch import Tensor
from torch.nn import functional as F


def segmentation_loss(logits: Tensor, target: Tensor, *, ignore_index: int = 255,
                      reduction: Literal["sum", "mean"] = "mean") -> Tensor:
    """Cross-entropy over pixels; ``logits`` (N, K, H, W), ``target`` (N, H, W) int64.

    ``sum`` is the reference's loss (Caffe ``SoftmaxWithLoss`` with ``normalize: false``) that its learning
    rates of 1e-10..1e-14 assume; ``mean`` averages over the pixels that are not ignored, which needs a
    learning rate about (pixels per image) times larger. A batch whose pixels are all ignored gives 0.
    """
    loss = F.cross_entropy(logits.float(), target, ignore_index=ignore_index, reduction="sum")
    if reduction == "sum":
        return loss
    valid = (target != ignore_index).sum().clamp_min(1)
    return loss / valid
