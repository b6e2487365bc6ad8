"""PASCAL VOC segmentation and the Semantic Boundaries Dataset (SBD), the paper's PASCAL data.

The paper (arXiv:1411.4038, section 4.3 and table 3, following Hariharan et al.) trains on the 8,498 SBD
training images and reports on ``seg11valid``: the 736 images of VOC2011 segmentation val that are not in SBD
train. ``SBDSegmentation(root, "train_noval")`` and ``VOCSegmentation(root, "seg11valid")`` are those sets;
the id list ships in ``fcnseg/data/splits/seg11valid.txt`` (from the reference fcn.berkeleyvision.org).
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import numpy as np
from scipy.io import loadmat

from ..classes import VOC_CLASSES, voc_palette
from .base import DataError, SegmentationDataset, Transforms, index_array, open_mask, read_ids, require_dir

__all__ = ["VOC_CLASSES", "voc_palette", "seg11valid_ids", "VOCSegmentation", "SBDSegmentation"]


def seg11valid_ids() -> list[str]:
    """The paper's 736 VOC2011 validation ids (VOC2011 seg val minus SBD train), as shipped in the package."""
    text = resources.files("fcnseg.data").joinpath("splits/seg11valid.txt").read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


class VOCSegmentation(SegmentationDataset):
    """PASCAL VOC segmentation in the VOCdevkit layout: ``JPEGImages/<id>.jpg``,
    ``SegmentationClass/<id>.png`` (palette PNGs whose indices are the 21 classes, 255 = border/void) and
    ``ImageSets/Segmentation/<split>.txt``.

    Args:
        root: the year folder (``VOC2011``, ``VOC2012``), or a folder holding it, directly or in
            ``VOCdevkit/``.
        split: ``"seg11valid"`` (the paper's val, from the package) or any
            ``ImageSets/Segmentation/<split>.txt`` (``"train"``, ``"val"``, ``"trainval"``).
        transforms: optional ``transforms(image, mask) -> (image, mask)``.
        year: pick ``VOC<year>`` when ``root`` holds several years; by default the newest.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transforms: Transforms | None = None,
        year: str | None = None,
    ):
        self.root = _voc_year_dir(Path(root), year)
        images = require_dir(self.root / "JPEGImages", "VOC JPEGImages",
                             "pass a complete VOC year folder as {data_root}")
        masks = require_dir(self.root / "SegmentationClass", "VOC SegmentationClass",
                            "pass a VOC year folder with segmentations as {data_root}")
        if split == "seg11valid":
            ids = seg11valid_ids()
            source = "the paper's seg11valid split (VOC2011 val)"
        else:
            split_dir = self.root / "ImageSets" / "Segmentation"
            have = sorted(p.stem for p in split_dir.glob("*.txt")) + ["seg11valid"]
            ids = read_ids(split_dir / f"{split}.txt", f"choose one of the splits {', '.join(have)}")
            source = str(split_dir / f"{split}.txt")
        samples = _pair_ids(ids, images, ".jpg", masks, ".png", source)
        super().__init__(samples, VOC_CLASSES, voc_palette(len(VOC_CLASSES)), transforms)

    def load_mask(self, path: Path) -> np.ndarray:
        return index_array(open_mask(path, max_pixels=self.max_pixels), path)


class SBDSegmentation(SegmentationDataset):
    """The Semantic Boundaries Dataset (Hariharan et al. 2011), ``benchmark_RELEASE/dataset/`` layout:
    ``img/<id>.jpg``, ``cls/<id>.mat`` (struct ``GTcls``, field ``Segmentation``: labels 0..20), and
    ``train.txt`` / ``val.txt``. The classes and palette are VOC's.

    Args:
        root: the ``dataset`` folder, ``benchmark_RELEASE`` or the folder holding ``benchmark_RELEASE``.
        split: ``"train"`` (8,498 ids), ``"val"`` (2,857), ``"train_noval"`` (SBD train minus the ids of
            ``seg11valid``: the paper's training set) or any ``<split>.txt`` in the dataset folder.
        transforms: optional ``transforms(image, mask) -> (image, mask)``.
    """

    def __init__(self, root: str | Path, split: str = "train", transforms: Transforms | None = None):
        root = require_dir(Path(root), "SBD dataset", "pass the SBD benchmark_RELEASE/dataset folder as {data_root}")
        candidates = (root, root / "dataset", root / "benchmark_RELEASE" / "dataset")
        found = [d for d in candidates if (d / "cls").is_dir()]
        if not found:
            raise DataError(
                f"{root}: no SBD cls/ folder in it, in dataset/ or in benchmark_RELEASE/dataset/", path=root,
                fix="pass the SBD benchmark_RELEASE/dataset folder (with img/, cls/, train.txt, val.txt) as "
                    "{data_root}")
        self.root = found[0]
        images = require_dir(self.root / "img", "SBD img", "pass a complete SBD dataset folder as {data_root}")
        fix = "use split 'train', 'val' or 'train_noval', or pass a complete SBD dataset folder as {data_root}"
        split_file = self.root / f"{'train' if split == 'train_noval' else split}.txt"
        ids = read_ids(split_file, fix)
        if split == "train_noval":
            held_out = set(seg11valid_ids())
            ids = [i for i in ids if i not in held_out]
            if not ids:
                raise DataError(f"{split_file}: no ids left after removing seg11valid (empty split)",
                                fix="restore the complete SBD train.txt", path=split_file)
        samples = _pair_ids(ids, images, ".jpg", self.root / "cls", ".mat", str(split_file))
        super().__init__(samples, VOC_CLASSES, voc_palette(len(VOC_CLASSES)), transforms)

    def mask_size(self, path: Path) -> tuple[int, int] | None:
        return None  # a .mat file has no image header: only decoding tells its size

    def load_mask(self, path: Path) -> np.ndarray:
        try:
            labels = loadmat(path, simplify_cells=True)["GTcls"]["Segmentation"]
        except Exception as e:  # scipy raises many types on corrupt files: ValueError, OSError, zlib.error...
            raise DataError(
                f"{path}: cannot read SBD label struct GTcls.Segmentation ({type(e).__name__}: {e})", path=path,
                fix="re-extract the file from the SBD archive, or pass {skip_bad} to skip it") from e
        labels = np.asarray(labels)
        if labels.ndim != 2 or labels.dtype.kind not in "iu":
            raise DataError(
                f"{path}: GTcls.Segmentation is {labels.dtype} of shape {labels.shape}, expected 2-D integer "
                f"labels", fix="re-extract the file from the SBD archive", path=path)
        return labels.astype(np.int64)


def _voc_year_dir(root: Path, year: str | None) -> Path:
    require_dir(root, "VOC dataset", "pass the VOC2011/VOC2012 folder (or the VOCdevkit holding it) as {data_root}")
    if (root / "JPEGImages").is_dir() and (year is None or root.name == f"VOC{year}"):
        return root
    years = sorted(
        d for d in [*root.glob("VOC20*"), *root.glob("VOCdevkit/VOC20*")] if (d / "JPEGImages").is_dir()
    )
    if year is not None:
        years = [d for d in years if d.name == f"VOC{year}"]
    if not years:
        raise DataError(
            f"{root}: no VOC year folder{f' VOC{year}' if year else ''} with JPEGImages/ in it or in "
            f"VOCdevkit/", path=root,
            fix="pass the VOC2011/VOC2012 folder (or the VOCdevkit holding it) as {data_root}")
    return max(years, key=lambda d: d.name)  # the newest year


def _pair_ids(
    ids: list[str], images: Path, image_ext: str, masks: Path, mask_ext: str, source: str
) -> list[tuple[Path, Path]]:
    """``(image, mask)`` paths of ``ids``; :class:`DataError` for the first missing file."""
    # One directory listing instead of a stat per id: VOC2012 has 17k images.
    have_images = set(os.listdir(images))  # a missing mask is found (or skipped) by validation
    samples = []
    for i in ids:
        image, mask = images / f"{i}{image_ext}", masks / f"{i}{mask_ext}"
        if image.name not in have_images:
            raise DataError(f"{image}: image of id {i!r} listed in {source} not found", path=image,
                            fix="restore the file or remove the id from the split")
        samples.append((image, mask))
    return samples
