"""SIFT Flow (Liu, Yuen & Torralba 2011): 2,688 outdoor scenes, 256x256, semantic and geometric labels.

The paper's multi-task experiment (arXiv:1411.4038, section 5, table 5) trains one net with two heads on it:
33 semantic classes and 3 geometric ones (sky, horizontal, vertical). Layout and label encoding follow the
reference's ``siftflow_layers.py`` (fcn.berkeleyvision.org)::

    <root>/Images/spatial_envelope_256x256_static_8outdoorcategories/<id>.jpg
    <root>/SemanticLabels/spatial_envelope_256x256_static_8outdoorcategories/<id>.mat   variable S: 0 void, 1-33
    <root>/GeoLabels/spatial_envelope_256x256_static_8outdoorcategories/<id>.mat        variable S: -1 void, 1-3
    <root>/trainval.txt, <root>/test.txt                                               ids, one a line

``GeoLabels/`` may be absent (no public copy of the geometric labels exists that we could find): the dataset
is then semantic-only, its masks (H, W), and a single-headed net (``fcn8s_efficientnet_lite0``...) trains and
is scored on the semantic task alone. ``geo=False`` reads a tree's semantic labels alone even where
``GeoLabels/`` is present.

Splits: ``"trainval"`` and ``"test"`` (the reference's lists, shipped), and ``"train"`` / ``"val"``, which
divide trainval by a stable hash of the ids, val taking ``holdout`` of them (10% by default): the reference
selects its model on test, which a model scored on test must not see.

As in the reference, labels are shifted down by one so the classes start at 0, and void (semantic 0,
geometric -1 or 0) becomes the ignore label 255. The split lists (2,486 trainval and 200 test ids; the two
images without annotations are in neither) ship in the package and are used when ``<root>`` has none.

With geometric labels, a sample's mask is a ``tv_tensors.Mask`` int64 (2, H, W): channel 0 the semantic
labels (0-32, 255 void), channel 1 the geometric labels (0-2, 255 void). The joint transforms resample both
channels together and ``pad_collate`` stacks them to (N, 2, H, W); the two-headed nets (``fcn16s_siftflow``...) return
``{"sem": ..., "geo": ...}`` logits in the same order, which the loss sums (as the reference does).

Scoring follows the reference's SIFT Flow rule (``present_only``): a class absent from the split's ground truth
is left out of mean IU (cow, desert and moon on the test split).
"""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path

import numpy as np

from ..classes import voc_palette
from ..errors import ConfigError, DataError
from ..normalization import Normalization, register_normalization
from .base import IGNORE_INDEX, SegmentationDataset, Transforms, holdout_ids, read_ids, read_mat_labels, require_dir

__all__ = ["SIFTFLOW_CLASSES", "SIFTFLOW_GEO_CLASSES", "SIFTFLOW_TASKS", "CAFFE_SIFTFLOW", "DEFAULT_HOLDOUT",
           "siftflow_ids", "holdout_ids", "SIFTFlow"]

SIFTFLOW_CLASSES = [
    "awning", "balcony", "bird", "boat", "bridge", "building", "bus", "car", "cow", "crosswalk", "desert", "door",
    "fence", "field", "grass", "moon", "mountain", "person", "plant", "pole", "river", "road", "rock", "sand",
    "sea", "sidewalk", "sign", "sky", "staircase", "streetlight", "sun", "tree", "window",
]
"""The 33 semantic classes, labels 0-32 (the .mat files' 1-33)."""

SIFTFLOW_GEO_CLASSES = ["sky", "horizontal", "vertical"]
"""The 3 geometric classes, labels 0-2 (the .mat files' 1-3)."""

SIFTFLOW_TASKS = ("sem", "geo")
"""Task names, in the order of the mask's channels and of the two-headed nets' outputs."""

# The reference's SIFT Flow data layer: BGR, 0-255, minus this dataset's mean pixel (B, G, R).
CAFFE_SIFTFLOW = register_normalization(
    Normalization("caffe_siftflow", mean=(114.578, 115.294, 108.353), bgr=True, scale=255.0))

log = logging.getLogger(__name__)

DEFAULT_HOLDOUT = 0.1
"""Share of trainval that splits ``"train"`` / ``"val"`` hold out for validation."""

_SUBDIR = "spatial_envelope_256x256_static_8outdoorcategories"
_SHIPPED_SPLITS = ("trainval", "test")
_HOLDOUT_SPLITS = ("train", "val")
_warned_semantic_only: set[str] = set()
_GEO_PALETTE = [(70, 130, 180), (128, 64, 128), (220, 180, 40)]  # sky blue, ground purple, upright ochre


def siftflow_ids(split: str) -> list[str]:
    """The reference's SIFT Flow ids of ``split`` (``"trainval"``: 2,486, ``"test"``: 200), from the package."""
    if split not in _SHIPPED_SPLITS:
        raise ConfigError(f"SIFT Flow ships splits {', '.join(_SHIPPED_SPLITS)}, not {split!r}",
                          fix="choose one of them as the split")
    text = resources.files("fcnseg.data").joinpath(f"splits/siftflow_{split}.txt").read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


class SIFTFlow(SegmentationDataset):
    """SIFT Flow in the reference's layout (see the module docstring); masks (2, H, W): semantic, geometric.

    ``classes`` and ``palette`` are the semantic task's (the first); :attr:`tasks` holds both tasks' names
    and colours.

    Args:
        root: the SIFT Flow folder (holding ``Images/``, ``SemanticLabels/`` and, optionally, ``GeoLabels/``).
        split: ``"trainval"`` or ``"test"`` (``<root>/<split>.txt`` if present, else the shipped list),
            ``"train"`` or ``"val"`` (trainval divided by ``holdout``, unless ``<root>/<split>.txt`` exists), or
            any ``<root>/<split>.txt``.
        transforms: optional ``transforms(image, mask) -> (image, mask)``, applied to all channels at once.
        holdout: for splits ``"train"`` / ``"val"``: val's share of trainval (0 < holdout < 1) or its count of
            images (holdout >= 1), the ids whose SHA-1 is lowest (stable across machines and file order).
        geo: read the geometric labels too: ``None`` (default) when ``GeoLabels/`` exists, ``True`` requires it
            (a two-task net), ``False`` reads the semantic labels alone.
    """

    present_only = True

    def __init__(self, root: str | Path, split: str = "trainval", transforms: Transforms | None = None,
                 holdout: float = DEFAULT_HOLDOUT, geo: bool | None = None):
        self.root = require_dir(Path(root), "SIFT Flow dataset", "pass the SIFT Flow folder (with "
                                "Images/ and SemanticLabels/) as {data_root}")
        fix = "pass the SIFT Flow folder with %s/" + _SUBDIR + "/ in it as {data_root}"
        images = require_dir(self.root / "Images" / _SUBDIR, "SIFT Flow images", fix % "Images")
        sem = require_dir(self.root / "SemanticLabels" / _SUBDIR, "SIFT Flow semantic labels",
                          fix % "SemanticLabels")
        geo_dir = self.root / "GeoLabels" / _SUBDIR
        if geo is None:
            geo = geo_dir.is_dir()
            if not geo and str(self.root) not in _warned_semantic_only:
                _warned_semantic_only.add(str(self.root))
                log.info("SIFT Flow at %s has no GeoLabels/: the semantic task alone (33 classes)", self.root)
        elif geo:
            require_dir(geo_dir, "SIFT Flow geometric labels", "a two-task net needs GeoLabels/" + _SUBDIR +
                        "/ in {data_root}, or choose a single-headed model (e.g. fcn8s_efficientnet_lite0) "
                        "for the semantic task alone")
        self.geo_dir: Path | None = geo_dir if geo else None
        ids, source = _split_ids(self.root, split, holdout)
        samples = []
        for i in ids:
            image = images / f"{i}.jpg"
            if not image.is_file():
                raise DataError(f"{image}: image of id {i!r} listed in {source} not found", path=image,
                                fix="restore the file or remove the id from the split")
            samples.append((image, sem / f"{i}.mat"))
        semantic = (SIFTFLOW_CLASSES, voc_palette(len(SIFTFLOW_CLASSES) + 1)[1:])
        if self.geo_dir is not None:
            self.tasks = {"sem": semantic, "geo": (SIFTFLOW_GEO_CLASSES, _GEO_PALETTE)}
        super().__init__(samples, *semantic, transforms)

    def geo_path(self, sem_path: Path) -> Path:
        """The geometric label file of the sample whose semantic label file is ``sem_path``."""
        if self.geo_dir is None:
            raise ConfigError(f"{self.root}: read without geometric labels", fix="pass geo=True to read GeoLabels/")
        return self.geo_dir / sem_path.name

    def sample_files(self, sample: tuple[Path, Path]) -> tuple[Path, ...]:
        return (*sample, self.geo_path(sample[1])) if self.geo_dir is not None else tuple(sample)

    def mask_size(self, path: Path) -> tuple[int, int] | None:
        return None  # a .mat file has no image header: only decoding tells its size

    def load_mask(self, path: Path) -> np.ndarray:
        """Stacked labels (2, H, W): semantic (0-32) and geometric (0-2), void 255, each file checked; the
        semantic labels (H, W) alone for a semantic-only dataset."""
        sem = _read_labels(path, "semantic", len(SIFTFLOW_CLASSES), void=(0,))
        if self.geo_dir is None:
            return sem
        geo_path = self.geo_path(path)
        geo = _read_labels(geo_path, "geometric", len(SIFTFLOW_GEO_CLASSES), void=(-1, 0))
        if sem.shape != geo.shape:
            raise DataError(f"{geo_path}: geometric labels are {geo.shape[1]}x{geo.shape[0]} (WxH) but the semantic "
                            f"ones {path} are {sem.shape[1]}x{sem.shape[0]}", path=geo_path,
                            fix="re-extract both from the SIFT Flow archive")
        return np.stack([sem, geo])

    def _check_labels(self, labels: np.ndarray, mask_path: Path) -> None:
        pass  # load_mask checks each file's values against its own task's classes

    def _fingerprint(self) -> dict[str, object]:
        return {**super()._fingerprint(), "tasks": SIFTFLOW_TASKS if self.geo_dir is not None else ("sem",)}


def _split_ids(root: Path, split: str, holdout: float) -> tuple[list[str], str]:
    """The ids of ``split`` and where they came from: ``<root>/<split>.txt`` if it exists, else the shipped
    list, else (``"train"`` / ``"val"``) trainval divided by :func:`holdout_ids`."""
    split_file = root / f"{split}.txt"
    if split_file.is_file() or split not in _SHIPPED_SPLITS + _HOLDOUT_SPLITS:
        ids = read_ids(split_file, f"use split {', '.join(_SHIPPED_SPLITS + _HOLDOUT_SPLITS)}, or write {split_file}")
        return ids, str(split_file)
    if split in _SHIPPED_SPLITS:
        return siftflow_ids(split), f"fcnseg's SIFT Flow {split} list"
    trainval_file = root / "trainval.txt"
    trainval = read_ids(trainval_file, "") if trainval_file.is_file() else siftflow_ids("trainval")
    val = set(holdout_ids(trainval, holdout, root))
    return [i for i in trainval if (i in val) == (split == "val")], f"trainval held out {holdout} for val"


def _read_labels(path: Path, what: str, num_classes: int, void: tuple[int, ...]) -> np.ndarray:
    """Variable ``S`` of a SIFT Flow label file as int64 labels: value ``v`` becomes class ``v - 1``, the
    ``void`` values the ignore label 255 (the reference's shift, which wraps 0 to 255 in uint8)."""
    if not path.is_file():
        raise DataError(f"{path}: {what} label file not found", fix="restore it from the SIFT Flow archive",
                        path=path)
    raw = read_mat_labels(path, "S", f"the {what} labels", "re-extract the file from the SIFT Flow archive")
    is_void = np.isin(raw, void)
    bad = ~is_void & ((raw < 1) | (raw > num_classes))
    if bad.any():
        values = ", ".join(str(v) for v in np.unique(raw[bad])[:8])
        raise DataError(f"{path}: {what} label values {values} are neither a class (1..{num_classes}) nor void "
                        f"({' or '.join(map(str, void))})", fix="re-extract the file from the SIFT Flow archive",
                        path=path)
    return np.where(is_void, IGNORE_INDEX, raw - 1)
