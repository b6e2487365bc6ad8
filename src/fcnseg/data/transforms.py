"""Joint image/mask transforms (torchvision.transforms.v2) and the padding collate function.

Masks travel as ``tv_tensors.Mask``, so every geometric transform resamples them nearest-neighbour and colour
transforms leave them alone. Images stay uint8; normalisation happens on the device
(:mod:`fcnseg.normalization`).

The paper trains on whole images at batch size 1 and found mirroring and translation jitter gave "no
noticeable improvement" (arXiv:1411.4038, section 4.3, "Augmentation"; patch sampling, section 4.4). Scale,
crop and flip are here for batched training and for modern encoders; ``crop_size=None, scale_range=None,
hflip=False`` is the paper's setting.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from ..errors import ConfigError
from .base import IGNORE_INDEX

__all__ = ["RandomScale", "train_transforms", "eval_transforms", "pad_collate"]


class RandomScale(v2.Transform):
    """Resize image and mask by one factor drawn uniformly from ``scale_range``.

    Images are resized bilinearly with antialiasing, masks nearest-neighbour; sizes round to whole pixels.
    """

    def __init__(self, scale_range: tuple[float, float] = (0.5, 2.0)):
        super().__init__()
        if not 0 < scale_range[0] <= scale_range[1]:
            raise ConfigError(f"scale_range must satisfy 0 < low <= high, got {scale_range}",
                              fix="choose 0 < {scale_min} <= {scale_max}")
        self.scale_range = scale_range

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = v2.query_size(flat_inputs)
        lo, hi = self.scale_range
        s = lo + (hi - lo) * float(torch.rand(()))
        return {"size": [max(1, round(h * s)), max(1, round(w * s))]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return F.resize(inpt, params["size"], antialias=True)


def train_transforms(
    crop_size: int | tuple[int, int] | None,
    scale_range: tuple[float, float] | None = (0.5, 2.0),
    hflip: bool = True,
    color_jitter: float = 0.0,
    ignore_index: int = IGNORE_INDEX,
) -> v2.Transform:
    """Training augmentation for ``(image, mask)`` pairs: random scale, random crop, horizontal flip, jitter.

    Args:
        crop_size: ``size`` or ``(h, w)`` of the random crop; an image smaller than it is padded (image with
            0, mask with ``ignore_index``) so that it lies whole, at a random place, in the crop. ``None``: no
            crop.
        scale_range: factor range of :class:`RandomScale`; ``None``: no scaling.
        hflip: mirror image and mask together with probability 0.5.
        color_jitter: brightness, contrast and saturation jitter strength on the image only; 0 disables.
        ignore_index: mask value of padded pixels.
    """
    steps: list[v2.Transform] = []
    if scale_range is not None:
        steps.append(RandomScale(scale_range))
    if crop_size is not None:
        fill = {tv_tensors.Image: 0, tv_tensors.Mask: ignore_index}
        steps.append(v2.RandomCrop(crop_size, pad_if_needed=True, fill=fill))
    if hflip:
        steps.append(v2.RandomHorizontalFlip(p=0.5))
    if color_jitter > 0:
        steps.append(v2.ColorJitter(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter))
    return v2.Compose(steps) if steps else v2.Identity()


def eval_transforms() -> v2.Transform:
    """Evaluation: images and masks unchanged (the paper scores whole images at their own size)."""
    return v2.Identity()


def pad_collate(
    batch: Sequence[tuple[Tensor, Tensor]], ignore_index: int = IGNORE_INDEX, size_divisor: int = 1
) -> tuple[Tensor, Tensor]:
    """Stack ``(image, mask)`` pairs of different sizes, padding at the bottom and right.

    Args:
        batch: uint8 images (3, H_i, W_i) with int masks (H_i, W_i), or (T, H_i, W_i) for a multi-task
            dataset (one channel a task); ``None`` entries (skipped bad samples) are dropped, and a batch of
            only those gives empty (0, 3, 1, 1) / (0, 1, 1) tensors.
        ignore_index: mask value of padded pixels (images are padded with 0).
        size_divisor: round the padded H and W up to a multiple of it (e.g. 32, the nets' output stride).

    Returns:
        plain tensors: images uint8 (N, 3, H, W) and masks int64 (N, H, W) or (N, T, H, W), H and W the
        batch's largest.
    """
    batch = [b for b in batch if b is not None]  # samples skipped by ``skip_bad`` load as None
    if not batch:
        return torch.zeros(0, 3, 1, 1, dtype=torch.uint8), torch.zeros(0, 1, 1, dtype=torch.int64)
    for image, mask in batch:
        if image.shape[-2:] != mask.shape[-2:]:
            raise ValueError(f"image {tuple(image.shape)} and mask {tuple(mask.shape)} differ in size")
    h = max(mask.shape[-2] for _, mask in batch)
    w = max(mask.shape[-1] for _, mask in batch)
    h, w = -(-h // size_divisor) * size_divisor, -(-w // size_divisor) * size_divisor
    images = torch.zeros(len(batch), batch[0][0].shape[0], h, w, dtype=torch.uint8)
    masks = torch.full((len(batch), *batch[0][1].shape[:-2], h, w), ignore_index, dtype=torch.int64)
    for i, (image, mask) in enumerate(batch):
        images[i, :, : image.shape[-2], : image.shape[-1]] = image.as_subclass(Tensor)
        masks[i, ..., : mask.shape[-2], : mask.shape[-1]] = mask.as_subclass(Tensor)
    return images, masks
