"""Segmentation datasets: ``(image, mask)`` pairs, ``Image`` uint8 (3, H, W) RGB and ``Mask`` int64 (H, W).

``build_dataset(kind, root, split)`` with ``kind`` in :data:`DATASETS`: ``"voc"`` (PASCAL VOC, including the
paper's ``seg11valid``), ``"sbd"`` (SBD, including the paper's training set ``train_noval``),
``"camvid"`` (SegNet's CamVid), ``"folder"`` (``images/`` + ``masks/``), and the paper's section 5 sets
``"siftflow"`` (SIFT Flow: semantic and geometric masks stacked (2, H, W)), ``"nyud"`` (NYUDv2: colour,
depth, HHA) and ``"pascal_context"`` (PASCAL-Context's 59 classes). Bad files raise
:class:`DataError`, whose message names the file and the fix; ``dataset.validate(skip_bad=True)`` drops them.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .base import IGNORE_INDEX, DataError, SegmentationDataset, Transforms, read_image
from .camvid import CAMVID_CLASSES, CAMVID_PALETTE, CamVid
from .folder import FolderSegmentation
from .nyud import NYUD_CLASSES, NYUD_MODALITIES, NYUDv2, encode_log_depth
from .pascal_context import PASCAL_CONTEXT_59, PascalContext
from .siftflow import SIFTFLOW_CLASSES, SIFTFLOW_GEO_CLASSES, SIFTFlow
from .transforms import RandomScale, eval_transforms, pad_collate, train_transforms
from .voc import VOC_CLASSES, SBDSegmentation, VOCSegmentation, seg11valid_ids, voc_palette

__all__ = [
    "IGNORE_INDEX", "DataError", "SegmentationDataset", "Transforms", "read_image", "VOCSegmentation",
    "SBDSegmentation", "CamVid", "FolderSegmentation", "VOC_CLASSES", "CAMVID_CLASSES", "CAMVID_PALETTE",
    "voc_palette", "seg11valid_ids", "DATASETS", "build_dataset", "RandomScale", "train_transforms",
    "eval_transforms", "pad_collate", "SIFTFlow", "SIFTFLOW_CLASSES", "SIFTFLOW_GEO_CLASSES",
    "eval_transforms", "pad_collate", "NYUDv2", "NYUD_CLASSES", "NYUD_MODALITIES", "encode_log_depth",
    "PascalContext", "PASCAL_CONTEXT_59", "task_args",
]

DATASETS: dict[str, type[SegmentationDataset]] = {
    "voc": VOCSegmentation,
    "sbd": SBDSegmentation,
    "camvid": CamVid,
    "folder": FolderSegmentation,
    "siftflow": SIFTFlow,
    "nyud": NYUDv2,
    "pascal_context": PascalContext,
}


def task_args(kind: str, args: dict[str, Any], multitask: bool) -> dict[str, Any]:
    """``args`` for dataset ``kind``, with SIFT Flow's ``geo`` chosen by the model: a two-headed net
    (``multitask``) needs the geometric labels, a single-headed one reads the semantic labels alone (a tree of
    test images may lack ``GeoLabels/``). A ``geo`` in ``args`` wins."""
    return {"geo": multitask, **args} if kind == "siftflow" else args


def build_dataset(
    kind: str, root: str | Path, split: str | None, transforms: Transforms | None = None, **kw: Any
) -> SegmentationDataset:
    """The dataset ``DATASETS[kind](root, split, transforms, **kw)``; ``split=None`` only for ``"folder"``."""
    if kind not in DATASETS:
        raise ConfigError(f"unknown dataset kind {kind!r}; available: {', '.join(DATASETS)}",
                          fix="choose one of them for {dataset}")
    if split is None and kind != "folder":
        raise ConfigError(f"dataset kind {kind!r} needs a split", fix="name the split to read")
    params = inspect.signature(DATASETS[kind]).parameters
    unknown = sorted(k for k in kw if k not in params or k in ("root", "split", "transforms"))
    if unknown:
        allowed = [p for p in params if p not in ("self", "root", "split", "transforms")]
        raise ConfigError(f"dataset {kind!r} takes no argument {', '.join(map(repr, unknown))}"
                          f"{'; it takes: ' + ', '.join(allowed) if allowed else ' (it takes none)'}",
                          fix="remove it from {dataset_args}")
    return DATASETS[kind](root, split, transforms, **kw)
