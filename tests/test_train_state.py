"""The training loop's parts: TrainState's state_dict round trip, the engine's step and meter, one host sync
per logged step, the divergence stop, and the loop's records."""

from __future__ import annotations

import io
import json

import pytest
import torch
from torch import nn

from fcnseg import data as fdata
from fcnseg.checkpoint import load_checkpoint
from fcnseg.config import make_config
from fcnseg.engine import TrainMeter, train_step
from fcnseg.errors import TrainingDiverged
from fcnseg.normalization import IMAGENET
from fcnseg.train import run_train
from fcnseg.train_state import TrainState, new_state
from test_train import tiny_cfg


class _Net(nn.Module):
    """A tiny segmentation net with dropout (draws from the global RNG) and batch norm (buffers)."""

    def __init__(self, classes: int = 3):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout2d(0.5),
                                  nn.Conv2d(8, classes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(2, 3, 12, 16, generator=g), torch.randint(0, 3, (2, 12, 16), generator=g)


def _steps(state: TrainState, seeds: range) -> None:
    for seed in seeds:
        train_step(state.model, *_batch(seed), state.optimizer, state.scheduler, norm=IMAGENET,
                   device=torch.device("cpu"))
        state.advance(batch_size=2)


def _state(seed: int) -> TrainState:
    torch.manual_seed(seed)
    cfg = make_config("modern", optimizer="adamw", lr=1e-2, warmup_steps=3, schedule="poly", max_steps=10,
                      ema_decay=0.9)
    return new_state(_Net().train(), cfg)


def _assert_equal(a: object, b: object, where: str = "") -> None:
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            _assert_equal(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where  # type: ignore[arg-type]
        for i, (x, y) in enumerate(zip(a, b, strict=True)):  # type: ignore[call-overload]
            _assert_equal(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where  # type: ignore[arg-type]
    else:
        assert a == b, where


def test_state_dict_round_trips_and_training_continues_bit_for_bit():
    state = _state(0)
    _steps(state, range(2))
    state.next_epoch()
    state.sampler_pos, state.best_miou = 4, 0.25
    buffer = io.BytesIO()
    torch.save(state.state_dict(), buffer)  # through bytes, as a checkpoint travels
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=False)
    # A fresh state (other initial weights, other RNG) takes the saved one's place exactly.
    fresh = _state(1)
    assert not torch.equal(fresh.model.body[0].weight, state.model.body[0].weight)
    fresh.load_state_dict(saved)
    assert (fresh.step, fresh.epoch, fresh.sampler_pos, fresh.best_miou) == (2, 1, 4, 0.25)
    keep_rng = saved.pop("rng")
    _assert_equal({k: v for k, v in fresh.state_dict().items() if k != "rng"}, saved)
    _assert_equal(fresh.state_dict()["rng"], keep_rng)
    # Both go on with the same dropout draws and the same schedule: the same weights, to the bit.
    torch.set_rng_state(keep_rng["torch"])
    _steps(state, range(2, 4))
    fresh.load_state_dict({**saved, "rng": keep_rng})
    _steps(fresh, range(2, 4))
    _assert_equal(fresh.model.state_dict(), state.model.state_dict(), "model")
    _assert_equal(fresh.ema.state_dict(), state.ema.state_dict(), "ema")  # type: ignore[union-attr]
    assert state.evaluated is state.ema.module  # type: ignore[union-attr]
    assert fresh.scheduler.state_dict()["last_epoch"] == 4


def test_meter_names_the_first_diverged_step_and_the_option():
    meter = TrainMeter(torch.device("cpu"))
    meter.add(torch.tensor(2.0), step=1, images=2)
    meter.add(torch.tensor(4.0), step=2, images=2)
    mean, ips = meter.read()
    assert mean == 3.0 and ips > 0
    meter.add(torch.tensor(1.0), step=3, images=2)
    assert meter.read()[0] == 1.0  # the mean since the last read
    meter.add(torch.tensor(float("inf")), step=4, images=2)
    meter.add(torch.tensor(float("nan")), step=5, images=2)
    with pytest.raises(TrainingDiverged, match="loss is inf at step 4") as e:
        meter.check()
    assert e.value.option == "lr" and e.value.exit_code == 1


def _count_host_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the Tensor methods that copy a value to the host (a device sync on a GPU)."""
    count = [0]
    for name in ("item", "tolist", "__bool__", "__float__", "__int__", "numpy"):
        original = getattr(torch.Tensor, name)

        def counted(self, *a, _original=original, **k):  # type: ignore[no-untyped-def]
            count[0] += 1
            return _original(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return count


def test_the_loop_reads_the_device_once_per_logged_step(data_root, tmp_path, monkeypatch):
    # Six steps, validated once (step 6). Runs differing only in log_every differ in host reads by exactly
    # their number of logged steps: the steps in between never wait for the device.
    reads: dict[int, int] = {}
    logged: dict[int, list[dict]] = {}
    for every in (1, 3, 6):
        cfg = tiny_cfg(data_root, tmp_path / f"log{every}", max_steps=6, val_every=6, log_every=every,
                       crop_size=32, max_val_images=1)
        with monkeypatch.context() as m:
            count = _count_host_reads(m)
            run_train(cfg, progress=False)
        reads[every] = count[0]
        lines = (tmp_path / f"log{every}" / "log.jsonl").read_text().splitlines()
        logged[every] = [r for r in map(json.loads, lines) if "loss" in r]
        assert [r["step"] for r in logged[every]] == list(range(every, 7, every))
    assert reads[1] - reads[6] == 6 - 1 and reads[3] - reads[6] == 2 - 1, reads
    # A record's loss is the mean over the steps since the previous record.
    each = [r["loss"] for r in logged[1]]
    assert [r["loss"] for r in logged[3]] == pytest.approx([sum(each[:3]) / 3, sum(each[3:]) / 3], rel=1e-6)
    ck = load_checkpoint(tmp_path / "log3" / "last.pt")
    assert set(ck.train_state) == {"optimizer", "scheduler", "step", "epoch", "sampler_pos", "rng", "best_miou",
                                   "world_size", "train_samples"}  # as older runs wrote (no average: no raw_model)
    assert ck.train_state["train_samples"] == len(fdata.build_dataset("camvid", data_root / "camvid", "train"))


def test_a_diverging_run_stops_before_any_checkpoint_holds_its_weights(data_root, tmp_path):
    # An absurd learning rate: the weights overflow within a few steps. Logging every 100 steps, the check
    # before the first validation must still stop it, naming the step and the option to lower.
    cfg = tiny_cfg(data_root, tmp_path / "run", lr=1e30, optimizer="sgd", momentum=0.0, max_steps=6,
                   val_every=3, log_every=100, crop_size=32)
    with pytest.raises(TrainingDiverged, match=r"loss is (nan|inf) at step [1-3]; fix: lower `lr`"):
        run_train(cfg, progress=False)
    assert not (tmp_path / "run" / "best.pt").exists() and not (tmp_path / "run" / "last.pt").exists()

