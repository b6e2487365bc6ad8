"""fcnseg.data datasets: the real samples in FCNSEG_DATA, tiny layouts in tmp_path, every bad input."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile
from scipy.io import savemat
from torchvision import tv_tensors

from fcnseg import data as fdata
from fcnseg.cli import flag_spelling
from fcnseg.data import (
    DataError,
    FolderSegmentation,
    SBDSegmentation,
    VOCSegmentation,
    build_dataset,
    seg11valid_ids,
    voc_palette,
)
from fcnseg.errors import FcnsegError

# --------------------------------------------------------------------------------------------------- helpers


def _png(path: Path, array: np.ndarray, palette: list[tuple[int, int, int]] | None = None) -> Path:
    """Write ``array`` as a grey (H, W), palette (H, W with ``palette``) or RGB (H, W, 3) PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.ascontiguousarray(array, dtype=np.uint8)
    if palette is None:
        im = Image.fromarray(array)
    else:
        im = Image.frombytes("P", (array.shape[1], array.shape[0]), array.tobytes())
        im.putpalette([v for c in palette for v in c])
    im.save(path)
    return path


def _rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _folder(tmp_path: Path, masks: dict[str, np.ndarray], classes: str | None = "a\nb\nc\n") -> Path:
    """A FolderSegmentation layout: an RGB image per mask, sized like it, and ``classes.txt``."""
    for i, (stem, mask) in enumerate(masks.items()):
        _png(tmp_path / "images" / f"{stem}.png", _rgb(*mask.shape[:2], seed=i))
        _png(tmp_path / "masks" / f"{stem}.png", mask)
    if classes is not None:
        (tmp_path / "classes.txt").write_text(classes)
    return tmp_path


def _truncated_jpeg(path: Path, h: int = 64, w: int = 64) -> Path:
    buf = io.BytesIO()
    Image.fromarray(_rgb(h, w)).save(buf, format="JPEG", quality=95)
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    return path


def _sbd(tmp_path: Path, labels: dict[str, np.ndarray], train: list[str], val: list[str]) -> Path:
    """A ``benchmark_RELEASE/dataset`` layout with ``GTcls`` structs written by scipy, as SBD ships them."""
    root = tmp_path / "benchmark_RELEASE" / "dataset"
    (root / "img").mkdir(parents=True)
    (root / "cls").mkdir()
    for i, (stem, lab) in enumerate(labels.items()):
        Image.fromarray(_rgb(*lab.shape, seed=i)).save(root / "img" / f"{stem}.jpg")
        gt = {"Segmentation": lab.astype(np.uint8), "Boundaries": np.zeros((21, 1), dtype=object),
              "CategoriesPresent": np.unique(lab[lab > 0]).astype(np.uint8)}
        savemat(root / "cls" / f"{stem}.mat", {"GTcls": gt})
    (root / "train.txt").write_text("\n".join(train) + "\n")
    (root / "val.txt").write_text("\n".join(val) + "\n")
    return root


# ------------------------------------------------------------------------------------------------------- VOC


def test_voc_sample_palette_masks(data_root: Path) -> None:
    ds = VOCSegmentation(data_root / "voc_sample" / "VOC2011", "val")
    assert len(ds) == 4 and ds.num_classes == 21 and ds.ignore_index == 255
    assert ds.files(0)[0].name == "2007_000129.jpg" and ds.files(0)[1].name == "2007_000129.png"
    image, mask = ds[0]
    assert isinstance(image, tv_tensors.Image) and isinstance(mask, tv_tensors.Mask)
    assert image.dtype == torch.uint8 and mask.dtype == torch.int64
    assert image.shape == (3, 500, 334) and mask.shape == (500, 334)  # the JPEG is 334 x 500 (W x H)
    # 2007_000129: bicycles and people, outlined by the 255 void border.
    assert set(mask.unique().tolist()) == {0, 2, 15, 255}
    assert (mask == 255).sum() > 1000
    # The mask is the PNG's palette indices, not its colours.
    raw = np.array(Image.open(ds.files(0)[1]))
    assert torch.equal(mask, torch.from_numpy(raw.astype(np.int64)))


def test_voc_palette_matches_the_pngs(data_root: Path) -> None:
    ds = VOCSegmentation(data_root / "voc_sample" / "VOC2011", "val")
    png = Image.open(ds.files(0)[1]).getpalette()
    assert [tuple(png[3 * i: 3 * i + 3]) for i in range(21)] == ds.palette
    assert voc_palette()[15] == (192, 128, 128) and voc_palette()[255] == (224, 224, 192)
    assert ds.classes[15] == "person" and ds.classes == fdata.VOC_CLASSES


def test_voc_year_folder_found_from_parent(data_root: Path) -> None:
    ds = VOCSegmentation(data_root / "voc_sample", "val")
    assert ds.root.name == "VOC2011" and len(ds) == 4


def test_seg11valid_is_shipped(data_root: Path) -> None:
    ids = seg11valid_ids()
    assert len(ids) == 736 == len(set(ids))
    shared = (data_root / "fcn_splits" / "pascal" / "seg11valid.txt").read_text().split()
    assert ids == shared
    # The sample holds 2007_000129 (in seg11valid) but not the other 735 images.
    with pytest.raises(DataError, match=r"2007_000033\.jpg.*seg11valid"):
        VOCSegmentation(data_root / "voc_sample" / "VOC2011", "seg11valid")


def test_voc_unknown_split_lists_the_splits(data_root: Path) -> None:
    with pytest.raises(DataError, match=r"nosuch\.txt.*val, seg11valid"):
        VOCSegmentation(data_root / "voc_sample" / "VOC2011", "nosuch")


def _voc(tmp_path: Path, ids: list[str], masks: list[str]) -> Path:
    root = tmp_path / "VOCdevkit" / "VOC2012"
    (root / "JPEGImages").mkdir(parents=True)
    for i in ids:
        Image.fromarray(_rgb(4, 4)).save(root / "JPEGImages" / f"{i}.jpg")
    for i in masks:
        _png(root / "SegmentationClass" / f"{i}.png", np.zeros((4, 4)), palette=voc_palette())
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(ids) + "\n")
    return tmp_path


def test_voc_image_without_mask(tmp_path: Path) -> None:
    root = _voc(tmp_path, ["a", "b"], ["a"])
    ds = VOCSegmentation(root / "VOCdevkit", "train")  # found by validation, so --skip-bad can skip it
    with pytest.raises(DataError, match=r"b\.jpg has no mask .*SegmentationClass/b\.png.*`skip_bad`") as info:
        ds.validate(progress=False, cache=False)
    assert info.value.options == ("skip_bad",)
    assert info.value.render(flag_spelling).endswith("or pass --skip-bad to skip such samples")
    assert ds.validate(skip_bad=True, progress=False, cache=False).bad and len(ds) == 1


def test_voc_year_selection(tmp_path: Path) -> None:
    root = _voc(tmp_path, ["a"], ["a"])
    assert VOCSegmentation(root, "train").root == root / "VOCdevkit" / "VOC2012"
    assert VOCSegmentation(root / "VOCdevkit", "train", year="2012").files(0)[1].name == "a.png"
    with pytest.raises(DataError, match="VOC2011"):
        VOCSegmentation(root, "train", year="2011")


# ------------------------------------------------------------------------------------------------------- SBD


def test_sbd_reads_mat_structs(tmp_path: Path) -> None:
    lab = np.array([[0, 0, 15], [3, 3, 15], [0, 20, 20]])
    _sbd(tmp_path, {"2008_000002": lab, "2008_000003": np.ones((3, 3))}, ["2008_000002"], ["2008_000003"])
    ds = SBDSegmentation(tmp_path, "train")  # found from the folder holding benchmark_RELEASE
    assert len(ds) == 1 and ds.classes[15] == "person"
    image, mask = ds[0]
    assert image.shape == (3, 3, 3) and mask.dtype == torch.int64
    assert mask.tolist() == lab.tolist()
    assert SBDSegmentation(tmp_path / "benchmark_RELEASE", "val")[0][1].tolist() == [[1] * 3] * 3


def test_sbd_train_noval_drops_seg11valid(tmp_path: Path) -> None:
    # 2007_000033 is the first seg11valid id; 2008_000002 is not in seg11valid.
    labels = {"2007_000033": np.zeros((2, 2)), "2008_000002": np.zeros((2, 2))}
    root = _sbd(tmp_path, labels, ["2007_000033", "2008_000002"], ["2007_000033"])
    assert "2007_000033" in seg11valid_ids() and "2008_000002" not in seg11valid_ids()
    assert [p.stem for p, _ in SBDSegmentation(root, "train").samples] == ["2007_000033", "2008_000002"]
    assert [p.stem for p, _ in SBDSegmentation(root, "train_noval").samples] == ["2008_000002"]


def test_sbd_bad_mat_files(tmp_path: Path) -> None:
    root = _sbd(tmp_path, {"a": np.zeros((2, 2)), "b": np.zeros((2, 2)), "c": np.zeros((2, 2))},
                ["a", "b", "c"], ["a"])
    (root / "cls" / "a.mat").write_bytes(b"not a mat file at all")
    savemat(root / "cls" / "b.mat", {"other": np.zeros((2, 2))})
    savemat(root / "cls" / "c.mat", {"GTcls": {"Segmentation": np.full((2, 2), 21, np.uint8)}})
    ds = SBDSegmentation(root, "train")
    with pytest.raises(DataError, match=r"a\.mat: cannot read SBD"):
        ds[0]
    with pytest.raises(DataError, match=r"b\.mat: cannot read SBD label struct GTcls"):
        ds[1]
    with pytest.raises(DataError, match=r"c\.mat: label values 21 are neither a class \(0\.\.20\)"):
        ds[2]


def test_sbd_missing_layout(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    with pytest.raises(DataError, match=f"{tmp_path}: no SBD cls/ folder"):
        SBDSegmentation(tmp_path, "train")


# ---------------------------------------------------------------------------------------------------- CamVid


def test_camvid_splits_and_paths(data_root: Path) -> None:
    root = data_root / "camvid"
    train, val = fdata.CamVid(root, "train"), fdata.CamVid(root, "val")
    assert (len(train), len(val)) == (367, 101)
    # SegNet's absolute /SegNet/CamVid/... paths resolve under the given root.
    image_path, mask_path = train.files(0)
    assert image_path == root / "train" / "0001TP_006690.png"
    assert mask_path == root / "trainannot" / "0001TP_006690.png"
    assert val.files(0)[1] == root / "valannot" / "0016E5_07959.png"
    assert train.classes[0] == "Sky" and train.classes[-1] == "Bicyclist" and train.num_classes == 11
    assert train.palette[3] == (128, 64, 128)  # Road, from classes.txt


def test_camvid_void_becomes_ignore(data_root: Path) -> None:
    ds = fdata.CamVid(data_root / "camvid", "train")
    image, mask = ds[0]
    assert image.shape == (3, 360, 480) and mask.shape == (360, 480)
    raw = torch.from_numpy(np.array(Image.open(ds.files(0)[1])).astype(np.int64))
    assert (raw == 11).any()
    assert torch.equal(mask == 255, raw == 11)
    assert torch.equal(mask[raw != 11], raw[raw != 11])
    assert set(mask.unique().tolist()) <= set(range(11)) | {255}


def test_camvid_missing_split(data_root: Path) -> None:
    # The test split is deliberately absent from the shared data: neither test.txt nor test/ exists.
    with pytest.raises(DataError, match=r"camvid/test\.txt: split file not found; fix: choose split"):
        fdata.CamVid(data_root / "camvid", "test")


def test_camvid_folder_pairing_without_list(tmp_path: Path) -> None:
    _png(tmp_path / "test" / "x.png", _rgb(2, 3))
    _png(tmp_path / "testannot" / "x.png", np.array([[0, 11, 10], [4, 4, 11]]))
    image, mask = fdata.CamVid(tmp_path, "test")[0]
    assert mask.tolist() == [[0, 255, 10], [4, 4, 255]]


# ---------------------------------------------------------------------------------------------------- folder


def test_isbi_binary_masks(data_root: Path) -> None:
    root = data_root / "isbi2012" / "train"
    ds = FolderSegmentation(root, images="image", masks="label", binary=True, classes=["membrane", "cell"])
    assert len(ds) == 30 and ds.classes == ["membrane", "cell"]
    image, mask = ds[0]
    assert image.shape == (3, 512, 512)
    assert torch.equal(image[0], image[1]) and torch.equal(image[0], image[2])  # grey -> RGB
    raw = np.array(Image.open(ds.files(0)[1]))
    assert set(np.unique(raw).tolist()) == {0, 255}
    assert torch.equal(mask, torch.from_numpy((raw == 255).astype(np.int64)))


def test_folder_index_masks_and_split_file(tmp_path: Path) -> None:
    root = _folder(tmp_path, {"b": np.array([[0, 1], [2, 255]]), "a": np.array([[2, 2], [1, 0]])})
    ds = FolderSegmentation(root)
    assert ds.classes == ["a", "b", "c"] and ds.palette == voc_palette(3)
    assert [ds.files(i)[0].name for i in range(2)] == ["a.png", "b.png"]  # sorted by stem
    assert ds[1][1].tolist() == [[0, 1], [2, 255]]
    (root / "val.txt").write_text("b\n")
    assert [p.stem for p, _ in FolderSegmentation(root, "val").samples] == ["b"]
    assert len(build_dataset("folder", root, None)) == 2


def test_folder_palette_masks_read_indices(tmp_path: Path) -> None:
    # A palette PNG whose colours are not VOC's: the labels are the indices.
    _png(tmp_path / "images" / "a.jpg", _rgb(2, 2))
    palette = [(9, 9, 9), (200, 10, 10), (10, 200, 10)]
    _png(tmp_path / "masks" / "a.png", np.array([[0, 2], [1, 2]]), palette=palette)
    assert Image.open(tmp_path / "masks" / "a.png").mode == "P"
    ds = FolderSegmentation(tmp_path, classes=["x", "y", "z"])
    assert ds[0][1].tolist() == [[0, 2], [1, 2]]


def test_folder_rgb_colour_masks(tmp_path: Path) -> None:
    red, green, void = (255, 0, 0), (0, 255, 0), (224, 224, 192)
    rgb = np.array([[red, green, void], [green, green, red]], dtype=np.uint8)
    _png(tmp_path / "images" / "a.png", _rgb(2, 3))
    _png(tmp_path / "masks" / "a.png", rgb)
    (tmp_path / "classes.txt").write_text("# index name r g b\n0 road 255 0 0\n1 grass 0 255 0\n"
                                          "255 void 224 224 192\n")
    ds = FolderSegmentation(tmp_path)
    assert ds.classes == ["road", "grass"] and ds.palette == [red, green]
    assert ds[0][1].tolist() == [[0, 1, 255], [1, 1, 0]]
    # colors= overrides the table; an unknown colour is a DataError naming the file and the colour.
    ds = FolderSegmentation(tmp_path, colors={red: 1, green: 0})
    assert ds[0][1].tolist() == [[1, 0, 255], [0, 0, 1]]
    ds = FolderSegmentation(tmp_path, classes=["road", "grass"], colors={red: 0, green: 1})
    with pytest.raises(DataError, match=r"a\.png: colours \(224, 224, 192\) are not in the colour table"):
        ds[0]
    ds = FolderSegmentation(tmp_path, classes=["road", "grass"])
    with pytest.raises(DataError, match=r"a\.png: RGB colour mask but no colour table"):
        ds[0]


def test_folder_split_subfolders(tmp_path: Path) -> None:
    _folder(tmp_path / "train", {"a": np.zeros((2, 2))}, classes=None)
    _folder(tmp_path / "val", {"b": np.ones((2, 2)), "c": np.ones((2, 2))}, classes=None)
    (tmp_path / "classes.txt").write_text("0 bg\n1 fg\n")  # shared by the splits
    assert len(build_dataset("folder", tmp_path, "train")) == 1
    val = build_dataset("folder", tmp_path, "val")
    assert len(val) == 2 and val.classes == ["bg", "fg"] and val[0][1].tolist() == [[1, 1], [1, 1]]


def test_folder_needs_class_names(tmp_path: Path) -> None:
    root = _folder(tmp_path, {"a": np.zeros((2, 2))}, classes=None)
    with pytest.raises(DataError, match=r"classes\.txt: no class names; fix: write this file"):
        FolderSegmentation(root)
    (root / "classes.txt").write_text("0 a\n2 b\n")
    with pytest.raises(DataError, match=r"classes\.txt: class indices \[0, 2\] are not 0\.\.1"):
        FolderSegmentation(root)


# ------------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("kind", ["voc", "sbd", "camvid", "folder"])
def test_missing_dataset_folder(tmp_path: Path, kind: str) -> None:
    with pytest.raises(DataError, match=f"{tmp_path / 'nowhere'}: .* folder not found; fix: pass") as info:
        build_dataset(kind, tmp_path / "nowhere", "train")
    e = info.value
    assert isinstance(e, FcnsegError) and e.options == ("data_root",) and e.path == str(tmp_path / "nowhere")
    assert e.render(flag_spelling).endswith(" as --data") and str(e).endswith(" as `data_root`")


def test_image_without_mask(tmp_path: Path) -> None:
    root = _folder(tmp_path, {"a": np.zeros((2, 2))})
    _png(root / "images" / "lonely.png", _rgb(2, 2))
    ds = FolderSegmentation(root)
    with pytest.raises(DataError, match=r"lonely\.png has no mask .*masks/lonely\.png; fix: add the mask"):
        ds.validate(progress=False, cache=False)
    report = ds.validate(skip_bad=True, progress=False, cache=False)  # --skip-bad skips it, as documented
    assert len(report.bad) == 1 and [p.stem for p, _ in ds.samples] == ["a"]


def test_mask_size_differs(tmp_path: Path) -> None:
    root = _folder(tmp_path, {"a": np.zeros((4, 5))})
    _png(root / "images" / "a.png", _rgb(4, 6))
    ds = FolderSegmentation(root)  # decode checks wait for __getitem__
    with pytest.raises(DataError, match=r"masks/a\.png: mask is 5x4 \(WxH\) but its image .*a\.png is 6x4"):
        ds[0]


def test_label_not_a_class(tmp_path: Path) -> None:
    ds = FolderSegmentation(_folder(tmp_path, {"a": np.array([[0, 7], [3, 255]])}))
    with pytest.raises(DataError, match=r"a\.png: label values 3, 7 are neither a class \(0\.\.2\) nor the "
                                        r"ignore label 255"):
        ds[0]


def test_binary_mask_with_grey_values(tmp_path: Path) -> None:
    _png(tmp_path / "image" / "0.png", _rgb(2, 2))
    _png(tmp_path / "label" / "0.png", np.array([[0, 255], [128, 255]]))  # e.g. a resized, interpolated mask
    ds = FolderSegmentation(tmp_path, images="image", masks="label", binary=True)
    with pytest.raises(DataError, match=r"0\.png: label values 128 are neither"):
        ds[0]


def test_unreadable_and_truncated_images(tmp_path: Path) -> None:
    root = _folder(tmp_path, {"a": np.zeros((64, 64)), "b": np.zeros((64, 64)), "c": np.zeros((64, 64))})
    (root / "images" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (root / "images" / "b.png").unlink()
    _truncated_jpeg(root / "images" / "b.jpg")
    _png(root / "masks" / "c.png", np.random.default_rng(0).integers(0, 3, (64, 64)))
    (root / "masks" / "c.png").write_bytes((root / "masks" / "c.png").read_bytes()[:200])
    ds = FolderSegmentation(root)
    with pytest.raises(DataError, match=r"images/a\.png: cannot read image"):
        ds[0]
    with pytest.raises(DataError, match=r"images/b\.jpg: cannot decode image .*truncated"):
        ds[1]
    with pytest.raises(DataError, match=r"masks/c\.png: cannot decode mask .*truncated"):
        ds[2]
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_truncated_images_refused_when_pil_is_told_to_load_them(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES"):
        fdata.read_image(_truncated_jpeg(tmp_path / "t.jpg"))


def test_empty_split(tmp_path: Path) -> None:
    root = _folder(tmp_path, {"a": np.zeros((2, 2))})
    (root / "empty.txt").write_text("\n\n")
    with pytest.raises(DataError, match=r"empty\.txt: split file lists no samples \(empty split\)"):
        FolderSegmentation(root, "empty")
    (root / "images" / "a.png").unlink()
    with pytest.raises(DataError, match=r"images: no images \(empty split\)"):
        FolderSegmentation(root)
    (tmp_path / "train.txt").write_text("")
    with pytest.raises(DataError, match=r"train\.txt: split file lists no samples"):
        fdata.CamVid(tmp_path, "train")


def test_check_raises_or_skips_bad_samples(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = _folder(tmp_path, {"a": np.zeros((64, 64)), "b": np.zeros((64, 64)), "c": np.ones((64, 64))})
    assert FolderSegmentation(root).check(progress=False) == []
    (root / "images" / "b.png").unlink()
    _truncated_jpeg(root / "images" / "b.jpg")
    ds = FolderSegmentation(root)
    with pytest.raises(DataError, match=r"b\.jpg"):
        ds.check(progress=False)
    assert len(ds) == 3  # unchanged without skip_bad
    with caplog.at_level(logging.WARNING, logger="fcnseg.data"):
        messages = ds.check(skip_bad=True, progress=False)
    assert len(messages) == 1 and "b.jpg" in messages[0]
    assert any("b.jpg" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    assert [p.stem for p, _ in ds.samples] == ["a", "c"]
    assert ds[1][1].unique().tolist() == [1]  # the remaining samples still load, renumbered


def test_check_on_real_sample(data_root: Path) -> None:
    ds = VOCSegmentation(data_root / "voc_sample" / "VOC2011", "val")
    assert ds.check(progress=False) == []


# --------------------------------------------------------------------------------------------------- factory


def test_build_dataset(data_root: Path) -> None:
    assert list(fdata.DATASETS) == ["voc", "sbd", "camvid", "folder", "siftflow", "nyud", "pascal_context"]
    ds = build_dataset("camvid", data_root / "camvid", "val", transforms=fdata.train_transforms(64))
    assert isinstance(ds, fdata.CamVid) and len(ds) == 101
    image, mask = ds[0]
    assert image.shape == (3, 64, 64) and mask.shape == (64, 64)
    with pytest.raises(ValueError, match="unknown dataset kind 'coco'; available: voc, sbd, camvid, folder, "
                                         "siftflow, nyud, pascal_context"):
        build_dataset("coco", data_root, "train")
    assert issubclass(DataError, ValueError)
