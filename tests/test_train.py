"""Training, evaluation and prediction end to end on real CamVid samples, with tiny models."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from fcnseg import data as fdata
from fcnseg.checkpoint import load_checkpoint
from fcnseg.cli import main
from fcnseg.config import TrainConfig, make_config
from fcnseg.engine import train_one_epoch
from fcnseg.errors import ConfigError
from fcnseg.models import build
from fcnseg.normalization import IMAGENET
from fcnseg.train import make_optimizer, make_scheduler, run_train

from conftest import TINY


def tiny_cfg(data_root, out, **kw) -> TrainConfig:
    base = dict(dataset="camvid", data_root=str(data_root / "camvid"), model="fcn8s",
                model_args={"width": TINY}, batch_size=2, crop_size=64, max_steps=4, val_every=2, log_every=1,
                max_val_images=2, workers=0, out_dir=str(out), lr=1e-3, optimizer="adamw")
    base.update(kw)
    return make_config("modern", **base)


def test_recipes():
    paper = make_config("paper", model="fcn16s")
    assert (paper.batch_size, paper.loss, paper.momentum, paper.weight_decay) == (1, "sum", 0.99, 5e-4)
    assert paper.lr == 1e-12 and paper.bias_lr_mult == 2.0 and paper.schedule == "constant"
    assert make_config("paper", model="fcn32s").lr == 1e-10
    assert make_config("paper", model="fcn8s").lr == 1e-14
    assert make_config("paper", model="fcn8s_atonce").lr == 1e-10  # voc-fcn8s-atonce/solver.prototxt
    assert make_config("paper", model="fcn8s", lr=1e-13).lr == 1e-13  # a flag wins over the recipe
    with pytest.raises(ConfigError, match="unknown option learning_rate"):
        make_config("modern", learning_rate=0.1)
    with pytest.raises(ValueError, match="unknown recipe"):
        make_config("fast")


def test_paper_param_groups():
    model = build("fcn8s", width=TINY)
    cfg = make_config("paper", model="fcn8s")
    opt = make_optimizer(model, cfg)
    weights, biases = opt.param_groups
    assert biases["lr"] == 2 * weights["lr"] == 2e-14
    assert weights["weight_decay"] == 5e-4 and biases["weight_decay"] == 0.0
    assert all(p.ndim == 1 for p in biases["params"])


def test_loss_falls(data_root):
    ds = fdata.build_dataset("camvid", data_root / "camvid", "train")
    images, masks = fdata.pad_collate([ds[0], ds[1]])
    images, masks = images[:, :, :96, :128], masks[:, :96, :128]
    model = build("fcn8s", width=TINY, num_classes=ds.num_classes)
    cfg = make_config("modern", optimizer="adamw", lr=3e-3, max_steps=30)
    opt, sched = make_optimizer(model, cfg), make_scheduler(make_optimizer(model, cfg), cfg)
    losses = train_one_epoch(model, [(images, masks)] * 30, opt, sched, norm=IMAGENET, device=torch.device("cpu"),
                             max_steps=30, step=0, progress=False).tolist()
    assert len(losses) == 30
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])


def test_train_eval_predict_cli(data_root, tmp_path):
    run = tmp_path / "run"
    args = ["train", "--dataset", "camvid", "--data", str(data_root / "camvid"), "--model", "fcn8s",
            "--model-arg", f"width={TINY}", "--batch-size", "2", "--crop-size", "64", "--max-steps", "2",
            "--val-every", "2", "--max-val-images", "2", "--workers", "0", "--out", str(run), "--quiet"]
    assert main(args) == 0
    for name in ("best.pt", "last.pt", "log.jsonl", "config.json"):
        assert (run / name).is_file(), name
    assert any((run / "tensorboard").iterdir())
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert any("val_mean_iu" in r for r in records) and any("loss" in r for r in records)
    ck = load_checkpoint(run / "best.pt")
    assert ck.model_name == "fcn8s" and len(ck.classes) == 11 and ck.classes[0] == "Sky"
    assert ck.normalization == IMAGENET and ck.train_state["step"] == 2
    # A second run into the same folder is refused: nothing already written is lost.
    assert main(args) == 2

    out_json = tmp_path / "metrics.json"
    assert main(["eval", "--checkpoint", str(run / "best.pt"), "--max-images", "2", "--workers", "0",
                 "--out", str(out_json), "--quiet"]) == 0
    m = json.loads(out_json.read_text())
    assert 0 <= m["mean_iu"] <= 1 and m["pixels"] > 0 and len(m["confusion_matrix"]) == 11
    assert m["pixels"] == int(np.sum(m["confusion_matrix"]))

    val = sorted((data_root / "camvid" / "val").iterdir())[:2]
    pred_dir = tmp_path / "pred"
    assert main(["predict", "--checkpoint", str(run / "best.pt"), *map(str, val), "-o", str(pred_dir),
                 "--workers", "0", "--quiet"]) == 0
    for p in val:
        lab = Image.open(pred_dir / f"{p.stem}.png")
        assert lab.mode == "P" and lab.size == Image.open(p).size
        assert np.asarray(lab).max() < 11
        assert (pred_dir / f"{p.stem}_overlay.png").is_file()
    assert main(["predict", "--checkpoint", str(run / "best.pt"), str(val[0]), "-o", str(pred_dir)]) == 2


def test_resume_is_exact(data_root, tmp_path):
    straight = run_train(tiny_cfg(data_root, tmp_path / "a"), progress=False)
    # Same run stopped after 2 steps, then resumed from its last checkpoint to step 4.
    run_train(tiny_cfg(data_root, tmp_path / "b", stop_at=2), progress=False)
    ck_b = load_checkpoint(tmp_path / "b" / "last.pt")
    assert ck_b.train_state["step"] == 2
    cfg = tiny_cfg(data_root, tmp_path / "b", resume=str(tmp_path / "b" / "last.pt"))
    run_train(cfg, progress=False)
    a = load_checkpoint(straight.parent / "last.pt")
    b = load_checkpoint(tmp_path / "b" / "last.pt")
    assert a.train_state["step"] == b.train_state["step"] == 4
    for k, v in a.state_dict.items():
        torch.testing.assert_close(b.state_dict[k], v, rtol=0, atol=0, msg=k)


def _ddp_eval_worker(rank: int, world: int, port: int, data_root: str, ckpt: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    from fcnseg.config import EvalConfig
    from fcnseg.evaluate import run_eval

    m = run_eval(EvalConfig(ckpt, data_root=data_root, split="val", max_images=5, workers=0, device="cpu"),
                 progress=False)
    torch.save(m.to_dict(), f"{out}.{rank}")
    torch.distributed.destroy_process_group()


def test_two_processes_give_the_same_metrics_as_one(data_root, tmp_path):
    run_train(tiny_cfg(data_root, tmp_path / "run", max_steps=2), progress=False)
    ckpt = str(tmp_path / "run" / "last.pt")
    from fcnseg.config import EvalConfig
    from fcnseg.evaluate import run_eval

    single = run_eval(EvalConfig(ckpt, data_root=str(data_root / "camvid"), max_images=5, workers=0),
                      progress=False)
    port = 29500 + os.getpid() % 1000
    torch.multiprocessing.spawn(_ddp_eval_worker, args=(2, port, str(data_root / "camvid"), ckpt,
                                                        str(tmp_path / "m")), nprocs=2)
    for rank in range(2):
        ddp = torch.load(f"{tmp_path / 'm'}.{rank}")
        assert ddp["pixels"] == single.pixels
        assert ddp["mean_iu"] == pytest.approx(single.mean_iu, abs=1e-12)
        assert ddp["class_iu"] == pytest.approx(single.class_iu, nan_ok=True)


def test_torchrun_training(data_root, tmp_path):
    # DDP training under torchrun with 2 CPU processes on gloo, as a user would launch it.
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(30500 + os.getpid() % 1000), "-m", "fcnseg.cli", "train", "--dataset", "camvid", "--data",
           str(data_root / "camvid"), "--model-arg", f"width={TINY}", "--batch-size", "1", "--crop-size", "64",
           "--max-steps", "2", "--val-every", "2", "--max-val-images", "2", "--workers", "0", "--device", "cpu",
           "--out", str(out), "--quiet"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    ck = load_checkpoint(out / "last.pt")
    assert ck.train_state["step"] == 2 and ck.metrics is not None and ck.metrics["pixels"] > 0


def test_folder_dataset_args_reach_train_and_eval(data_root, tmp_path):
    # ISBI 2012 membranes: a folder of grey images and {0, 255} masks, read through --dataset-arg.
    run = tmp_path / "isbi"
    ds_args = ["--dataset-arg", "binary=true", "--dataset-arg", "images=image", "--dataset-arg", "masks=label",
               "--dataset-arg", 'classes=["membrane", "cell"]']
    assert main(["train", "--dataset", "folder", "--data", str(data_root / "isbi2012"), "--train-split", "train",
                 "--val-split", "train", *ds_args, "--model", "fcn32s", "--model-arg", f"width={TINY}",
                 "--batch-size", "2", "--crop-size", "48", "--max-steps", "1", "--val-every", "1",
                 "--max-val-images", "1", "--workers", "0", "--out", str(run), "--quiet"]) == 0
    ck = load_checkpoint(run / "best.pt")
    assert ck.classes == ["membrane", "cell"] and ck.config["dataset_args"]["binary"] is True
    out = tmp_path / "m.json"
    assert main(["eval", "--checkpoint", str(run / "best.pt"), "--split", "train", "--max-images", "1",
                 "--workers", "0", "--out", str(out), "--quiet"]) == 0
    assert json.loads(out.read_text())["pixels"] == 512 * 512


def test_validation_set_of_another_family_must_share_the_classes(data_root, tmp_path):
    # The paper trains on SBD and validates on VOC; here CamVid's 11 classes against VOC's 21 are refused.
    from fcnseg.data import DataError

    voc = data_root / "voc_sample" / "VOC2011"
    cfg = tiny_cfg(data_root, tmp_path / "x", val_dataset="voc", val_data_root=str(voc))
    with pytest.raises(DataError, match="must be the same"):
        run_train(cfg, progress=False)


def test_frozen_encoder_keeps_its_statistics_across_validations(data_root, tmp_path):
    # "FCN-32s-fixed": only the head trains; the encoder's weights and batch-norm statistics stay the
    # pretrained ones, also for the steps that follow a validation (which switches modes back and forth).
    cfg = tiny_cfg(data_root, tmp_path / "fixed", model="fcn32s_efficientnet_lite0",
                   model_args={"pretrained": True}, freeze_encoder=True, max_steps=3, val_every=1)
    run_train(cfg, progress=False)
    got = load_checkpoint(tmp_path / "fixed" / "last.pt").state_dict
    want = build("fcn32s_efficientnet_lite0", num_classes=11, pretrained=True).state_dict()
    enc = [k for k in want if k.startswith("encoder.")]
    assert any(k.endswith("running_mean") for k in enc)
    for k in enc:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=0, msg=k)
    assert not torch.equal(got["score_fr.weight"], want["score_fr.weight"])  # the head did train


def test_paper_recipe_from_the_cli_uses_the_papers_rate(tmp_path):
    from fcnseg.cli import build_parser, train_config

    def resolved(*argv):
        return train_config(build_parser().parse_args(["train", *argv]))

    assert resolved("--recipe", "paper", "--model", "fcn32s").lr == 1e-10
    assert resolved("--recipe", "paper", "--model", "fcn8s", "--lr", "1e-13").lr == 1e-13
    cfg_file = tmp_path / "c.json"
    cfg_file.write_text(json.dumps({"recipe": "paper", "model": "fcn16s", "model_args": {"width": 0.5}}))
    cfg = make_config(None, str(cfg_file), model_args={"pretrained": False})
    assert (cfg.recipe, cfg.lr, cfg.loss) == ("paper", 1e-12, "sum")
    assert cfg.model_args == {"width": 0.5, "pretrained": False}  # merged, not replaced
    with pytest.raises(ValueError, match="val_every"):
        make_config(val_every=0)


def test_cli_resume_continues_the_run_in_its_own_folder(data_root, tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--dataset", "camvid", "--data", str(data_root / "camvid"), "--model-arg",
                 f"width={TINY}", "--batch-size", "2", "--crop-size", "48", "--max-steps", "2", "--stop-at", "1",
                 "--val-every", "5", "--max-val-images", "1", "--workers", "0", "--out", str(run), "--quiet"]) == 0
    assert load_checkpoint(run / "last.pt").train_state["step"] == 1
    # Nothing but --resume: model, data, batch size and the run folder come from the checkpoint.
    assert main(["train", "--resume", str(run / "last.pt"), "--quiet"]) == 0
    ck = load_checkpoint(run / "last.pt")
    assert ck.train_state["step"] == 2 and ck.config["model_args"] == {"width": TINY}
    assert main(["train", "--resume", str(run / "last.pt"), "--batch-size", "4", "--quiet"]) == 2
