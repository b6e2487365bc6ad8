"""What every fcnseg dataset shares: the sample contract, decoding, and errors that name the file and the fix.

A dataset is a list of ``(image path, mask path)`` pairs plus class names and a palette. Cheap checks (folders
exist, every image has its mask, the split is not empty) run at construction; decoding checks (readable,
not truncated, mask size equals image size, labels are classes or the ignore label) run in ``__getitem__``
and, over the whole dataset, in :meth:`SegmentationDataset.check`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors
from tqdm import tqdm

from ..io import DataError, open_mask, read_image

__all__ = [
    "IGNORE_INDEX", "DataError", "SegmentationDataset", "Transforms", "read_image", "open_mask",
    "index_array", "read_class_table", "split_class_table", "require_dir", "read_ids",
]

log = logging.getLogger(__name__)

IGNORE_INDEX = 255
"""Label of pixels that are neither learned nor scored: the VOC border/void label."""

Transforms = Callable[[tv_tensors.Image, tv_tensors.Mask], tuple[tv_tensors.Image, tv_tensors.Mask]]

_SKIP_FIX = "or drop it with dataset.check(skip_bad=True)"


class SegmentationDataset(Dataset[tuple[tv_tensors.Image, tv_tensors.Mask]]):
    """``(image, mask)`` pairs: ``Image`` uint8 (3, H, W) RGB and ``Mask`` int64 (H, W), 255 = ignore.

    Subclasses collect ``samples`` and implement :meth:`load_mask`; this class decodes, validates and applies
    ``transforms(image, mask)``.

    Attributes:
        samples: ``(image path, mask path)`` per sample; :meth:`check` with ``skip_bad=True`` shortens it.
        classes: class names; label ``i`` is ``classes[i]``.
        palette: one RGB colour per class, for drawing predictions.
        ignore_index: label of pixels excluded from loss and metrics (255).
        transforms: optional ``transforms(image, mask) -> (image, mask)``.
    """

    ignore_index: int = IGNORE_INDEX

    def __init__(
        self,
        samples: Sequence[tuple[Path, Path]],
        classes: Sequence[str],
        palette: Sequence[tuple[int, int, int]],
        transforms: Transforms | None = None,
    ):
        if len(palette) < len(classes):
            raise ValueError(f"palette has {len(palette)} colours for {len(classes)} classes")
        self.samples = list(samples)
        self.classes = list(classes)
        self.palette = [tuple(int(v) for v in c) for c in palette[: len(classes)]]
        self.transforms = transforms

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.samples)

    def files(self, i: int) -> tuple[Path, Path]:
        """``(image path, mask path)`` of sample ``i``."""
        return self.samples[i]

    def load_mask(self, path: Path) -> np.ndarray:
        """Read one mask file as integer labels (H, W) in this dataset's class indices, 255 = ignore."""
        raise NotImplementedError

    def load(self, i: int) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        """Decode and validate sample ``i`` without transforms; raises :class:`DataError` on a bad sample."""
        image_path, mask_path = self.samples[i]
        image = read_image(image_path)  # (3, H, W) uint8
        labels = self.load_mask(mask_path)  # (H, W)
        if tuple(labels.shape) != tuple(image.shape[1:]):
            raise DataError(
                f"{mask_path}: mask is {labels.shape[1]}x{labels.shape[0]} (WxH) but its image "
                f"{image_path} is {image.shape[2]}x{image.shape[1]}; fix: give the mask the image's size "
                f"(resize with nearest neighbour) or pair the right files, {_SKIP_FIX}"
            )
        bad = (labels < 0) | ((labels >= self.num_classes) & (labels != self.ignore_index))
        if bad.any():
            values = np.unique(labels[bad])
            shown = ", ".join(str(v) for v in values[:8]) + (", ..." if len(values) > 8 else "")
            raise DataError(
                f"{mask_path}: label values {shown} are neither a class (0..{self.num_classes - 1}) nor the "
                f"ignore label {self.ignore_index}; fix: relabel the mask or give the dataset its full class "
                f"list, {_SKIP_FIX}"
            )
        return tv_tensors.Image(image), tv_tensors.Mask(torch.from_numpy(labels.astype(np.int64, copy=False)))

    def __getitem__(self, i: int) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        image, mask = self.load(i)
        if self.transforms is not None:
            image, mask = self.transforms(image, mask)
        return image, mask

    def check(self, skip_bad: bool = False, progress: bool = True) -> list[str]:
        """Decode and validate every sample.

        With ``skip_bad=False`` the first bad sample raises its :class:`DataError`. With ``skip_bad=True`` bad
        samples are dropped from the dataset, each with a logged warning, and their messages are returned
        (an empty list when all samples are good).
        """
        keep, messages = [], []
        for i in tqdm(range(len(self)), desc=f"checking {type(self).__name__}", disable=not progress):
            try:
                self.load(i)
            except DataError as e:
                if not skip_bad:
                    raise
                log.warning("dropping bad sample: %s", e)
                messages.append(str(e))
            else:
                keep.append(self.samples[i])
        if skip_bad:
            if not keep and self.samples:
                raise DataError(f"every sample is bad, e.g. {messages[0]}")
            self.samples = keep
        return messages

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} samples, {self.num_classes} classes)"


def index_array(im: Image.Image, path: Path) -> np.ndarray:
    """Labels (H, W) of a single-channel index mask: palette ("P") PNGs give their indices, not colours."""
    if im.mode not in ("P", "L", "I", "I;16", "1"):
        raise DataError(
            f"{path}: mask has mode {im.mode}, expected single-channel labels (palette or grey PNG); fix: "
            f"save class indices as an 8-bit PNG (for RGB colour masks use FolderSegmentation with a colour "
            f"table)"
        )
    return np.asarray(im).astype(np.int64)


def read_class_table(path: Path) -> list[tuple[int, str, tuple[int, int, int] | None]]:
    """Parse a class list: one class a line, ``name``, ``index name`` or ``index name r g b``.

    Blank lines and lines starting with ``#`` are skipped; without an index a line's index is its position
    among the class lines. Returns ``(index, name, colour or None)`` rows in file order.
    """
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        tokens = line.split()
        if not tokens or tokens[0].startswith("#"):
            continue
        index = len(rows)
        if len(tokens) > 1 and tokens[0].isdigit():
            index = int(tokens.pop(0))
        colour = None
        if len(tokens) >= 4 and all(t.isdigit() for t in tokens[-3:]):
            colour = tuple(int(t) for t in tokens[-3:])
            tokens = tokens[:-3]
            if max(colour) > 255:
                raise DataError(f"{path}:{n}: colour {colour} is not 8-bit RGB; fix: use values 0..255")
        rows.append((index, " ".join(tokens), colour))
    if not rows:
        raise DataError(f"{path}: no classes listed; fix: write one class name a line")
    return rows


def split_class_table(
    rows: list[tuple[int, str, tuple[int, int, int] | None]], path: Path, ignore_index: int = IGNORE_INDEX
) -> tuple[list[str], list[tuple[int, int, int] | None], list[tuple[int, int, int]]]:
    """Class names and colours in index order, and the colours of ``ignore_index`` rows (e.g. VOC's void).

    Raises :class:`DataError` unless the class indices are exactly ``0..n-1``.
    """
    classes = sorted((r for r in rows if r[0] != ignore_index), key=lambda r: r[0])
    if [r[0] for r in classes] != list(range(len(classes))):
        raise DataError(
            f"{path}: class indices {[r[0] for r in classes]} are not 0..{len(classes) - 1}, each once; fix: "
            f"number the classes from 0 without gaps (use {ignore_index} for an ignored colour)"
        )
    ignored = [r[2] for r in rows if r[0] == ignore_index and r[2] is not None]
    return [r[1] for r in classes], [r[2] for r in classes], ignored


def require_dir(path: Path, what: str, fix: str) -> Path:
    """``path`` if it is a directory, else :class:`DataError` saying ``fix``."""
    if not path.is_dir():
        raise DataError(f"{path}: {what} folder not found; fix: {fix}")
    return path


def read_ids(path: Path, fix: str) -> list[str]:
    """Non-empty, stripped lines of a split file; :class:`DataError` when it is missing or empty."""
    if not path.is_file():
        raise DataError(f"{path}: split file not found; fix: {fix}")
    ids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise DataError(f"{path}: split file lists no samples (empty split); fix: list one id a line")
    return ids
