"""The training loop's parts: TrainState's state_dict round trip, the engine's step and meter, one host sync
per logged step, the divergence stop, and the loop's records."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
import torch
from torch import nn

from fcnseg import data as fdata
from fcnseg import train
from fcnseg.checkpoint import load_checkpoint
from fcnseg.config import TrainConfig, make_config
from fcnseg.engine import TrainMeter, train_step
from fcnseg.errors import TrainingDiverged
from fcnseg.models import build
from fcnseg.normalization import IMAGENET, Normalization
from fcnseg.train import run_train
from fcnseg.train_state import TrainState, new_state, param_groups
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


class _HostReads:
    """Counts the Tensor methods that copy a value to the host (each a device sync on a GPU) made by the
    training loop itself: inside ``train_loop``, outside the loader's batch fetching and the validation."""

    METHODS = ("item", "tolist", "__bool__", "__float__", "__int__", "numpy")

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.count, self.active = 0, False
        for name in self.METHODS:
            monkeypatch.setattr(torch.Tensor, name, self._counted(getattr(torch.Tensor, name)))
        monkeypatch.setattr(train, "train_loop", self._while(train.train_loop, True))
        monkeypatch.setattr(train, "_validate_and_save", self._while(train._validate_and_save, False))
        original_loaders = train._loaders

        def loaders(*a: Any, **k: Any) -> Any:
            sampler, loader, *rest = original_loaders(*a, **k)
            return (sampler, _Fetching(loader, self), *rest)

        monkeypatch.setattr(train, "_loaders", loaders)

    def _counted(self, original: Any) -> Any:
        def counted(tensor: torch.Tensor, *a: Any, **k: Any) -> Any:
            self.count += self.active
            return original(tensor, *a, **k)

        return counted

    def _while(self, fn: Any, active: bool) -> Any:
        def wrapped(*a: Any, **k: Any) -> Any:
            before, self.active = self.active, active
            try:
                return fn(*a, **k)
            finally:
                self.active = before

        return wrapped


class _Fetching:
    """A loader whose batch fetching (data loading and augmentation) is not counted."""

    def __init__(self, loader: Any, reads: _HostReads):
        self.loader, self.reads = loader, reads

    def __iter__(self) -> Any:
        it = self.reads._while(iter, False)(self.loader)  # draws the iterator's seed from a CPU generator
        while True:
            batch = self.reads._while(next, False)(it, None)
            if batch is None:
                return
            yield batch


def test_the_loop_reads_the_device_once_per_logged_step(data_root, tmp_path, monkeypatch):
    # Six steps, validated once (step 6, after one divergence check). The loop reads the device once per
    # logged step and once before the validation: the steps in between never wait for it. SGD: AdamW reads
    # its step count with .item(), from a CPU tensor (no device sync) that this CPU count cannot tell apart.
    logged: dict[int, list[dict]] = {}
    for every in (1, 3):
        cfg = tiny_cfg(data_root, tmp_path / f"log{every}", max_steps=6, val_every=6, log_every=every,
                       crop_size=32, max_val_images=1, optimizer="sgd")
        with monkeypatch.context() as m:
            reads = _HostReads(m)
            run_train(cfg, progress=False)
        lines = (tmp_path / f"log{every}" / "log.jsonl").read_text().splitlines()
        logged[every] = [r for r in map(json.loads, lines) if "loss" in r]
        assert [r["step"] for r in logged[every]] == list(range(every, 7, every))
        assert reads.count == len(logged[every]) + 1, (every, reads.count)
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



def test_meter_stops_a_blow_up_before_it_is_nan():
    meter = TrainMeter(torch.device("cpu"), limit=100.0, cause=" (the cause)", fix="lower {encoder_lr_mult}")
    meter.add(torch.tensor(3.0), step=1, images=2)
    meter.add(torch.tensor(99.0), step=2, images=2)
    meter.read()
    meter.add(torch.tensor(4.2e5), step=3, images=2)
    with pytest.raises(TrainingDiverged, match=r"loss is 4.2e\+05 at step 3 \(the cause\)") as e:
        meter.check()
    assert e.value.option == "encoder_lr_mult"


def test_encoder_groups_take_their_factor_and_the_head_comes_first():
    model = build("fcn8s_efficientnet_lite0", num_classes=3)
    cfg = TrainConfig(lr=0.01, bias_lr_mult=2.0, encoder_lr_mult=0.1)
    groups = param_groups(model, cfg)
    encoder = {id(p) for p in model.encoder.parameters()}
    assert [round(g["lr"], 6) for g in groups] == [0.01, 0.02, 0.001, 0.002]
    assert [g["weight_decay"] for g in groups] == [cfg.weight_decay, 0.0, cfg.weight_decay, 0.0]
    assert all(id(p) not in encoder for g in groups[:2] for p in g["params"])
    assert all(id(p) in encoder for g in groups[2:] for p in g["params"])
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    assert len(param_groups(model, TrainConfig(encoder_lr_mult=1.0))) == 2  # one rate: the two groups as before


def test_train_step_clips_the_gradient_norm():
    torch.manual_seed(0)
    model = nn.Conv2d(3, 2, 1)
    images, masks = torch.rand(2, 3, 4, 4), torch.randint(0, 2, (2, 4, 4))
    norm = Normalization("plain", (0.0,) * 3)
    loss = nn.functional.cross_entropy(model(norm(images)), masks)
    raw = float(torch.linalg.vector_norm(torch.cat([g.flatten() for g in torch.autograd.grad(
        loss, list(model.parameters()))])))
    for clip, want in ((raw / 2, raw / 2), (raw * 2, raw)):  # a bound above the norm changes nothing
        m = nn.Conv2d(3, 2, 1)
        m.load_state_dict(model.state_dict())
        opt = torch.optim.SGD(m.parameters(), lr=1.0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
        train_step(m, images, masks, opt, sched, norm=norm, device=torch.device("cpu"), clip_grad_norm=clip)
        step = torch.cat([(p.detach() - b).flatten() for p, b in zip(m.parameters(), model.parameters(), strict=True)])
        assert float(step.norm()) == pytest.approx(want, rel=1e-4)  # plain SGD at lr 1: the update is the gradient


def test_an_unresolved_auto_encoder_rate_counts_as_one():
    model = build("fcn8s_efficientnet_lite0", num_classes=3)
    groups = param_groups(model, TrainConfig(lr=0.01))  # encoder_lr_mult=-1: build_model was not called
    assert [g["lr"] for g in groups] == [0.01, 0.01]
