"""PASCAL-Context in the reference's layout (``data/pascal/VOC2010`` + ``data/pascal-context/trainval/*.mat``),
built tiny in tmp_path; the 459 -> 59 class mapping checked by hand against the shipped lists."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from fcnseg import data as fdata
from fcnseg.cli import flag_spelling
from fcnseg.data.pascal_context import PASCAL_CONTEXT_59, PASCAL_CONTEXT_459, context_label_table

# LabelMap numbers from the dataset's labels.txt (pascal_context_459.txt) and where the 59-class task puts
# them (pascal_context_59.txt, 1-based after background).
ACCORDION, AEROPLANE, BEDCLOTHES, CLOTH, PERSON, TABLE, WOOD = 1, 2, 19, 80, 284, 397, 458
LABEL_MAP = np.array([
    [0, ACCORDION, AEROPLANE, BEDCLOTHES],
    [CLOTH, PERSON, TABLE, WOOD],
], dtype=np.uint16)
# background, background, aeroplane 1, bedcloth 52, clothes 28, person 15, diningtable 11, wood 59.
AS_CLASSES = [[0, 0, 1, 52], [28, 15, 11, 59]]
AS_IGNORE = [[255, 255, 0, 51], [27, 14, 10, 58]]


def make_context(data: Path) -> Path:
    """``data/pascal/VOC2010`` (JPEGs, ImageSets/Main) and ``data/pascal-context/trainval`` (.mat)."""
    voc = data / "pascal" / "VOC2010"
    (voc / "JPEGImages").mkdir(parents=True)
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    ctx = data / "pascal-context"
    (ctx / "trainval").mkdir(parents=True)
    ids = {"train": ["2008_000002", "2008_000003"], "val": ["2008_000007"]}
    for split, split_ids in ids.items():
        (voc / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(split_ids) + "\n")
        for i in split_ids:
            Image.fromarray(np.full((2, 4, 3), 128, np.uint8)).save(voc / "JPEGImages" / f"{i}.jpg")
            savemat(ctx / "trainval" / f"{i}.mat", {"LabelMap": LABEL_MAP})
    return ctx


def test_shipped_class_lists():
    assert len(PASCAL_CONTEXT_459) == 459 and PASCAL_CONTEXT_459[1] == "accordion"
    assert PASCAL_CONTEXT_459[TABLE] == "table" and PASCAL_CONTEXT_459[WOOD] == "wood"
    assert len(PASCAL_CONTEXT_59) == 59 and PASCAL_CONTEXT_59[0] == "aeroplane" and PASCAL_CONTEXT_59[-1] == "wood"
    table = context_label_table()
    assert table.shape == (460,) and sorted(set(table[table > 0])) == list(range(1, 60))  # each class once
    assert (table > 0).sum() == 59


def test_labels_map_459_to_59_with_background(tmp_path):
    ds = fdata.build_dataset("pascal_context", make_context(tmp_path), "train")  # VOC2010 found in ../pascal
    assert ds.num_classes == 60 and ds.classes[0] == "background" and ds.classes[11] == "diningtable"
    assert len(ds) == 2 and ds.samples[0][0].name == "2008_000002.jpg"
    image, mask = ds[0]
    assert image.shape == (3, 2, 4)
    assert mask.tolist() == AS_CLASSES
    assert len(fdata.build_dataset("pascal_context", tmp_path / "pascal-context", "val")) == 1


def test_labels_map_to_59_with_the_rest_ignored(tmp_path):
    ds = fdata.build_dataset("pascal_context", make_context(tmp_path), "train", background="ignore")
    assert ds.num_classes == 59 and ds.classes[0] == "aeroplane"
    assert ds[0][1].tolist() == AS_IGNORE
    with pytest.raises(ValueError, match="background must be one of class, ignore"):
        fdata.build_dataset("pascal_context", tmp_path / "pascal-context", "train", background="drop")


def test_voc_elsewhere_and_bad_files(tmp_path):
    ctx = make_context(tmp_path / "data")
    moved = tmp_path / "elsewhere"
    (tmp_path / "data" / "pascal").rename(moved)
    with pytest.raises(fdata.DataError, match="no VOC2010 folder found .* `dataset_args` voc_root=") as info:
        fdata.build_dataset("pascal_context", ctx, "train")
    assert info.value.options == ("dataset_args",)
    assert "fix: pass --dataset-arg voc_root=/path/to/VOC2010" in info.value.render(flag_spelling)
    with pytest.raises(fdata.DataError, match="nowhere: VOC dataset folder not found") as info:
        fdata.build_dataset("pascal_context", ctx, "train", voc_root=str(tmp_path / "nowhere"))
    assert info.value.options == ("dataset_args",)  # the folder came from voc_root: its fix says so
    ds = fdata.build_dataset("pascal_context", ctx, "train", voc_root=str(moved / "VOC2010"))
    assert len(ds) == 2
    mats = ctx / "trainval"
    (mats / "2008_000002.mat").write_bytes(b"\x00" * 10)
    with pytest.raises(fdata.DataError, match=r"2008_000002\.mat: cannot read PASCAL-Context labels"):
        ds.load(0)
    savemat(mats / "2008_000003.mat", {"LabelMap": np.full((2, 4), 460, np.uint16)})
    with pytest.raises(fdata.DataError, match=r"2008_000003\.mat: 'LabelMap' values 460 are not"):
        ds.load(1)
    savemat(mats / "2008_000003.mat", {"labels": LABEL_MAP})
    with pytest.raises(fdata.DataError, match=r"2008_000003\.mat: no variable 'LabelMap'"):
        ds.load(1)
    (moved / "VOC2010" / "JPEGImages" / "2008_000007.jpg").unlink()
    with pytest.raises(fdata.DataError, match=r"2008_000007\.jpg: image of id '2008_000007' listed in"):
        fdata.build_dataset("pascal_context", ctx, "val", voc_root=str(moved))
