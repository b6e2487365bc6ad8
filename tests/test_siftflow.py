"""SIFT Flow (section 5, table 5): the dataset in its real layout, the two-headed nets, training, eval, predict.

The images are not on these machines, so each test builds a tiny SIFT Flow tree in ``tmp_path`` as the archive
lays it out and the reference's ``siftflow_layers.py`` reads it: 256x256 JPEGs, ``.mat`` label files with the
variable ``S`` (semantic 0 void, 1-33; geometric -1 void, 1-3).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.io import savemat

from fcnseg import data as fdata
from fcnseg.checkpoint import load_checkpoint
from fcnseg.cli import main
from fcnseg.config import TrainConfig
from fcnseg.convert import convert_caffemodel
from fcnseg.data import DataError, SIFTFlow
from fcnseg.data.siftflow import SIFTFLOW_CLASSES, SIFTFLOW_GEO_CLASSES, holdout_ids, siftflow_ids
from fcnseg.errors import ConfigError
from fcnseg.losses import segmentation_loss
from fcnseg.metrics import MultiTaskConfusion
from fcnseg.models import build
from fcnseg.normalization import EFFICIENTNET_LITE
from test_convert import fcn_layers, write_caffemodel

from conftest import TINY

SUB = "spatial_envelope_256x256_static_8outdoorcategories"
SKY, ROAD, GRASS = 28, 22, 15  # semantic values in the .mat files (1-based)
GEO_SKY, GEO_HORIZONTAL = 1, 2


def _scene(seed: int, size: int = 256) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An image whose colour tells its labels: sky above a random horizon, road or grass below; void rows."""
    rng = np.random.default_rng(seed)
    horizon = int(rng.integers(size // 4, 3 * size // 4))
    ground = ROAD if seed % 2 else GRASS
    image = np.empty((size, size, 3), np.uint8)
    image[:horizon] = (90, 150, 230)
    image[horizon:] = (110, 110, 110) if ground == ROAD else (60, 170, 60)
    image = np.clip(image + rng.integers(-20, 21, image.shape), 0, 255).astype(np.uint8)
    sem = np.where(np.arange(size)[:, None] < horizon, SKY, ground) * np.ones((1, size), np.int64)
    geo = np.where(sem == SKY, GEO_SKY, GEO_HORIZONTAL)
    sem[:2] = 0  # void rows: 0 in the semantic files, -1 in the geometric ones
    geo[:2] = -1
    return image, sem.astype(np.float64), geo.astype(np.int16)


def _siftflow(root: Path, trainval: list[str], test: list[str], size: int = 256) -> Path:
    """A SIFT Flow tree: Images/<SUB>/<id>.jpg, SemanticLabels/<SUB>/<id>.mat, GeoLabels/<SUB>/<id>.mat (S)."""
    for d in ("Images", "SemanticLabels", "GeoLabels"):
        (root / d / SUB).mkdir(parents=True, exist_ok=True)
    for n, i in enumerate(trainval + test):
        image, sem, geo = _scene(n, size)
        Image.fromarray(image).save(root / "Images" / SUB / f"{i}.jpg", quality=95)
        savemat(root / "SemanticLabels" / SUB / f"{i}.mat", {"S": sem, "names": np.array(SIFTFLOW_CLASSES)})
        savemat(root / "GeoLabels" / SUB / f"{i}.mat", {"S": geo})
    (root / "trainval.txt").write_text("\n".join(trainval) + "\n")
    (root / "test.txt").write_text("\n".join(test) + "\n")
    return root


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return _siftflow(tmp_path / "sift-flow", [f"coast_n{i}" for i in range(4)], ["street_a0", "street_a1"])


# ------------------------------------------------------------------------------------------------------ data


def test_labels_are_shifted_and_void_becomes_ignore(tmp_path: Path) -> None:
    root = _siftflow(tmp_path, ["a"], [], size=4)
    # Hand-made labels: .mat value v is class v - 1; semantic 0 and geometric -1 (and 0) are void, 255.
    savemat(root / "SemanticLabels" / SUB / "a.mat", {"S": np.array([[0, 1, 2, 33]] * 4, np.uint8)})
    savemat(root / "GeoLabels" / SUB / "a.mat", {"S": np.array([[-1, 1, 3, 0]] * 4, np.int16)})
    image, mask = SIFTFlow(root, "trainval")[0]
    assert image.shape == (3, 4, 4) and image.dtype == torch.uint8
    assert mask.shape == (2, 4, 4) and mask.dtype == torch.int64
    assert mask[0, 0].tolist() == [255, 0, 1, 32]
    assert mask[1, 0].tolist() == [255, 0, 2, 255]


def test_dataset_in_its_real_layout(tree: Path) -> None:
    ds = fdata.build_dataset("siftflow", tree, "trainval")
    assert isinstance(ds, SIFTFlow) and len(ds) == 4 and len(SIFTFlow(tree, "test")) == 2
    assert ds.classes == SIFTFLOW_CLASSES and len(ds.classes) == 33 and ds.classes[27] == "sky"
    assert list(ds.tasks) == ["sem", "geo"] and ds.tasks["geo"][0] == SIFTFLOW_GEO_CLASSES
    assert ds.files(0) == (tree / "Images" / SUB / "coast_n0.jpg", tree / "SemanticLabels" / SUB / "coast_n0.mat")
    assert ds.sample_files(ds.samples[0])[-1] == tree / "GeoLabels" / SUB / "coast_n0.mat"
    image, mask = ds[0]
    assert image.shape == (3, 256, 256) and mask.shape == (2, 256, 256)
    assert set(mask[0].unique().tolist()) <= {SKY - 1, GRASS - 1, ROAD - 1, 255}
    assert set(mask[1].unique().tolist()) == {0, 1, 255}
    assert ds.validate("full", progress=False).bad == []
    # Joint transforms crop and flip both channels together; pad_collate stacks them to (N, 2, H, W).
    ds.transforms = fdata.train_transforms(64, scale_range=(0.5, 1.0))
    images, masks = fdata.pad_collate([ds[0], ds[1]], size_divisor=32)
    assert images.shape == (2, 3, 64, 64) and masks.shape == (2, 2, 64, 64)
    sky = masks[:, 0] == SKY - 1
    assert (masks[:, 1][sky] == 0).all()  # semantic sky is geometric sky, pixel for pixel after the transforms
    small = fdata.pad_collate([(torch.zeros(3, 5, 7, dtype=torch.uint8), torch.zeros(2, 5, 7, dtype=torch.int64)),
                               (torch.zeros(3, 8, 4, dtype=torch.uint8), torch.zeros(2, 8, 4, dtype=torch.int64))])
    assert small[1].shape == (2, 2, 8, 7) and small[1][0, :, 5:].eq(255).all() and small[1][1, :, :, 4:].eq(255).all()


def test_split_lists_ship_with_the_package(tree: Path) -> None:
    trainval, test = siftflow_ids("trainval"), siftflow_ids("test")
    assert (len(trainval), len(test)) == (2486, 200) and not set(trainval) & set(test)
    assert {"highway_bost181", "street_urb506"}.isdisjoint(trainval + test)  # no annotations: in no split
    (tree / "test.txt").unlink()  # without the root's list the shipped one is read: its ids are not here
    with pytest.raises(DataError, match=r"coast_natu975\.jpg: image of id 'coast_natu975' listed in fcnseg's"):
        SIFTFlow(tree, "test")
    with pytest.raises(DataError, match=r"other\.txt: split file not found; fix: use split trainval, test, train, val"):
        SIFTFlow(tree, "other")


def test_bad_and_missing_files_are_named(tree: Path) -> None:
    labels = tree / "SemanticLabels" / SUB
    (labels / "coast_n0.mat").write_bytes(b"not a mat file")
    savemat(labels / "coast_n1.mat", {"L": np.ones((256, 256))})
    savemat(labels / "coast_n2.mat", {"S": np.full((256, 256), 34.0)})
    (tree / "GeoLabels" / SUB / "coast_n3.mat").unlink()
    ds = SIFTFlow(tree, "trainval")
    expected = [r"coast_n0\.mat: cannot read the semantic labels .*fix: re-extract",
                r"coast_n1\.mat: no variable .S. in this \.mat file",
                r"coast_n2\.mat: semantic label values 34 are neither a class \(1\.\.33\)",
                r"GeoLabels/.*coast_n3\.mat: geometric label file not found.*`skip_bad`"]
    for i, message in enumerate(expected):  # each sample's error names its own file and the fix
        with pytest.raises(DataError, match=message):
            ds[i]
    with pytest.raises(DataError, match=r"coast_n0\.mat: .*\(and 3 more bad samples\)"):
        ds.validate("labels", progress=False, cache=False)
    with pytest.raises(DataError, match=f"{tree / 'nowhere'}: SIFT Flow dataset folder not found"):
        SIFTFlow(tree / "nowhere", "trainval")
    (tree / "GeoLabels" / SUB).rename(tree / "GeoLabels" / "other")
    with pytest.raises(DataError, match=r"GeoLabels/spatial_envelope.*folder not found; fix: a two-task net needs"):
        SIFTFlow(tree, "trainval", geo=True)
    assert SIFTFlow(tree, "trainval").tasks is None  # without geo=True: the semantic task alone


def test_fixed_geometric_file_is_checked_again(tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The validation cache keys on all three files: repairing the geometric one alone re-checks the sample.
    monkeypatch.setenv("FCNSEG_CACHE", str(tmp_path / "cache"))
    geo = tree / "GeoLabels" / SUB / "coast_n0.mat"
    savemat(geo, {"S": np.full((256, 256), 7, np.int16)})
    with pytest.raises(DataError, match="geometric label values 7"):
        SIFTFlow(tree, "trainval").validate("labels", progress=False)
    savemat(geo, {"S": np.ones((256, 256), np.int16)})
    assert SIFTFlow(tree, "trainval").validate("labels", progress=False).bad == []


# ---------------------------------------------------------------------------------------------- loss, metrics


def test_loss_sums_the_tasks() -> None:
    sem, geo = torch.randn(2, 33, 5, 6), torch.randn(2, 3, 5, 6)
    target = torch.stack([torch.randint(0, 33, (2, 5, 6)), torch.randint(0, 3, (2, 5, 6))], dim=1)
    target[:, 1, 0] = 255
    for reduction in ("sum", "mean"):
        want = segmentation_loss(sem, target[:, 0], reduction=reduction) + \
            segmentation_loss(geo, target[:, 1], reduction=reduction)
        got = segmentation_loss({"sem": sem, "geo": geo}, target, reduction=reduction)
        torch.testing.assert_close(got, want)
    with pytest.raises(ValueError, match=r"2 tasks \(sem, geo\) need targets \(N, 2, H, W\)"):
        segmentation_loss({"sem": sem, "geo": geo}, target[:, 0])


def test_multitask_metrics_leave_classes_absent_from_the_truth_out_of_mean_iu() -> None:
    cm = MultiTaskConfusion({"sem": 3, "geo": 2})
    target = torch.tensor([[[0, 0, 1, 1], [0, 1, 1, 255]]])[:, :, None]  # (1, 2, 1, 4)
    pred = torch.tensor([[[0, 2, 1, 1], [0, 1, 0, 1]]])[:, :, None]  # sem class 2 predicted, never true
    cm.update(pred, target)
    m = cm.compute()
    assert list(m.tasks) == ["sem", "geo"] and m.mean_iu == m.tasks["sem"].mean_iu
    # sem: IU(0) = 1/2, IU(1) = 2/2; class 2 is absent from the truth: left out of the mean (SIFT Flow's cow,
    # desert and moon on test), though its pixel still counts against class 0.
    assert m.tasks["sem"].mean_iu == pytest.approx(0.75) and np.isnan(m.tasks["sem"].class_iu[2])
    assert m.tasks["sem"].pixel_acc == pytest.approx(0.75)
    assert m.tasks["geo"].pixel_acc == pytest.approx(2 / 3) and m.tasks["geo"].pixels == 3


# ------------------------------------------------------------------------------------------ train, eval, predict


def test_train_eval_predict(tree: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert main(["train", "--dataset", "siftflow", "--data", str(tree), "--train-split", "trainval",
                 "--val-split", "test", "--model", "fcn16s_siftflow", "--model-arg", f"width={TINY}",
                 "--batch-size", "2", "--crop-size", "96", "--scale-min", "1", "--scale-max", "1",
                 "--optimizer", "adamw", "--lr", "0.01", "--max-steps", "16", "--val-every", "8", "--log-every", "1",
                 "--workers", "0", "--out", str(run), "--quiet"]) == 0
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 16 and np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3]), losses
    assert losses[0] == pytest.approx(np.log(33) + np.log(3), rel=0.02)  # zero score layers: uniform over both
    val = [r for r in records if "val_mean_iu" in r]
    assert len(val) == 2 and {"val_sem_mean_iu", "val_geo_pixel_acc"} <= set(val[-1])
    assert val[-1]["val_mean_iu"] == val[-1]["val_sem_mean_iu"]  # the best checkpoint is picked by semantic IU
    ck = load_checkpoint(run / "best.pt")
    assert ck.heads == {"sem": 33, "geo": 3} and ck.classes == SIFTFLOW_CLASSES
    assert ck.tasks["geo"][0] == SIFTFLOW_GEO_CLASSES and set(ck.metrics["tasks"]) == {"sem", "geo"}

    out_json = tmp_path / "metrics.json"
    assert main(["eval", "--checkpoint", str(run / "best.pt"), "--workers", "0", "--out", str(out_json),
                 "--flip", "--window", "160", "--quiet"]) == 0  # test-time averaging runs on both heads
    m = json.loads(out_json.read_text())
    assert m["split"] == "test" and m["pixels"] == m["tasks"]["sem"]["pixels"]
    for task, k in (("sem", 33), ("geo", 3)):
        t = m["tasks"][task]
        assert {"pixel_acc", "mean_acc", "mean_iu", "fw_iu"} <= set(t) and len(t["confusion_matrix"]) == k
        assert t["pixels"] == int(np.sum(t["confusion_matrix"])) == 2 * 254 * 256  # void rows not scored

    pred = tmp_path / "pred"
    images = sorted((tree / "Images" / SUB).glob("street_*.jpg"))
    assert main(["predict", "--checkpoint", str(run / "best.pt"), *map(str, images), "-o", str(pred),
                 "--workers", "0", "--quiet"]) == 0
    assert sorted(p.name for p in pred.iterdir() if p.name != "manifest.jsonl") == sorted(
        f"{p.stem}_{t}{o}.png" for p in images for t in ("sem", "geo") for o in ("", "_overlay"))
    sem, geo = (np.asarray(Image.open(pred / f"street_a0_{t}.png")) for t in ("sem", "geo"))
    assert sem.shape == geo.shape == (256, 256) and sem.max() < 33 and geo.max() < 3
    # Tiled prediction gives the same maps.
    tiled = tmp_path / "tiled"
    assert main(["predict", "--checkpoint", str(run / "best.pt"), str(images[0]), "-o", str(tiled),
                 "--tile-pixels", "10000", "--no-overlay", "--workers", "0", "--quiet"]) == 0
    assert np.asarray(Image.open(tiled / "street_a0_geo.png")).shape == (256, 256)

    # Export and serve say in one line that they take single-task models; a one-task model is refused too.
    for argv in (["export", str(run / "best.pt"), "-o", str(tmp_path / "m.onnx")],
                 ["serve", "--checkpoint", str(run / "best.pt")],
                 ["eval", "--checkpoint", str(run / "best.pt"), "--engine", "onnxruntime", "--onnx", "x.onnx"],
                 ["train", "--dataset", "siftflow", "--data", str(tree), "--train-split", "trainval",
                  "--val-split", "test", "--model", "fcn16s", "--model-arg", f"width={TINY}",
                  "--dataset-arg", "geo=true", "--out", str(tmp_path / "x"), "--dry-run"]):
        assert main(argv) == 2, argv


def test_cli_refusals_are_one_line(tree: Path, tmp_path: Path, data_root: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--dataset", "siftflow", "--data", str(tree), "--train-split", "trainval",
                 "--val-split", "test", "--model", "fcn8s", "--model-arg", f"width={TINY}", "--dataset-arg",
                 "geo=true", "--out", str(tmp_path / "x"), "--dry-run", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "labels sem (33 classes), geo (3 classes); model fcn8s has one head" in err
    # Without geo=true a single-headed net reads the semantic labels alone, GeoLabels/ or not.
    assert main(["train", "--dataset", "siftflow", "--data", str(tree), "--train-split", "trainval",
                 "--val-split", "test", "--model", "fcn8s", "--model-arg", f"width={TINY}",
                 "--out", str(tmp_path / "x"), "--dry-run", "--quiet"]) == 0
    shutil.rmtree(tree / "GeoLabels")
    assert main(["train", "--dataset", "siftflow", "--data", str(tree), "--model", "fcn16s_siftflow",
                 "--model-arg", f"width={TINY}", "--out", str(tmp_path / "z"), "--dry-run", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "GeoLabels/spatial_envelope_256x256_static_8outdoorcategories" in err
    assert "a two-task net needs GeoLabels/" in err and "choose a single-headed model" in err
    assert main(["train", "--dataset", "camvid", "--data", str(data_root / "camvid"), "--model", "fcn16s_siftflow",
                 "--model-arg", f"width={TINY}", "--out", str(tmp_path / "y"), "--dry-run", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "has sem (11 classes), geo (3 classes); fix: choose a single-head model" in err


def test_lite0_two_heads_train_on_a_cpu(tree: Path) -> None:
    ds = SIFTFlow(tree, "trainval", transforms=fdata.train_transforms(64, scale_range=None))
    images, masks = fdata.pad_collate([ds[i] for i in range(4)])
    model = build("fcn16s_siftflow_efficientnet_lite0").train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(6):
        loss = segmentation_loss(model(EFFICIENTNET_LITE(images)), masks)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.isfinite(losses).all() and losses[-1] < 0.7 * losses[0], losses


def test_reference_caffemodel_converts_key_by_key(tree: Path, tmp_path: Path) -> None:
    # A caffemodel laid out as the reference's siftflow-fcn16s (score_fr_sem, upscore2_geo, ...) maps onto
    # fcn16s_siftflow layer by layer; the checkpoint then knows its two tasks, so eval scores both.
    layers, want = fcn_layers(build("fcn16s_siftflow", width=TINY))
    src = write_caffemodel(tmp_path / "siftflow-fcn16s-heavy.caffemodel", layers)
    dst = convert_caffemodel(src, tmp_path / "siftflow.pt", model="fcn16s_siftflow", model_args={"width": TINY},
                             classes=SIFTFLOW_CLASSES)
    ck = load_checkpoint(dst)
    assert ck.model_args["num_classes"] == 33 and ck.heads == {"sem": 33, "geo": 3}
    assert len(want) == len(ck.state_dict) and torch.equal(ck.state_dict["score_fr_geo.weight"],
                                                           torch.from_numpy(want["score_fr_geo.weight"]))
    assert main(["eval", "--checkpoint", str(dst), "--dataset", "siftflow", "--data", str(tree), "--split", "test",
                 "--workers", "0", "--quiet"]) == 0


# --------------------------------------------------------------------------------- semantic only (no GeoLabels)


def test_a_tree_without_geolabels_is_semantic_only(tree: Path, caplog: pytest.LogCaptureFixture) -> None:
    shutil.rmtree(tree / "GeoLabels")
    with caplog.at_level(logging.INFO, logger="fcnseg.data.siftflow"):
        ds = SIFTFlow(tree, "trainval")
        SIFTFlow(tree, "test")
    said = [r.getMessage() for r in caplog.records if "GeoLabels" in r.getMessage()]
    assert said == [f"SIFT Flow at {tree} has no GeoLabels/: the semantic task alone (33 classes)"]  # once
    assert ds.tasks is None and ds.classes == SIFTFLOW_CLASSES and ds.present_only
    assert ds.sample_files(ds.samples[0]) == ds.files(0)  # image and semantic labels: nothing else is read
    image, mask = ds[0]
    assert image.shape == (3, 256, 256) and mask.shape == (256, 256)
    assert mask[:2].eq(255).all() and set(mask[2:].unique().tolist()) <= {SKY - 1, GRASS - 1, ROAD - 1}
    assert ds.validate("full", progress=False).bad == []
    # A tree with GeoLabels/ read with geo=False gives the very same samples.
    with_geo = _siftflow(tree.parent / "with_geo", [f"coast_n{i}" for i in range(4)], [])
    assert torch.equal(SIFTFlow(with_geo, "trainval", geo=False)[0][1], mask)


def test_train_and_val_hold_out_part_of_trainval_by_a_stable_hash(tree: Path) -> None:
    trainval = siftflow_ids("trainval")
    val = holdout_ids(trainval, 0.1)
    assert len(val) == 249  # round(0.1 * 2486)
    # The ids whose SHA-1 hex digest sorts lowest, whatever the order they come in.
    by_hash = sorted(trainval, key=lambda i: hashlib.sha1(i.encode()).hexdigest())
    assert set(val) == set(by_hash[:249])
    shuffled = trainval[:]
    random.Random(1).shuffle(shuffled)
    assert set(holdout_ids(shuffled, 0.1)) == set(val)
    assert set(holdout_ids(trainval + ["zz_new_image"], 249)) - set(val) <= {"zz_new_image"}  # a count: stable
    # On a tree: train and val split its trainval.txt, disjoint and complete; holdout is a dataset argument.
    train_ds, val_ds = (fdata.build_dataset("siftflow", tree, s, holdout=1) for s in ("train", "val"))
    assert len(train_ds) == 3 and len(val_ds) == 1
    assert {p.stem for p, _ in train_ds.samples} | {p.stem for p, _ in val_ds.samples} == \
        {f"coast_n{i}" for i in range(4)}
    for bad in (0, -1, 4, "x"):
        with pytest.raises(ConfigError, match="holdout"):
            SIFTFlow(tree, "val", holdout=bad)  # type: ignore[arg-type]
    # Without --data, training reads $FCNSEG_DATA/sift-flow (the archive's folder name).
    assert TrainConfig(dataset="siftflow").resolved_data_root().name == "sift-flow"


def test_the_real_trainval_splits_into_train_and_val(data_root: Path) -> None:
    root = data_root / "sift-flow"
    train_ds, val_ds = SIFTFlow(root, "train"), SIFTFlow(root, "val")
    assert (len(train_ds), len(val_ds)) == (2237, 249) and train_ds.tasks is None
    assert not {p.stem for p, _ in train_ds.samples} & {p.stem for p, _ in val_ds.samples}
    image, mask = val_ds[0]
    assert image.shape == (3, 256, 256) and mask.shape == (256, 256)
    assert int(mask[mask != 255].max()) < 33


def test_train_semantic_only_then_eval_on_a_tree_of_test_images_alone(tree: Path, tmp_path: Path) -> None:
    shutil.rmtree(tree / "GeoLabels")
    run = tmp_path / "run"
    assert main(["train", "--dataset", "siftflow", "--data", str(tree), "--dataset-arg", "holdout=1",
                 "--model", "fcn8s", "--model-arg", f"width={TINY}", "--batch-size", "2", "--crop-size", "64",
                 "--max-steps", "4", "--val-every", "4", "--workers", "0", "--out", str(run), "--quiet"]) == 0
    ck = load_checkpoint(run / "best.pt")
    assert ck.heads is None and ck.config["train_split"] == "train" and ck.config["val_split"] == "val"
    # The scoring tree holds the test images alone: no trainval images, no GeoLabels, no split lists.
    test_tree = tmp_path / "test_only"
    for d in ("Images", "SemanticLabels"):
        (test_tree / d / SUB).mkdir(parents=True)
        for i in ("street_a0", "street_a1"):
            ext = "jpg" if d == "Images" else "mat"
            shutil.copy(tree / d / SUB / f"{i}.{ext}", test_tree / d / SUB)
    (test_tree / "test.txt").write_text("street_a0\nstreet_a1\n")
    out = tmp_path / "test.json"
    assert main(["eval", "--checkpoint", str(run / "best.pt"), "--dataset", "siftflow", "--data", str(test_tree),
                 "--split", "test", "--workers", "0", "--out", str(out), "--quiet"]) == 0
    m = json.loads(out.read_text())
    h = np.array(m["confusion_matrix"], dtype=float)
    assert m["split"] == "test" and h.sum() == m["pixels"] == 2 * 254 * 256
    # The reference's SIFT Flow mean IU: the IU of the classes present in the ground truth, averaged.
    present = h.sum(1) > 0
    iu = np.diag(h)[present] / (h.sum(1) + h.sum(0) - np.diag(h))[present]
    assert present.sum() == 3 and m["mean_iu"] == pytest.approx(iu.mean())
    assert m["pixel_acc"] == pytest.approx(np.trace(h) / h.sum())
