"""Decoded samples kept in memory, so a training run decodes each JPEG/PNG once instead of once an epoch."""

from __future__ import annotations

import logging
import os

import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from ..errors import ConfigError
from ..progress import Progress
from .base import DataError, SegmentationDataset

__all__ = ["DecodedCache", "decoded_bytes", "available_memory", "cache_decision", "CACHE_MODES"]

log = logging.getLogger("fcnseg.data")

CACHE_MODES = ("auto", "on", "off")
"""``auto``: cache when the decoded split fits (:func:`cache_decision`); ``on``: always; ``off``: never."""

MAX_AUTO_BYTES = 4 * 2**30
"""``auto`` caches at most this much (and at most a quarter of the memory available)."""


def available_memory() -> int:
    """Bytes of memory available to new allocations (``MemAvailable``), or 0 when unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


def decoded_bytes(ds: SegmentationDataset) -> int:
    """Estimated memory of the whole split decoded (uint8 image and mask), from its first sample."""
    for i in range(min(len(ds), 8)):  # the first sample that loads (bad ones may be skipped later)
        try:
            image, mask = ds.load(i)
        except DataError:
            continue
        return (image.numel() + mask.numel()) * len(ds)  # uint8 image, uint8 mask (DecodedCache's layout)
    return 0


def cache_decision(ds: SegmentationDataset, mode: str) -> tuple[bool, str]:
    """Whether to cache ``ds`` under ``mode`` (:data:`CACHE_MODES`), and why, for the log."""
    if mode not in CACHE_MODES:
        raise ConfigError(f"cache must be one of {', '.join(CACHE_MODES)}, not {mode!r}",
                          fix=f"set {{cache}} to {', '.join(CACHE_MODES)}")
    if mode != "auto":
        return mode == "on", f"cache={mode}"
    need, free = decoded_bytes(ds), available_memory()
    budget = min(MAX_AUTO_BYTES, free // 4) if free else MAX_AUTO_BYTES // 4
    reason = f"decoded split ~{need / 2**20:.0f} MiB, budget {budget / 2**20:.0f} MiB"
    return need <= budget, reason


class DecodedCache(Dataset):
    """``ds``'s samples decoded once, up front, and kept as uint8 tensors (``ds`` has no transforms).

    Built in the main process before loader workers start, so forked workers share the memory. A sample
    that ``ds`` skips (``skip_bad``) stays ``None``. Masks are stored as uint8 (every label of a dataset with
    at most 255 classes, and the ignore label 255, fits); the collate function widens them to int64.
    """

    def __init__(self, ds: SegmentationDataset, *, progress: bool = True):
        if ds.transforms is not None:  # a programming error, not a user's: commands wire the cache
            raise ValueError("DecodedCache keeps samples before augmentation: give it a dataset without transforms")
        if ds.num_classes > 255:
            raise ConfigError(f"{ds}: {ds.num_classes} classes do not fit the cache's uint8 masks",
                              fix="set {cache} off")
        self.dataset = ds
        self.items: list[tuple[tv_tensors.Image, tv_tensors.Mask] | None] = []
        with Progress(len(ds), "cache", "img", enabled=progress) as bar:
            for i in range(len(ds)):
                sample = ds[i]
                if sample is not None:
                    image, mask = sample
                    sample = (tv_tensors.Image(image.as_subclass(torch.Tensor).contiguous()),
                              tv_tensors.Mask(mask.as_subclass(torch.Tensor).to(torch.uint8)))
                self.items.append(sample)
                bar.update(1)
        self.nbytes = sum(im.numel() + m.numel() for s in self.items if s is not None for im, m in [s])

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[tv_tensors.Image, tv_tensors.Mask] | None:
        return self.items[i]

