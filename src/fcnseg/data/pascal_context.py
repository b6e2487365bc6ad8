"""PASCAL-Context (Mottaghi et al., CVPR 2014): whole-scene labels of PASCAL VOC 2010, the 59-class task.

The paper (PAMI 2016 version of arXiv:1411.4038, section 5) follows the 59-class task, "the most frequent
classes", training on VOC2010 ``train`` (4,998 images) and scoring ``val`` (5,105). The reference's data layer
(``pascalcontext_layers.py``) reads:

* images: ``VOC2010/JPEGImages/<id>.jpg``, ids from ``VOC2010/ImageSets/Main/<split>.txt``;
* labels: ``<context>/trainval/<id>.mat``, variable ``LabelMap``: the full annotation, 459 class numbers
  (1..459, named in the dataset's ``labels.txt``, shipped here as ``splits/pascal_context_459.txt``);
* the 59 classes (``59_labels.txt``, shipped as ``splits/pascal_context_59.txt`` with ``0: background``),
  matched to the 459 by name with spaces removed; three are spelled differently in the two lists and
  matched as the reference does: diningtable = table, bedcloth = bedclothes, clothes = cloth.

Labels, ``background=`` argument:

* ``"class"`` (default, the reference and so the paper's numbers): 60 labels, 0 = background holding every
  pixel outside the 59 classes (other classes and unlabelled), 1..59 the classes; the net has 60 outputs and
  the metrics average over all 60.
* ``"ignore"``: 59 labels 0..58; every pixel outside them is the ignore label 255 (neither learned nor scored).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np

from ..classes import voc_palette
from ..errors import ConfigError
from .base import DataError, SegmentationDataset, Transforms, read_ids, read_mat_labels, require_dir
from .voc import _pair_ids, _voc_year_dir

__all__ = ["PASCAL_CONTEXT_59", "PASCAL_CONTEXT_459", "context_label_table", "PascalContext"]


def _numbered(name: str) -> dict[int, str]:
    """``{number: name}`` of a shipped ``N: name`` list."""
    text = resources.files("fcnseg.data").joinpath(f"splits/{name}").read_text()
    rows = [line.split(":", 1) for line in text.splitlines() if line.strip()]
    return {int(n): label.strip() for n, label in rows}


PASCAL_CONTEXT_459 = _numbered("pascal_context_459.txt")
"""The full annotation's classes by their ``LabelMap`` number, 1..459 (the dataset's ``labels.txt``)."""

_59 = _numbered("pascal_context_59.txt")
PASCAL_CONTEXT_59 = [_59[i] for i in range(1, 60)]
"""The 59 classes of the task in the reference's output order (after background, label 0)."""

# Names of the 59-class list that the 459-class list spells differently (the reference's renames).
_SAME_CLASS = {"diningtable": "table", "bedcloth": "bedclothes", "clothes": "cloth"}

BACKGROUND_POLICIES = ("class", "ignore")


_VOC_FIX = "pass {dataset_args} voc_root=/path/to/VOC2010 (PASCAL-Context labels VOC2010's images)"


def context_label_table(background: str = "class") -> np.ndarray:
    """Lookup table (460,) int64 from ``LabelMap`` numbers (0 = unlabelled, 1..459) to training labels.

    ``background="class"``: the 59 classes are 1..59, everything else 0; ``"ignore"``: they are 0..58,
    everything else 255.
    """
    if background not in BACKGROUND_POLICIES:
        raise ConfigError(f"background must be one of {', '.join(BACKGROUND_POLICIES)}, not {background!r}",
                          fix="pass {dataset_args} background=class or background=ignore")
    by_name = {name.replace(" ", ""): n for n, name in PASCAL_CONTEXT_459.items()}
    offset, other = (0, 0) if background == "class" else (-1, 255)
    table = np.full(max(PASCAL_CONTEXT_459) + 1, other, dtype=np.int64)
    for label, name in enumerate(PASCAL_CONTEXT_59, 1):
        table[by_name[_SAME_CLASS.get(name, name)]] = label + offset
    return table


class PascalContext(SegmentationDataset):
    """PASCAL-Context's 59-class task over VOC2010 images (module docstring for the layout and labels).

    Args:
        root: the PASCAL-Context folder holding ``trainval/<id>.mat`` (the reference's ``data/pascal-context``).
        split: ``"train"`` or ``"val"`` (VOC2010 ``ImageSets/Main``), or any ``<root>/<split>.txt``.
        transforms: optional ``transforms(image, mask) -> (image, mask)``.
        voc_root: the VOC2010 folder (or one holding it, directly or in ``VOCdevkit/``); by default it is looked
            for in ``root``, beside it, and in ``../pascal`` (the reference's ``data/pascal/VOC2010``).
        background: ``"class"`` (60 labels, the reference's) or ``"ignore"`` (59 labels, the rest 255).
    """

    def __init__(self, root: str | Path, split: str = "train", transforms: Transforms | None = None,
                 voc_root: str | None = None, background: str = "class"):
        self.table = context_label_table(background)
        self.background = background
        self.root = require_dir(Path(root), "PASCAL-Context",
                                "pass the PASCAL-Context folder (with trainval/) as {data_root}")
        labels = require_dir(self.root / "trainval", "PASCAL-Context trainval", "pass the PASCAL-Context "
                             "folder with the trainval/ .mat files (trainval.tar.gz) as {data_root}")
        self.voc = self._find_voc(voc_root)
        images = require_dir(self.voc / "JPEGImages", "VOC2010 JPEGImages",
                             "pass {dataset_args} voc_root=DIR to a complete VOC2010 folder")
        own = self.root / f"{split}.txt"
        split_file = own if own.is_file() else self.voc / "ImageSets" / "Main" / f"{split}.txt"
        ids = read_ids(split_file, f"choose split train or val, or write {own}")
        samples = _pair_ids(ids, images, ".jpg", labels, ".mat", str(split_file))
        classes = ["background", *PASCAL_CONTEXT_59] if background == "class" else list(PASCAL_CONTEXT_59)
        palette = voc_palette(60) if background == "class" else voc_palette(60)[1:]
        super().__init__(samples, classes, palette, transforms)

    def _find_voc(self, voc_root: str | None) -> Path:
        if voc_root:
            try:
                return _voc_year_dir(Path(voc_root), "2010")
            except DataError as e:  # the folder came from voc_root, not from data_root
                raise DataError(e.what, fix=_VOC_FIX, path=voc_root) from e
        tried = [self.root, self.root.parent, self.root.parent / "pascal"]
        for d in tried:
            try:
                return _voc_year_dir(d, "2010")
            except DataError:
                continue
        raise DataError(f"{self.root}: no VOC2010 folder found in {', '.join(map(str, tried))}", fix=_VOC_FIX,
                        path=self.root)

    def _fingerprint(self) -> dict[str, object]:
        return {**super()._fingerprint(), "background": self.background}

    def mask_size(self, path: Path) -> tuple[int, int] | None:
        return None  # a .mat file has no image header: only decoding tells its size

    def load_mask(self, path: Path) -> np.ndarray:
        """Labels (H, W) of the task from the full ``LabelMap`` (see :func:`context_label_table`)."""
        raw = read_mat_labels(path, "LabelMap", "PASCAL-Context labels", "use PASCAL-Context's trainval/ "
                              "annotation files (re-extract trainval.tar.gz), or pass {skip_bad} to skip it")
        bad = (raw < 0) | (raw >= len(self.table))
        if bad.any():
            values = ", ".join(str(v) for v in np.unique(raw[bad])[:8])
            raise DataError(f"{path}: 'LabelMap' values {values} are not PASCAL-Context class numbers (0..459)",
                            fix="re-extract the file from trainval.tar.gz, or pass {skip_bad} to skip it", path=path)
        return self.table[raw]
