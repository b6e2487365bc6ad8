"""Registry-wide model tests (tiny channel widths, the paper's exact layer graph) and crop geometry."""

from __future__ import annotations

import pytest
import torch

from fcnseg.models import FCN, BilinearUpsample, bilinear_kernel, build, list_models

from conftest import TINY

PAPER_NETS = ["fcn32s", "fcn16s", "fcn8s", "fcn8s_atonce", "fcn_alexnet", "fcn32s_googlenet"]
# Two-headed nets (section 5, SIFT Flow): a dict of logits, one per task.
MULTITASK_NETS = [n for n in list_models() if "siftflow" in n]
# The paper's nets with another input: NYUDv2's RGB-D early fusion and RGB-HHA late fusion (Table 4).
MULTIMODAL_NETS = ["fcn32s_rgbd", "fcn32s_rgb_hha", "fcn16s_rgb_hha"]

# A spread of sizes from 1 to 1024 pixels a side: tiny, odd, around the strides, large.
SIZES = [(1, 1), (2, 3), (5, 5), (7, 16), (31, 32), (33, 33), (63, 65), (100, 37), (127, 1), (224, 224),
         (257, 255), (333, 500), (375, 500), (511, 97), (1023, 17), (1024, 1024)]


# GoogLeNet's narrowest branches (5x5_reduce: 16 channels) keep one channel at TINY width, and one channel over
# positive (post-ReLU) inputs is off everywhere about half the time: a dead branch, a zero gradient. At half
# width every branch has 8 or more (no zero gradient in 190 seeds, 0.06 s a step at 45x61).
WIDTHS = {"fcn32s_googlenet": 1 / 2}


def tiny(name: str, **kw) -> FCN:
    """The smallest instance of a registry entry: the paper's nets at ``TINY`` width (GoogLeNet at half width),
    the encoders as they are."""
    if name in PAPER_NETS + MULTIMODAL_NETS or name.endswith("_siftflow"):
        kw["width"] = WIDTHS.get(name, TINY)
    elif name == "fcn_timm":
        kw["encoder"] = "resnet18"
    return build(name, **kw).eval()


def input_channels(model: torch.nn.Module) -> int:
    """Channels a model reads: its ``in_channels`` (late fusion), else its first convolution's."""
    return getattr(model, "in_channels", None) or next(m for m in model.modules()
                                                       if isinstance(m, torch.nn.Conv2d)).in_channels


def test_registry_lists_the_paper_nets():
    assert set(PAPER_NETS) <= set(list_models())
    with pytest.raises(ValueError, match="unknown model 'fcn4s'"):
        build("fcn4s")


@pytest.mark.parametrize(
    "name, offsets",
    [
        ("fcn32s", {"upscore": 19}),
        ("fcn16s", {"score_pool4": 5, "upscore16": 27}),
        ("fcn8s", {"score_pool4": 5, "score_pool3": 9, "upscore8": 31}),
        ("fcn8s_atonce", {"score_pool4": 5, "score_pool3": 9, "upscore8": 31}),
        ("fcn_alexnet", {"upscore": 18}),
        ("fcn32s_googlenet", {"upscore": 16}),
        ("fcn16s_siftflow", {"score_pool4_sem": 5, "upscore16_sem": 27, "score_pool4_geo": 5, "upscore16_geo": 27}),
    ],
)
def test_crop_offsets_equal_the_reference(name, offsets):
    # Full-size networks on the meta device: the offsets come from the layers, and no memory is spent.
    with torch.device("meta"):
        model = build(name)
    assert model.offsets == offsets


def test_alexnet_upsampling_kernel_is_63():
    with torch.device("meta"):
        assert build("fcn_alexnet").upscore.kernel_size == 63
        assert build("fcn32s").upscore.kernel_size == 64


@pytest.mark.parametrize("name", PAPER_NETS + MULTIMODAL_NETS)
def test_output_size_equals_input_size(name):
    model = tiny(name, num_classes=21)
    c = input_channels(model)
    with torch.no_grad():
        for h, w in SIZES:
            y = model(torch.randn(1, c, h, w))
            assert y.shape == (1, 21, h, w), (h, w)


@pytest.mark.parametrize("name", MULTITASK_NETS)
def test_multitask_output_sizes_equal_input_size(name):
    model = tiny(name, num_classes=5)
    assert model.heads == {"sem": 5, "geo": 3}
    with torch.no_grad():
        for h, w in SIZES if name.endswith("_siftflow") else SIZES[::3]:  # the Lite encoder: every third size
            y = model(torch.randn(1, 3, h, w))
            assert {k: tuple(v.shape) for k, v in y.items()} == {"sem": (1, 5, h, w), "geo": (1, 3, h, w)}, (h, w)


def test_multitask_heads_keep_the_reference_layer_names():
    with torch.device("meta"):
        model = build("fcn16s_siftflow")
    head = sorted(k for k in model.state_dict() if not k.startswith("encoder."))
    assert head == sorted(f"{layer}_{task}.{p}" for layer in ("score_fr", "score_pool4") for task in ("sem", "geo")
                          for p in ("weight", "bias"))
    assert model.score_fr_sem.out_channels == 33 and model.score_fr_geo.out_channels == 3
    assert model.upscore2_geo.kernel_size == 4 and model.upscore16_sem.kernel_size == 32
    with pytest.raises(ValueError, match="num_classes must be positive"):
        FCN(model.encoder, {"sem": 0})


@pytest.mark.parametrize("name", list_models())
def test_forward_backward(name):
    model = tiny(name, num_classes=5).train()
    # Score layers start at zero (as in the reference), which blocks gradients to the trunk, and so do
    # residual encoders' zero-initialised last norm scales; give them values so every gradient can be checked.
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.startswith("score") or not p.any():
                p.normal_(0, 0.1)
    x = torch.randn(2, input_channels(model), 45, 61)
    out = model(x)
    multi = getattr(model, "heads", None)  # a multi-task net returns a dict of logits, one per head
    heads = multi or {"": 5}
    outs = out if multi else {"": out}
    assert list(outs) == list(heads)
    for task, y in outs.items():
        assert y.shape == (2, heads[task], 45, 61), task
        assert torch.isfinite(y).all(), task
    sum(y.square().mean() for y in outs.values()).backward()
    for n, p in model.named_parameters():
        assert p.grad is not None, n
        assert torch.isfinite(p.grad).all(), n
        assert p.grad.abs().sum() > 0, f"{n} received a zero gradient"
    # Frozen upsampling holds no parameters at all and no gradient flows into it.
    ups = [m for m in model.modules() if isinstance(m, BilinearUpsample)]
    assert ups and all(not m.learnable and not list(m.parameters()) for m in ups)
    assert all(not m.weight.requires_grad for m in ups)


def test_learnable_upsampling_gets_gradients():
    model = tiny("fcn8s", num_classes=3, learnable_upsampling=True)
    with torch.no_grad():
        model.score_fr.weight.normal_()
    model(torch.randn(1, 3, 40, 40)).sum().backward()
    for name in ("upscore2", "upscore_pool4", "upscore8"):
        w = getattr(model, name).weight
        assert w.requires_grad and w.grad is not None and w.grad.abs().sum() > 0


def test_score_layers_start_at_zero():
    model = tiny("fcn8s")
    for name in ("score_fr", "score_pool4", "score_pool3"):
        layer = getattr(model, name)
        assert layer.weight.abs().sum() == 0 and layer.bias.abs().sum() == 0
    assert model(torch.randn(1, 3, 50, 50)).abs().sum() == 0


def test_bilinear_kernel_values():
    # upsample_filt(4): factor 2, centre 1.5 -> [0.25, 0.75, 0.75, 0.25] per axis.
    k = bilinear_kernel(4)
    expected_1d = torch.tensor([0.25, 0.75, 0.75, 0.25])
    torch.testing.assert_close(k, torch.outer(expected_1d, expected_1d))
    # Odd size 3: factor 2, centre 1 -> [0.5, 1, 0.5].
    torch.testing.assert_close(bilinear_kernel(3)[1], torch.tensor([0.5, 1.0, 0.5]))


@pytest.mark.parametrize("channels", [1, 21, 150])
@pytest.mark.parametrize("factor, kernel", [(8, 16), (32, 63), (2, 4)])
def test_frozen_upsampling_equals_dense(channels, factor, kernel):
    frozen = BilinearUpsample(channels, factor, kernel)
    dense = BilinearUpsample(channels, factor, kernel, learnable=True)
    assert dense.weight.shape == (channels, channels, kernel, kernel) and not list(frozen.parameters())
    x = torch.randn(2, channels, 9, 7)
    with torch.no_grad():
        want = dense(x)
        torch.testing.assert_close(frozen(x), want, atol=1e-5, rtol=0)
        cl = x.contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(frozen(cl), want, atol=1e-5, rtol=0)


def test_upsampling_interpolates_linearly():
    # Inside the image, 2x bilinear upsampling of a linear ramp is a linear ramp at half the slope.
    up = BilinearUpsample(1, 2, 4)
    x = torch.arange(8.0).reshape(1, 1, 1, 8).expand(1, 1, 8, 8)
    y = up(x)[0, 0, 5, 2:-2]
    torch.testing.assert_close(y[1:] - y[:-1], torch.full((y.numel() - 1,), 0.5))


def test_any_number_of_classes_and_channels():
    model = tiny("fcn8s", num_classes=2, in_channels=4)  # RGB-D in, binary out
    assert model(torch.randn(1, 4, 37, 41)).shape == (1, 2, 37, 41)
    with pytest.raises(ValueError, match="num_classes"):
        tiny("fcn32s", num_classes=0)


def test_atonce_scales_the_skips():
    plain, atonce = tiny("fcn8s"), tiny("fcn8s_atonce")
    atonce.load_state_dict(plain.state_dict())
    with torch.no_grad():
        for m in (plain, atonce):
            m.score_pool3.weight.fill_(1.0)
    x = torch.randn(1, 3, 64, 64)
    # Only the pool3 path is non-zero: at-once output = 1e-4 x staged output.
    torch.testing.assert_close(atonce(x), plain(x) * 1e-4, rtol=1e-4, atol=1e-7)


def test_staged_initialisation():
    f32 = tiny("fcn32s")
    with torch.no_grad():
        for p in f32.parameters():
            p.normal_()
    f16 = tiny("fcn16s")
    copied, kept = f16.init_from(f32.state_dict())
    assert set(kept) == {"score_pool4.weight", "score_pool4.bias"}
    assert "score_fr.weight" in copied and "encoder.fc7.weight" in copied
    torch.testing.assert_close(f16.score_fr.weight, f32.score_fr.weight)
    assert f16.score_pool4.weight.abs().sum() == 0
    f8 = tiny("fcn8s")
    _, kept8 = f8.init_from(f16.state_dict())
    assert set(kept8) == {"score_pool3.weight", "score_pool3.bias"}
    torch.testing.assert_close(f8.encoder.conv1_1.weight, f32.encoder.conv1_1.weight)


def test_unknown_factory_arguments_are_named():
    with pytest.raises(ValueError, match="'fcn8s' takes no argument 'pretrained'"):
        build("fcn8s", pretrained=True)
