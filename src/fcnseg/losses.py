"""Per-pixel multinomial logistic loss with an ignore label (arXiv:1411.4038, section 3)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Literal

import torch
from torch import Tensor
from torch.nn import functional as F

from .errors import ConfigError

_TASKS_FIX = "train a multi-task {model} on a dataset with one label channel per task ({dataset}), or vice versa"


def segmentation_loss(logits: Tensor | Mapping[str, Tensor], target: Tensor, *, ignore_index: int = 255,
                      reduction: Literal["sum", "mean"] = "mean", weight: Tensor | None = None) -> Tensor:
    """Cross-entropy over pixels; ``logits`` (N, K, H, W), ``target`` (N, H, W) int64.

    ``sum`` is the reference's loss (Caffe ``SoftmaxWithLoss`` with ``normalize: false``) that its learning
    rates of 1e-10..1e-14 assume; ``mean`` averages over the pixels that are not ignored, which needs a
    learning rate about (pixels per image) times larger. A batch whose pixels are all ignored gives 0.
    ``weight`` (K,) scales each pixel's loss by its true class's weight (class balancing); ``mean`` still
    divides by the number of valid pixels, so the weights' scale sets the effective learning rate.

    A multi-task model's dict of logits takes stacked targets (N, T, H, W), channel ``t`` for the ``t``-th
    task in the dict's order; the tasks' losses are summed, as the reference's SIFT Flow net sums its
    semantic and geometric losses (each ``mean`` over its own labelled pixels).
    """
    if isinstance(logits, Mapping):
        if weight is not None:
            raise ConfigError("class weights are for single-task models", fix="set {class_weights} none")
        if target.ndim != 4 or target.shape[1] != len(logits):
            raise ConfigError(f"{len(logits)} tasks ({', '.join(logits)}) need targets (N, {len(logits)}, H, W), "
                              f"got {tuple(target.shape)}", fix=_TASKS_FIX)
        losses = [segmentation_loss(x, target[:, t], ignore_index=ignore_index, reduction=reduction)
                  for t, x in enumerate(logits.values())]
        return sum(losses[1:], losses[0])
    loss = F.cross_entropy(logits.float(), target, weight=weight, ignore_index=ignore_index, reduction="sum")
    if reduction == "sum":
        return loss
    valid = (target != ignore_index).sum().clamp_min(1)
    return loss / valid


def class_frequencies(masks: Iterable[Tensor], num_classes: int, ignore_index: int = 255) -> tuple[Tensor, Tensor]:
    """Per class: pixels labelled with it, and pixels of the images that contain it (float64, (K,) each).

    The two sums median-frequency balancing needs (Eigen & Fergus 2015, as SegNet weights CamVid).
    """
    pixels = torch.zeros(num_classes, dtype=torch.float64)
    image_pixels = torch.zeros(num_classes, dtype=torch.float64)
    for mask in masks:
        m = mask.as_subclass(Tensor).reshape(-1).long()
        m = m[m != ignore_index]
        counts = torch.bincount(m, minlength=num_classes)[:num_classes].double()
        pixels += counts
        image_pixels += (counts > 0).double() * m.numel()
    return pixels, image_pixels


def median_frequency_weights(pixels: Tensor, image_pixels: Tensor) -> Tensor:
    """Median frequency balancing: ``w_c = median(f) / f_c``, ``f_c`` = pixels of class c over the pixels of
    the images where c appears. Rare classes weigh more (SegNet's CamVid weights: pole 4.6, road 0.14). A class
    absent from the data gets weight 1. Returns float32 (K,)."""
    present = image_pixels > 0
    freq = torch.where(present, pixels / image_pixels.clamp_min(1), torch.zeros_like(pixels))
    # quantile(0.5), not median(): with an even count it is the mean of the middle two (numpy's median)
    median = freq[present].quantile(0.5) if present.any() else torch.tensor(1.0, dtype=torch.float64)
    weights = torch.where(present & (freq > 0), median / freq.clamp_min(1e-12), torch.ones_like(freq))
    return weights.float()


def sample_cells(target: Tensor, keep: float, cell: int, generator: torch.Generator, ignore_index: int = 255, *,
                 phase: int = 0) -> Tensor:
    """Loss sampling (arXiv:1411.4038, sections 3.4 and 4.3): ``target`` with the pixels of each ``cell`` x ``cell``
    block set to ``ignore_index`` with probability ``1 - keep``, one draw per block and image.

    The blocks are the final layer's cells (``cell`` = the net's output stride): pixel ``u`` (each axis) is in
    block ``(u + phase) // cell``, so with the phase of the net's coarse map (:meth:`fcnseg.engine.LossSampling.
    for_model`) each block holds the pixels nearest to one coarse score, and dropping it removes that score's
    loss, as the paper's patch sampling does. The draw is made on the CPU from ``generator`` (seeded by the
    caller per step), so it does not depend on the device; only the block grid is copied to it.
    ``target``: (N, H, W) or (N, T, H, W) (every task of a pixel is dropped together); returns a new tensor.
    """
    n, (h, w) = target.shape[0], target.shape[-2:]
    gh, gw = (h - 1 + phase) // cell + 1, (w - 1 + phase) // cell + 1
    cells = torch.rand(n, gh, gw, generator=generator) >= keep  # (N, gh, gw): True = dropped
    if target.device.type == "cuda":
        cells = cells.pin_memory()
    cells = cells.to(target.device, non_blocking=True)
    drop = cells.repeat_interleave(cell, 1).repeat_interleave(cell, 2)[:, phase : phase + h, phase : phase + w]
    if target.ndim == 4:
        drop = drop[:, None]  # (N, 1, H, W): every task
    return target.masked_fill(drop, ignore_index)
