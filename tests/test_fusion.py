"""The NYUDv2 multi-modal nets: RGB-D early fusion's conv1_1 widening and RGB-HHA late fusion (Table 4)."""

from __future__ import annotations

import pytest
import torch

from fcnseg.checkpoint import Checkpoint, load_init_weights, save_checkpoint
from fcnseg.models import build, widen_input_filters
from fcnseg.models.fcn import _crop
from fcnseg.models.fusion import LateFusion
from fcnseg.normalization import CAFFE_VGG

from conftest import TINY


def randomised(model: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
    return model.eval()


def test_widen_input_filters_is_the_references_rgbd_surgery():
    # nyud-fcn32s-color-d/solve.py: conv1_1_bgrd[:, :3] = conv1_1; conv1_1_bgrd[:, 3] = mean(conv1_1, axis=1).
    w = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    wide = widen_input_filters(w, 4)
    assert wide.shape == (2, 4, 2, 2)
    torch.testing.assert_close(wide[:, :3], w)
    # Filter 0, tap (0, 0): channels hold 0, 4, 8 -> mean 4.
    assert wide[0, 3, 0, 0] == 4.0
    torch.testing.assert_close(wide[:, 3], (w[:, 0] + w[:, 1] + w[:, 2]) / 3)
    with pytest.raises(ValueError, match="RGB filters"):
        widen_input_filters(wide, 5)


def test_rgbd_net_starts_from_rgb_weights():
    rgb = randomised(build("fcn32s", width=TINY, num_classes=40))
    rgbd = build("fcn32s_rgbd", width=TINY)
    assert rgbd.encoder.conv1_1.in_channels == 4 and rgbd.score_fr.out_channels == 40
    copied, kept = rgbd.init_from(rgb.state_dict())
    assert kept == [] and "encoder.conv1_1.weight" in copied
    # A depth channel equal to the grey image (mean of R, G, B) gives the RGB net's output: the depth
    # filter is the mean of the colour filters, so it adds the colour filters' response to the grey image.
    x = torch.randn(1, 3, 50, 60)
    grey = x.mean(1, keepdim=True)
    w = rgb.encoder.conv1_1.weight
    torch.testing.assert_close(rgbd.encoder.conv1_1.weight[:, :3], w)
    torch.testing.assert_close(rgbd.encoder.conv1_1.weight[:, 3], w.mean(1))
    rgb.encoder.conv1_1.weight.data += w.mean(1, keepdim=True) / 3  # the same response through RGB alone
    torch.testing.assert_close(rgbd.eval()(torch.cat([x, grey], 1)), rgb(x), atol=1e-5, rtol=1e-4)


def test_late_fusion_equals_the_references_sum_before_upsampling():
    # The reference: score_fused = 0.5 score_frcolor + 0.5 score_frhha, then one upscore and crop.
    fused = randomised(build("fcn32s_rgb_hha", width=TINY, num_classes=6))
    x = torch.randn(2, 6, 47, 53)
    color, hha = fused.color, fused.hha
    coarse = 0.5 * color.score_fr(color.encoder(x[:, :3])["fc7"]) + 0.5 * hha.score_fr(hha.encoder(x[:, 3:])["fc7"])
    want = _crop(color.upscore(coarse), color.offsets["upscore"], x)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), want, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="takes 6 channels, got 3"):
        fused(torch.randn(1, 3, 40, 40))
    with pytest.raises(ValueError, match="at least two"):
        LateFusion({"color": (color, 3)})


def test_late_fusion_init_from_branches_and_single_nets(tmp_path):
    rgb = randomised(build("fcn32s", width=TINY, num_classes=40))
    hha = randomised(build("fcn32s", width=TINY, num_classes=40))
    paths = {}
    for name, net in (("rgb", rgb), ("hha", hha)):
        paths[name] = save_checkpoint(Checkpoint("fcn32s", {"width": TINY}, net.state_dict(), ["c"] * 40,
                                                 [(0, 0, 0)] * 40, CAFFE_VGG), tmp_path / f"{name}.pt")
    # The reference's initialisation of FCN-32s RGB-HHA: the trained RGB and HHA nets, by prefix.
    state, norm = load_init_weights(f"color={paths['rgb']},hha={paths['hha']}")
    assert norm is None and "color.encoder.conv1_1.weight" in state and "hha.score_fr.bias" in state
    fused = build("fcn32s_rgb_hha", width=TINY)
    copied, kept = fused.init_from(state)
    assert kept == [] and len(copied) == 2 * len(rgb.state_dict())
    x = torch.randn(1, 6, 40, 44)
    with torch.no_grad():
        torch.testing.assert_close(fused.eval()(x), (rgb(x[:, :3]) + hha(x[:, 3:])) / 2)
    # Staged: FCN-16s RGB-HHA from FCN-32s RGB-HHA; only the new skip score layers stay at zero.
    f16 = build("fcn16s_rgb_hha", width=TINY)
    _, kept16 = f16.init_from(fused.state_dict())
    assert sorted(kept16) == sorted(f"{b}.score_pool4.{p}" for b in ("color", "hha") for p in ("weight", "bias"))
    # One single-stream net without prefixes (e.g. ImageNet VGG16) starts both branches.
    both = build("fcn32s_rgb_hha", width=TINY)
    _, kept1 = both.init_from(rgb.state_dict())
    assert kept1 == []
    torch.testing.assert_close(both.hha.encoder.conv1_1.weight, rgb.encoder.conv1_1.weight)
    # A plain checkpoint path still gives its state dict and its normalisation.
    assert load_init_weights(str(paths["rgb"]))[1] == CAFFE_VGG
    with pytest.raises(ValueError, match="NAME=CHECKPOINT"):
        load_init_weights("color=,hha=x.pt")


def test_frozen_encoders_of_late_fusion():
    fused = build("fcn32s_rgb_hha", width=TINY)
    fused.encoder.requires_grad_(False)
    trainable = {n.split(".")[1] for n, p in fused.named_parameters() if p.requires_grad}
    assert trainable == {"score_fr"}
