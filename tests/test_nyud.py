"""NYUDv2 in the reference's on-disk layout, built tiny in tmp_path: colour PNGs, 16-bit depth PNGs (mm), HHA
PNGs, ``.mat`` labels with 0 = void; inputs by modality; bad files named; a few training steps per net."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.io import savemat

from fcnseg import data as fdata
from fcnseg.config import EvalConfig, make_config
from fcnseg.data.nyud import NYUD_CLASSES, decode_log_depth, encode_log_depth, nyud_split_ids
from fcnseg.engine import train_one_epoch
from fcnseg.evaluate import run_eval
from fcnseg.models import build
from fcnseg.normalization import get_normalization
from fcnseg.train import make_optimizer, make_scheduler, run_train

from conftest import TINY

IDS = {"train": ["5001", "5002"], "val": ["5003"]}
H, W = 24, 32


def sample(i: int) -> dict[str, np.ndarray]:
    """Colour, depth (mm), HHA and labels (0 void, 1..40) of sample ``i``: two halves a network can learn."""
    rng = np.random.default_rng(i)
    rgb = rng.integers(0, 30, (H, W, 3), dtype=np.uint8)
    rgb[:, : W // 2, 0] += 200  # left half red: class 1 (wall)
    rgb[:, W // 2 :, 2] += 200  # right half blue: class 3 (cabinet)
    seg = np.ones((H, W), np.uint8)
    seg[:, W // 2 :] = 3
    seg[0] = 0  # a void row
    seg[1, 0] = 40  # the last class
    depth = np.full((H, W), 2550 + 100 * i, np.uint16)
    depth[:, W // 2 :] = 1000
    hha = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    return {"rgb": rgb, "depth": depth, "hha": hha, "seg": seg}


def make_nyud(root: Path) -> Path:
    for folder in ("data/images", "data/depth", "data/hha", "segmentation"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for n, i in enumerate(IDS["train"] + IDS["val"]):
        s = sample(n)
        Image.fromarray(s["rgb"]).save(root / "data/images" / f"img_{i}.png")
        Image.fromarray(s["depth"]).save(root / "data/depth" / f"img_{i}.png")  # 16-bit grey PNG
        Image.fromarray(s["hha"]).save(root / "data/hha" / f"img_{i}.png")
        savemat(root / "segmentation" / f"img_{i}.mat", {"segmentation": s["seg"]})
    for split, ids in IDS.items():
        (root / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return root


@pytest.fixture
def nyud(tmp_path: Path) -> Path:
    return make_nyud(tmp_path / "nyud")


def test_reference_splits_and_classes_are_shipped():
    assert len(nyud_split_ids("train")) == 381 and len(nyud_split_ids("val")) == 414
    assert len(nyud_split_ids("trainval")) == 795 and len(nyud_split_ids("test")) == 654  # the paper's split
    assert not set(nyud_split_ids("trainval")) & set(nyud_split_ids("test"))
    assert len(NYUD_CLASSES) == 40 and NYUD_CLASSES[:3] == ["wall", "floor", "cabinet"]
    assert NYUD_CLASSES[-1] == "otherprop"


def test_labels_are_shifted_and_void_ignored(nyud):
    ds = fdata.build_dataset("nyud", nyud, "train")
    assert ds.num_classes == 40 and len(ds) == 2
    image, mask = ds[0]
    s = sample(0)
    assert image.shape == (3, H, W) and torch.equal(image.permute(1, 2, 0), torch.from_numpy(s["rgb"]))
    # .mat labels 1 -> 0 (wall), 3 -> 2 (cabinet), 40 -> 39 (otherprop), 0 (void) -> 255.
    assert mask[5, 0] == 0 and mask[5, W - 1] == 2 and mask[1, 0] == 39
    assert (mask[0] == 255).all()


def test_modalities(nyud):
    s = sample(0)
    rgbd, _ = fdata.build_dataset("nyud", nyud, "train", modality="rgbd")[0]
    assert rgbd.shape == (4, H, W) and rgbd.dtype == torch.uint8
    assert torch.equal(rgbd[:3].permute(1, 2, 0), torch.from_numpy(s["rgb"]))
    # Depth 2550 mm -> code round(75 * (ln 2550 - 5.9)) = round(145.79) = 146; 1000 mm -> round(75.6) = 76.
    assert rgbd[3, 0, 0] == 146 and rgbd[3, 0, W - 1] == 76
    hha, _ = fdata.build_dataset("nyud", nyud, "train", modality="hha")[0]
    assert torch.equal(hha.permute(1, 2, 0), torch.from_numpy(s["hha"]))
    both, _ = fdata.build_dataset("nyud", nyud, "train", modality="rgb_hha")[0]
    assert both.shape == (6, H, W) and torch.equal(both[3:], hha) and torch.equal(both[:3], rgbd[:3])
    with pytest.raises(ValueError, match="unknown NYUDv2 modality 'depth'"):
        fdata.build_dataset("nyud", nyud, "train", modality="depth")


def test_log_depth_code_and_its_normalisation():
    # The reference feeds log(depth_mm) - 7.844; the code and "nyud_rgbd" give the same to within 1/150.
    depth = np.array([[400, 1000, 2550, 5000, 10000]], dtype=np.uint16)
    code = encode_log_depth(depth)
    np.testing.assert_allclose(decode_log_depth(code), depth, rtol=0.0067)
    image = torch.zeros(4, 1, 5, dtype=torch.uint8)
    image[3] = torch.from_numpy(code)
    x = get_normalization("nyud_rgbd")(image)
    np.testing.assert_allclose(x[3, 0].numpy(), np.log(depth[0]) - 7.844, atol=1 / 150)
    # Caffe's order and means: BGR 0-255 minus the reference's NYUDv2 mean_bgr.
    image[:3] = torch.tensor([10, 20, 30], dtype=torch.uint8).view(3, 1, 1)
    x = get_normalization("nyud_rgbd")(image)
    np.testing.assert_allclose(x[:3, 0, 0].numpy(), [30 - 116.190, 20 - 97.203, 10 - 92.318], rtol=1e-6)
    assert encode_log_depth(np.array([0]))[0] == 146  # no depth: the mean, which normalises to about 0
    assert len(get_normalization("nyud_rgb_hha").mean) == 6 and len(get_normalization("nyud_rgbd_lite").mean) == 4


def test_packaged_split_when_the_folder_has_none(nyud):
    # No test.txt in the folder: the reference's list is used, and its first missing file is named.
    with pytest.raises(fdata.DataError, match=r"img_5133\.png: file of id '5133' listed in the packaged NYUDv2 "
                                              r"test split not found"):
        fdata.build_dataset("nyud", nyud, "test")


def test_bad_files_are_named(nyud):
    (nyud / "data/depth/img_5002.png").unlink()
    fdata.build_dataset("nyud", nyud, "train")  # colour only: depth is not needed
    with pytest.raises(fdata.DataError, match=r"data/depth/img_5002\.png: file of id '5002'"):
        fdata.build_dataset("nyud", nyud, "train", modality="rgbd")
    # A depth map of the wrong size, and one saved as colour: the validation pass names each file.
    Image.fromarray(np.zeros((H, W + 1), np.uint16)).save(nyud / "data/depth/img_5002.png")
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(nyud / "data/depth/img_5001.png")
    ds = fdata.build_dataset("nyud", nyud, "train", modality="rgbd")
    report = ds.validate("labels", skip_bad=True, progress=False, cache=False)
    assert len(report.bad) == 1 and "img_5002.png: is 33x24 (WxH) but its colour image" in report.bad[0]
    with pytest.raises(fdata.DataError, match=r"img_5001\.png: depth map has mode RGB"):
        ds.load(0)
    # Labels: corrupt, without the variable, and out of range.
    seg = nyud / "segmentation"
    (seg / "img_5001.mat").write_bytes(b"not a mat file")
    savemat(seg / "img_5002.mat", {"labels": np.ones((H, W), np.uint8)})
    savemat(seg / "img_5003.mat", {"segmentation": np.full((H, W), 41, np.uint8)})
    ds = fdata.build_dataset("nyud", nyud, "train")
    with pytest.raises(fdata.DataError, match=r"img_5001\.mat: cannot read NYUDv2 labels"):
        ds.load(0)
    with pytest.raises(fdata.DataError, match=r"img_5002\.mat: no variable 'segmentation'"):
        ds.load(1)
    with pytest.raises(fdata.DataError, match=r"img_5003\.mat: label values 40 .* 0 = void and 1\.\.40"):
        fdata.build_dataset("nyud", nyud, "val").load(0)


def losses(run: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if "loss" in r]


STEPS = 8


@pytest.mark.parametrize("modality, model", [("rgbd", "fcn32s_rgbd"), ("rgb_hha", "fcn32s_rgb_hha")])
def test_training_runs_lower_the_loss(nyud, tmp_path, modality, model):
    out = tmp_path / "run"
    cfg = make_config("modern", dataset="nyud", data_root=str(nyud), train_split="train", val_split="val",
                      dataset_args={"modality": modality}, model=model, model_args={"width": TINY},
                      normalization=f"nyud_{modality}", batch_size=2, crop_size=0, scale_min=1.0, scale_max=1.0,
                      hflip=False, max_steps=STEPS, val_every=STEPS, log_every=1, workers=0, out_dir=str(out),
                      lr=5e-3, optimizer="adamw")
    run_train(cfg, progress=False)
    loss = losses(out)
    assert len(loss) == STEPS and math.isclose(loss[0], math.log(40), rel_tol=1e-4)  # zero scores: uniform
    assert np.mean(loss[-2:]) < 0.6 * loss[0]
    if modality == "rgb_hha":  # the checkpoint describes the data: eval finds the split, modality, channels
        metrics = run_eval(EvalConfig(str(out / "best.pt"), workers=0), progress=False)
        assert 0 <= metrics.mean_iu <= 1 and metrics.pixels == H * W - W  # the void row is not scored


@pytest.mark.parametrize("modality, model, norm, steps", [
    ("rgb_hha", "fcn16s_rgb_hha", "nyud_rgb_hha", STEPS),
    ("rgbd", "fcn8s_rgbd_efficientnet_lite0", "nyud_rgbd_lite", 4),  # batch norm: the loss falls at once
    ("rgb_hha", "fcn8s_rgb_hha_efficientnet_lite0", "nyud_rgb_hha_lite", 4),
])
def test_a_few_steps_of_every_nyud_net_lower_the_loss(nyud, modality, model, norm, steps):
    ds = fdata.build_dataset("nyud", nyud, "train", modality=modality)
    batch = fdata.pad_collate([ds[0], ds[1]])
    net = build(model, num_classes=ds.num_classes, **({"width": TINY} if "lite" not in model else {}))
    cfg = make_config("modern", optimizer="adamw", lr=5e-3, max_steps=steps)
    opt = make_optimizer(net, cfg)
    seen = train_one_epoch(net, [batch] * steps, opt, make_scheduler(opt, cfg), norm=get_normalization(norm),
                           device=torch.device("cpu"), max_steps=steps, step=0, progress=False).tolist()
    assert math.isclose(seen[0], math.log(40), rel_tol=1e-4) and np.mean(seen[-2:]) < 0.6 * seen[0]
