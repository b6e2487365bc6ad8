"""Frozen batch norm as modules, folded into the convolution before it (``fcnseg.models.batchnorm``)."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from fcnseg.checkpoint import load_checkpoint
from fcnseg.config import TrainConfig, make_config
from fcnseg.losses import segmentation_loss
from fcnseg.models import build
from fcnseg.models.batchnorm import (
    FoldedBatchNorm2d,
    FoldedConv2d,
    FrozenBatchNorm2d,
    freeze_batch_norm,
    frozen_batch_norms,
    has_batch_norm,
    unfreeze_batch_norm,
)
from fcnseg.train import FROZEN_BN_WARMUP, batch_norm_mode, run_train
from test_train import tiny_cfg


def _conv_bn_relu() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 2, 1, bias=True), nn.BatchNorm2d(2, eps=1e-12), nn.ReLU())
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([2.0, -1.0]).view(2, 1, 1, 1))
        net[0].bias.copy_(torch.tensor([1.0, 0.0]))
        net[1].running_mean.copy_(torch.tensor([3.0, -2.0]))
        net[1].running_var.copy_(torch.tensor([4.0, 0.25]))
        net[1].weight.copy_(torch.tensor([0.5, 2.0]))
        net[1].bias.copy_(torch.tensor([1.0, -1.0]))
    return net


def test_fold_by_hand():
    net = _conv_bn_relu()
    assert freeze_batch_norm(net) == (1, 1)
    x = torch.tensor([[[[1.0, -2.0]]]])  # (1, 1, 1, 2)
    y = net.train()(x)  # train mode: the statistics stay the running ones
    # channel 0: conv 2x+1 -> (2x+1-3)/2*0.5+1; x=1: 1.0, x=-2: -0.5 -> relu 0
    # channel 1: conv -x -> (-x+2)/0.5*2-1; x=1: 3.0, x=-2: 15.0
    torch.testing.assert_close(y, torch.tensor([[[[1.0, 0.0]], [[3.0, 15.0]]]]))
    assert type(net[1]) is FoldedBatchNorm2d and not net[1].training


def _lite0(num_classes: int = 3) -> nn.Module:
    """EfficientNet-Lite0 FCN-32s with batch-norm statistics and affine parameters unlike the defaults (mean 0,
    var 1, gamma 1, beta 0), so that a wrong fold or a lost tensor shows."""
    torch.manual_seed(0)
    model = build("fcn32s_efficientnet_lite0", num_classes=num_classes)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model


@pytest.mark.parametrize("fold", [True, False])
def test_folded_gradients_equal_conv_then_frozen_batch_norm(fold):
    """Through two SGD steps: the fold is recomputed from the trained weights at every forward pass."""
    model = _lite0().double()
    ref = copy.deepcopy(model).train()
    for m in ref.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()  # frozen, the plain way
    frozen, folded = freeze_batch_norm(model, fold=fold)
    assert frozen == sum(isinstance(m, nn.BatchNorm2d) for m in ref.modules()) > 40
    assert folded == (frozen if fold else 0)
    model.train()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    y = torch.randint(0, 3, (2, 64, 64))
    opts = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (model, ref)]
    for _ in range(2):
        for m, opt in zip((model, ref), opts, strict=True):
            opt.zero_grad()
            segmentation_loss(m(x), y).backward()
        for a, b in zip(model.parameters(), ref.parameters(), strict=True):
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-9, atol=1e-12)
        for opt in opts:
            opt.step()
    sd, sd_ref = model.state_dict(), ref.state_dict()
    assert list(sd) == list(sd_ref)  # same keys: checkpoints load either way
    for k in sd:
        torch.testing.assert_close(sd[k], sd_ref[k])


def test_statistics_stay_and_unfreeze_restores():
    net = _conv_bn_relu()
    before = net[1].running_mean.clone()
    freeze_batch_norm(net)
    net.train()
    net(torch.randn(4, 1, 5, 5)).sum().backward()
    assert torch.equal(net[1].running_mean, before) and net[1].weight.grad is not None
    unfreeze_batch_norm(net)
    assert type(net[0]) is nn.Conv2d and type(net[1]) is nn.BatchNorm2d and net[1].training
    assert frozen_batch_norms(net) == (0, 0)
    net(torch.randn(4, 1, 5, 5))
    assert not torch.equal(net[1].running_mean, before)  # a plain, training batch norm again


class _NormThenConv(nn.Module):
    """Registered conv then bn, but the bn normalises the input: folding would be wrong."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)
        self.bn = nn.BatchNorm2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.bn(x))


def test_a_batch_norm_not_after_its_conv_is_frozen_not_folded():
    net = _NormThenConv()
    with torch.no_grad():
        net.bn.running_mean.copy_(torch.tensor([1.0, -1.0]))
        net.bn.running_var.copy_(torch.tensor([2.0, 0.5]))
    x = torch.randn(1, 2, 8, 8)
    expected = net.eval()(x)
    assert freeze_batch_norm(net) == (1, 0)  # the traced forward shows the order
    torch.testing.assert_close(net.train()(x), expected)
    assert type(net.conv) is nn.Conv2d


class _ConvOutputUsedTwice(nn.Module):
    """conv -> bn, but the conv's output is also added after the bn: folding would change the sum."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)
        self.bn = nn.BatchNorm2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.bn(y) + y


class _ShapeBranch(nn.Module):
    """conv -> bn behind a branch on the input's size, which torch.fx cannot trace."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)
        self.bn = nn.BatchNorm2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] > 4:
            x = x[..., :4]
        return self.bn(self.conv(x))


@pytest.mark.parametrize("net_type", [_ConvOutputUsedTwice, _ShapeBranch])
def test_batch_norms_not_fed_by_their_conv_alone_are_frozen_not_folded(net_type, caplog):
    torch.manual_seed(0)
    net = net_type()
    with torch.no_grad():
        net.bn.running_mean.copy_(torch.tensor([1.0, -1.0]))
        net.bn.running_var.copy_(torch.tensor([2.0, 0.5]))
    x = torch.randn(1, 2, 8, 8)
    expected = net.eval()(x)
    with caplog.at_level("INFO", logger="fcnseg.models.batchnorm"):
        assert freeze_batch_norm(net) == (1, 0)
    assert type(net.conv) is nn.Conv2d and type(net.bn) is FrozenBatchNorm2d
    torch.testing.assert_close(net.train()(x), expected)
    traced = net_type is _ConvOutputUsedTwice
    assert traced != any("does not trace" in r.getMessage() for r in caplog.records)  # the fallback says so


def test_print_and_type_show_classes_defined_in_the_source():
    model = _lite0()
    assert freeze_batch_norm(model) == (49, 49)
    body = model.encoder.body
    assert type(body.conv_stem) is FoldedConv2d and type(body.bn1) is FoldedBatchNorm2d
    assert body.conv_stem.bn is body.bn1  # the fold reads the registered batch norm's gamma, beta, statistics
    text = str(model)
    assert "FoldedConv2d(3, 32, kernel_size=(3, 3)" in text and ", folds bn1)" in text
    assert "FoldedBatchNorm2d(\n        32, eps=0.001, folded into encoder.body.conv_stem" in text
    for m in model.modules():  # every class print(model) names is the one its module defines
        assert getattr(sys.modules[type(m).__module__], type(m).__qualname__) is type(m)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    ema = copy.deepcopy(model)  # EMA copies: each copy folds its own batch norms
    assert ema.encoder.body.conv_stem.bn is ema.encoder.body.bn1 and ema.encoder.body.bn1 is not body.bn1
    unfreeze_batch_norm(model)
    assert type(body.conv_stem) is nn.Conv2d and type(body.bn1).__name__ == "BatchNormAct2d"  # timm's, again
    assert type(body.bn1.act) is nn.ReLU6 and "Folded" not in str(model) and "Frozen" not in str(model)


def test_a_frozen_models_state_dict_loads_strictly_into_a_plain_model_and_back():
    model = _lite0()
    with torch.no_grad():  # the score layers start at zero: give the output something to show
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    plain_sd = copy.deepcopy(model.state_dict())
    freeze_batch_norm(model)
    sd = model.state_dict()
    assert list(sd) == list(plain_sd) and all(torch.equal(sd[k], plain_sd[k]) for k in sd)
    plain = build("fcn32s_efficientnet_lite0", num_classes=3)
    plain.load_state_dict(sd, strict=True)  # eval, export and serve build plain models
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(plain.eval()(x), model.train()(x), rtol=1e-4, atol=1e-5)
    again = _lite0()
    freeze_batch_norm(again)
    again.load_state_dict(plain.state_dict(), strict=True)  # resume loads into the frozen model
    torch.testing.assert_close(again(x), model(x), rtol=0, atol=0)


def test_auto_is_frozen_for_trained_encoders_only():
    assert batch_norm_mode(TrainConfig(model_args={"pretrained": True})) == "frozen"
    assert batch_norm_mode(TrainConfig(init_from="runs/a/best.pt")) == "frozen"
    assert batch_norm_mode(TrainConfig()) == "train"  # random weights: statistics must be estimated
    assert batch_norm_mode(TrainConfig(batch_norm="train", model_args={"pretrained": True})) == "train"
    assert make_config("modern").warmup_steps == -1  # auto: 50 steps when frozen (lr 0.01 diverged without)
    assert not has_batch_norm(build("fcn8s", num_classes=2, width=0.125))  # VGG: nothing to freeze
    with pytest.raises(ValueError, match="batch_norm must be one of auto, train, frozen, not .fixed."):
        tiny_cfg(Path("."), Path("."), batch_norm="fixed")


def test_training_with_frozen_batch_norm_keeps_the_statistics(data_root, tmp_path, caplog):
    cfg = tiny_cfg(data_root, tmp_path / "run", model="fcn8s_efficientnet_lite0", model_args={},
                   batch_norm="frozen", max_steps=2, val_every=2)
    torch.manual_seed(cfg.seed)
    start = build("fcn8s_efficientnet_lite0", num_classes=11).state_dict()
    with caplog.at_level("INFO", logger="fcnseg.train"):
        best = run_train(cfg, progress=False)
    assert any("49 frozen" in r.getMessage() and "49 folded" in r.getMessage() for r in caplog.records)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["warmup_steps"] == FROZEN_BN_WARMUP
    state = load_checkpoint(best).state_dict
    stats = [k for k in state if k.endswith(("running_mean", "running_var"))]
    gammas = [k for k in state if k.endswith("bn1.weight")]
    assert stats and all(torch.equal(state[k], start[k]) for k in stats)  # never re-estimated
    assert any(not torch.equal(state[k], start[k]) for k in gammas)  # but gamma trained


def test_resume_keeps_the_runs_batch_norm_mode(data_root, tmp_path):
    out = tmp_path / "run"
    cfg = tiny_cfg(data_root, out, model="fcn32s_efficientnet_lite0", model_args={}, init_from="",
                   batch_norm="train", max_steps=2, stop_at=1, val_every=1)
    run_train(cfg, progress=False)
    again = tiny_cfg(data_root, out, model="fcn32s_efficientnet_lite0", model_args={}, batch_norm="frozen",
                     max_steps=2, val_every=1, resume=str(out / "last.pt"), overwrite=True)
    with pytest.raises(ValueError, match="trained with batch norm train.*fix: resume with `batch_norm` train"):
        run_train(again, progress=False)


def test_absorbing_the_scale_keeps_the_function_and_loads_into_a_plain_model():
    net = _conv_bn_relu()
    x = torch.tensor([[[[1.0, -2.0]]]])
    want = copy.deepcopy(net).eval()(x)
    freeze_batch_norm(net, absorb=True)
    # By hand: w' = w * gamma / sqrt(var + eps) = (2 * 0.5 / 2, -1 * 2 / 0.5) = (0.5, -4); the statistics become
    # mean 0, var 1 - eps, gamma 1; beta holds the folded bias less the conv's: 1 + (1 - 3) * 0.25 - 1 = -0.5,
    # -1 + (0 + 2) * 4 - 0 = 7.
    assert net[0].weight.flatten().tolist() == [0.5, -4.0]
    assert net[1].bias.tolist() == [-0.5, 7.0] and net[1].weight.tolist() == [1.0, 1.0]
    assert net[1].running_mean.tolist() == [0.0, 0.0]
    torch.testing.assert_close(net.train()(x), want)
    plain = nn.Sequential(nn.Conv2d(1, 2, 1, bias=True), nn.BatchNorm2d(2, eps=1e-12), nn.ReLU())
    plain.load_state_dict(net.state_dict(), strict=True)
    torch.testing.assert_close(plain.eval()(x), want)


def test_frozen_batch_norm_resolves_its_encoder_rate_and_clipping(data_root, tmp_path):
    from fcnseg.train import FROZEN_BN_CLIP_GRAD_NORM, FROZEN_BN_ENCODER_LR_MULT

    for mode, want in (("frozen", (FROZEN_BN_ENCODER_LR_MULT, FROZEN_BN_CLIP_GRAD_NORM, FROZEN_BN_WARMUP)),
                       ("train", (1.0, 0.0, 0))):
        out = tmp_path / mode
        cfg = tiny_cfg(data_root, out, model="fcn8s_efficientnet_lite0", model_args={}, batch_norm=mode,
                       max_steps=1, val_every=1)
        run_train(cfg, progress=False)
        saved = json.loads((out / "config.json").read_text())
        assert (saved["encoder_lr_mult"], saved["clip_grad_norm"], saved["warmup_steps"]) == want
    # Given values are kept.
    out = tmp_path / "given"
    run_train(tiny_cfg(data_root, out, model="fcn8s_efficientnet_lite0", model_args={}, batch_norm="frozen",
                       max_steps=1, val_every=1, encoder_lr_mult=0.5, clip_grad_norm=0.0), progress=False)
    saved = json.loads((out / "config.json").read_text())
    assert (saved["encoder_lr_mult"], saved["clip_grad_norm"]) == (0.5, 0.0)
