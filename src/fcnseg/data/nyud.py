"""NYUDv2 (NYU Depth V2) in the reference's layout: colour, depth and HHA inputs, Gupta et al.'s 40 classes.

The paper (arXiv:1411.4038, section 5, Table 4) trains on the 795 training images (``trainval`` = ``train`` +
``val`` here) and tests on 654 (``test``), with the split and 40-class labels of Gupta et al. (CVPR 2013). The
reference's data layer (``nyud_layers.py``) reads, under one folder ``root``:

* ``data/images/img_<id>.png``: colour, 8-bit RGB;
* ``data/depth/img_<id>.png``: depth, 16-bit grey in millimetres (filled in, no holes);
* ``data/hha/img_<id>.png``: HHA, 8-bit three channels (Gupta et al. ECCV 2014; :mod:`fcnseg.hha` makes
  them from depth);
* ``segmentation/img_<id>.mat``: labels, variable ``segmentation``, 0 = void and 1..40 the classes
  (loaded as 255 and 0..39, the reference's ``label - 1`` in uint8);
* ``<split>.txt``: ids, one a line (the reference's lists also ship in this package and are used when the
  folder has none).

Inputs by ``modality``, as the reference's nets take them (images stay uint8 through the transforms and are
normalised on the device by the checkpoint's :class:`~fcnseg.normalization.Normalization`):

=========== ======== =====================================================================================
modality    channels normalisation (registered names; the reference's means, Caffe's BGR 0-255)
=========== ======== =====================================================================================
``rgb``     3        ``nyud_rgb``: BGR mean (116.190, 97.203, 92.318)
``hha``     3        ``nyud_hha``: HHA mean (132.431, 94.076, 118.477)
``rgbd``    4        ``nyud_rgbd``: colour as ``nyud_rgb``, then log depth minus 7.844 (the reference's
                     ``log(depth_mm) - mean_logd``), through the 8-bit code of :func:`encode_log_depth`
``rgb_hha`` 6        ``nyud_rgb_hha``: colour as ``nyud_rgb``, then HHA as ``nyud_hha`` (late fusion splits
                     the channels between its two nets)
=========== ======== =====================================================================================

For EfficientNet-Lite encoders, ``nyud_rgbd_lite`` and ``nyud_rgb_hha_lite`` apply the Lite weights'
``(x - 127) / 128`` to the colour and HHA channels instead (``efficientnet_lite`` alone serves ``rgb`` and
``hha``).
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from ..classes import voc_palette
from ..errors import ConfigError
from ..io import read_depth, read_header
from ..normalization import Normalization, register_normalization
from .base import (
    DataError,
    SegmentationDataset,
    Transforms,
    read_ids,
    read_image,
    read_mat_labels,
    require_dir,
    with_skip_hint,
)

__all__ = [
    "NYUD_CLASSES", "NYUD_MODALITIES", "NYUD_CHANNELS", "NYUDv2", "nyud_split_ids", "encode_log_depth",
    "decode_log_depth", "LOG_DEPTH_MEAN", "NYUD_RGB", "NYUD_HHA", "NYUD_RGBD", "NYUD_RGB_HHA",
]

NYUD_MODALITIES = ("rgb", "rgbd", "hha", "rgb_hha")
"""Inputs of the paper's Table 4: colour, colour + depth (early fusion), HHA, colour and HHA (late fusion)."""

NYUD_CHANNELS = {"rgb": 3, "rgbd": 4, "hha": 3, "rgb_hha": 6}

_SPLITS = ("train", "val", "test", "trainval")


def _packaged(name: str) -> list[str]:
    text = resources.files("fcnseg.data").joinpath(f"splits/{name}").read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


NYUD_CLASSES = _packaged("nyud_classes.txt")
"""Gupta et al.'s 40 classes in the reference's output order (``data/nyud/classes.txt``): wall ... otherprop."""


def nyud_split_ids(split: str) -> list[str]:
    """The reference's ids of ``split``: train (381), val (414), trainval (795, the paper's training set) or test
    (654, the paper's test set), as shipped in the package."""
    if split == "trainval":
        return nyud_split_ids("train") + nyud_split_ids("val")
    if split not in _SPLITS:
        raise ConfigError(f"no packaged NYUDv2 split {split!r}; packaged: {', '.join(_SPLITS)}",
                          fix="choose one of them as the split")
    return _packaged(f"nyud_{split}.txt")


# --- log depth as one 8-bit channel --------------------------------------------------------------------------
# The reference feeds log(depth in mm) - 7.844 as a float. fcnseg's inputs are uint8 until normalisation, so
# the log depth is stored as a code: LOG_DEPTH_STEP codes per unit of log depth from LOG_DEPTH_MIN, which spans
# 365 mm (code 0) to 10.9 m (code 255; NYUDv2's Kinect reads up to about 10 m) in steps of 1.3% of the depth.
LOG_DEPTH_MIN = 5.9
LOG_DEPTH_STEP = 75.0
LOG_DEPTH_MEAN = 7.844
"""The reference's ``mean_logd``: mean log depth (mm) of NYUDv2 training images."""


def encode_log_depth(depth_mm: np.ndarray) -> np.ndarray:
    """uint8 (H, W) code of a depth map in millimetres: ``round(75 * (ln(depth_mm) - 5.9))``, clipped to 0..255.

    Pixels without depth (0 or less) get the code of the mean log depth, which normalises to 0: no evidence
    either way (the reference's filled-in depth has no such pixels).
    """
    d = np.asarray(depth_mm, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        code = LOG_DEPTH_STEP * (np.log(d) - LOG_DEPTH_MIN)
    code = np.where(d > 0, code, LOG_DEPTH_STEP * (LOG_DEPTH_MEAN - LOG_DEPTH_MIN))
    return np.clip(np.floor(code + 0.5), 0, 255).astype(np.uint8)


def decode_log_depth(code: np.ndarray) -> np.ndarray:
    """Depth in millimetres (float64) of :func:`encode_log_depth`'s codes."""
    return np.exp(np.asarray(code, dtype=np.float64) / LOG_DEPTH_STEP + LOG_DEPTH_MIN)


_RESTORE = "restore the file from the NYUDv2 archive"
_BGR_MEAN = (116.190, 97.203, 92.318)  # the reference's mean_bgr for NYUDv2 colour images
_HHA_MEAN = (132.431, 94.076, 118.477)  # the reference's mean_hha
# On the code: (code - 75 * (7.844 - 5.9)) / 75 = ln(depth_mm) - 7.844, the reference's depth input.
_DEPTH_MEAN, _DEPTH_STD = LOG_DEPTH_STEP * (LOG_DEPTH_MEAN - LOG_DEPTH_MIN), LOG_DEPTH_STEP
_LITE = (127.0, 128.0)  # EfficientNet-Lite's (x - 127) / 128

NYUD_RGB = register_normalization(Normalization("nyud_rgb", mean=_BGR_MEAN, bgr=True, scale=255.0))
NYUD_HHA = register_normalization(Normalization("nyud_hha", mean=_HHA_MEAN, bgr=False, scale=255.0))
NYUD_RGBD = register_normalization(Normalization(
    "nyud_rgbd", mean=(*_BGR_MEAN, _DEPTH_MEAN), std=(1.0, 1.0, 1.0, _DEPTH_STD), bgr=True, scale=255.0))
NYUD_RGB_HHA = register_normalization(Normalization(
    "nyud_rgb_hha", mean=(*_BGR_MEAN, *_HHA_MEAN), std=(1.0,) * 6, bgr=True, scale=255.0))
register_normalization(Normalization("nyud_rgbd_lite", mean=(_LITE[0],) * 3 + (_DEPTH_MEAN,),
                                     std=(_LITE[1],) * 3 + (_DEPTH_STD,), scale=255.0))
register_normalization(Normalization("nyud_rgb_hha_lite", mean=(_LITE[0],) * 6, std=(_LITE[1],) * 6, scale=255.0))


class NYUDv2(SegmentationDataset):
    """NYUDv2 in the reference's layout (module docstring), 40 classes, one of four input modalities.

    Args:
        root: the folder holding ``data/`` and ``segmentation/`` (the reference's ``data/nyud``).
        split: ``"trainval"`` (the paper's 795 training images), ``"test"`` (654), ``"train"``, ``"val"``, or
            any ``<root>/<split>.txt``; a list in ``root`` wins over the packaged one.
        transforms: optional ``transforms(image, mask) -> (image, mask)``.
        modality: ``"rgb"``, ``"rgbd"`` (4 channels), ``"hha"`` or ``"rgb_hha"`` (6 channels).
    """

    def __init__(self, root: str | Path, split: str = "trainval", transforms: Transforms | None = None,
                 modality: str = "rgb"):
        if modality not in NYUD_MODALITIES:
            raise ConfigError(f"unknown NYUDv2 modality {modality!r}; choose one of {', '.join(NYUD_MODALITIES)}",
                              fix="pass {dataset_args} modality=NAME to one of them")
        self.root, self.modality = require_dir(Path(root), "NYUDv2 dataset", "pass the reference's data/nyud folder "
                                               "(with data/images/ and segmentation/) as {data_root}"), modality
        fix = ("pass the NYUDv2 folder of the reference (nyud.tar.gz: data/images, data/depth, data/hha, "
               "segmentation) as {data_root}")
        folders = {m: require_dir(self.root / "data" / m, f"NYUDv2 {m}", fix) for m in self._modality_folders()}
        labels = require_dir(self.root / "segmentation", "NYUDv2 segmentation", fix)
        list_file = self.root / f"{split}.txt"
        if list_file.is_file() or split not in _SPLITS:
            ids = read_ids(list_file, f"choose split {', '.join(_SPLITS)} or write {list_file}")
            source = str(list_file)
        else:
            ids, source = nyud_split_ids(split), f"the packaged NYUDv2 {split} split"
        for folder in folders.values():  # every input file of every sample, one listing per folder
            have = set(os.listdir(folder))
            for i in ids:
                if f"img_{i}.png" not in have:
                    raise DataError(f"{folder / f'img_{i}.png'}: file of id {i!r} listed in {source} not found",
                                    fix="restore it, or remove the id from the split", path=folder / f"img_{i}.png")
        primary = folders["hha" if modality == "hha" else "images"]
        samples = [(primary / f"img_{i}.png", labels / f"img_{i}.mat") for i in ids]
        super().__init__(samples, NYUD_CLASSES, voc_palette(len(NYUD_CLASSES) + 1)[1:], transforms)

    def __repr__(self) -> str:
        return f"NYUDv2({str(self.root)!r}, modality={self.modality!r}, {len(self)} samples)"

    def _modality_folders(self) -> list[str]:
        return {"rgb": ["images"], "rgbd": ["images", "depth"], "hha": ["hha"],
                "rgb_hha": ["images", "hha"]}[self.modality]

    def extra_files(self, image_path: Path) -> list[Path]:
        """The files besides ``image_path`` that a sample's input reads (depth or HHA), in channel order."""
        extra = {"rgbd": ["depth"], "rgb_hha": ["hha"]}.get(self.modality, [])
        return [image_path.parent.parent / folder / image_path.name for folder in extra]

    def load_image(self, path: Path) -> torch.Tensor:
        """uint8 (C, H, W): colour, colour + log-depth code, HHA, or colour + HHA (see the module docstring)."""
        image = read_image(path, max_pixels=self.max_pixels)  # (3, H, W): colour, or HHA for modality "hha"
        parts = [image]
        for extra in self.extra_files(path):
            if extra.parent.name == "depth":
                part = torch.from_numpy(encode_log_depth(read_depth(extra, max_pixels=self.max_pixels)))[None]
            else:
                part = read_image(extra, max_pixels=self.max_pixels)
            if part.shape[1:] != image.shape[1:]:
                raise DataError(f"{extra}: is {part.shape[2]}x{part.shape[1]} (WxH) but its colour image {path} is "
                                f"{image.shape[2]}x{image.shape[1]}", fix=_RESTORE, path=extra)
            parts.append(part)
        return torch.cat(parts) if len(parts) > 1 else image

    def _check_sample(self, i: int, level: str) -> tuple[str, str]:
        verdict = super()._check_sample(i, level)  # "full" decodes load_image: the extra files too
        if verdict[0] == "bad" or level == "full" or not self.extra_files(self.samples[i][0]):
            return verdict
        image_path = self.samples[i][0]
        try:
            size = read_header(image_path, max_pixels=self.max_pixels).size
            for extra in self.extra_files(image_path):
                other = read_header(extra, max_pixels=self.max_pixels).size
                if other != size:
                    raise DataError(f"{extra}: is {other[0]}x{other[1]} (WxH) but its colour image {image_path} is "
                                    f"{size[0]}x{size[1]}", fix=_RESTORE, path=extra)
        except DataError as e:
            return "bad", str(with_skip_hint(e))
        return verdict

    def _fingerprint(self) -> dict[str, object]:
        return {**super()._fingerprint(), "modality": self.modality}

    def mask_size(self, path: Path) -> tuple[int, int] | None:
        return None  # a .mat file has no image header: only decoding tells its size

    def load_mask(self, path: Path) -> np.ndarray:
        """Labels (H, W): the ``.mat``'s ``segmentation`` minus 1, void (0) as 255."""
        raw = read_mat_labels(path, "segmentation", "NYUDv2 labels", "use the reference's NYUDv2 segmentation/ "
                              "files (40-class labels of Gupta et al.), or pass {skip_bad} to skip it")
        labels = raw - 1
        labels[raw == 0] = self.ignore_index  # void
        return labels

    def _label_hint(self, values: np.ndarray) -> str:
        return " (NYUDv2 .mat labels are 0 = void and 1..40; they load as 255 and 0..39)"
