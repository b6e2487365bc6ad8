"""Shift-and-stitch against filter rarefaction (section 3.2), and loss sampling (sections 3.4, 4.3)."""

from __future__ import annotations

import json
from fractions import Fraction

import pytest
import torch

from fcnseg.checkpoint import load_checkpoint
from fcnseg.cli import main
from fcnseg.engine import LossSampling, output_stride
from fcnseg.errors import ConfigError
from fcnseg.losses import sample_cells
from fcnseg.models import build
from fcnseg.models.geometry import CoordMap
from fcnseg.models.stitch import DenseUpsample, ShiftAndStitch, rarefy, subsampling_stages
from fcnseg.scorer import make_scorer
from test_train import tiny_cfg

from conftest import TINY

SIZES = [(37, 53), (64, 64), (101, 77)]  # odd sizes, and one a multiple of 32


def _random_net(name: str, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    m = build(name, num_classes=3, **kw).eval()
    for p in m.parameters():  # the score layers start at zero: give every layer weights that matter
        torch.nn.init.normal_(p, std=0.1)
    return m


@pytest.mark.parametrize("name", ["fcn32s", "fcn_alexnet", "fcn32s_googlenet"])
@pytest.mark.parametrize("factor", [2, 4])
def test_stitched_equals_rarefied(name, factor):
    # Section 3.2: the stitched output of the f x f shifted copies equals the net with the last poolings'
    # stride set to 1 and the later filters dilated: borders and odd sizes included, coarse and upsampled.
    # GoogLeNet: the inception blocks' parallel branches and padded stride-1 ceil-mode poolings.
    net = _random_net(name, width=1 / 8, dropout=0.0)
    stitched, rarefied = ShiftAndStitch(net, factor).eval(), rarefy(net, factor).eval()
    for h, w in SIZES:
        x = torch.randn(1, 3, h, w)
        with torch.no_grad():
            a, b = stitched.stitched_scores(x)[""], rarefied.coarse_scores(x)
            assert a.shape == b.shape
            coarse = net.coarse_scores(net.encoder(x))
            # F times as many cells per axis, up to the border cells of the coarse map
            assert a.shape[2] >= factor * (coarse.shape[2] - 1) + 1 and a.shape[3] >= factor * (coarse.shape[3] - 1) + 1
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * b.abs().max().item())
            out = stitched(x)
            assert out.shape == (1, 3, h, w)
            torch.testing.assert_close(out, rarefied(x), rtol=1e-5, atol=1e-5 * out.abs().max().item())
            # the shift-0 copy is the plain net's coarse map: every F-th stitched cell
            torch.testing.assert_close(a[..., ::factor, ::factor], coarse, rtol=1e-5,
                                       atol=1e-5 * coarse.abs().max().item())


def test_dense_upsample_places_the_coarse_cells_where_the_net_does():
    # Independent of the stitching: interpolating the plain net's coarse scores at their coordinate map equals
    # the net's own frozen 64 x 64 bilinear deconvolution between the first and the last cell centres.
    net = _random_net("fcn32s", width=1 / 16, dropout=0.0)
    x = torch.randn(1, 3, 101, 77)
    with torch.no_grad():
        coarse = net.coarse_scores(net.encoder(x))
        ours, theirs = DenseUpsample(net.coarse_map)(coarse, (101, 77)), net(x)
    m = net.coarse_map  # cell c is centred at pixel (c - shift) / scale: 32 c + 12.5 here
    first = -m.shift / m.scale
    lo, hi = [int(first) + 1] * 2, [int(first + (n - 1) / m.scale) for n in coarse.shape[2:]]
    torch.testing.assert_close(ours[..., lo[0] : hi[0] + 1, lo[1] : hi[1] + 1],
                               theirs[..., lo[0] : hi[0] + 1, lo[1] : hi[1] + 1], rtol=1e-5, atol=1e-5)


def test_stitched_equals_rarefied_on_a_modern_encoder():
    # EfficientNet-Lite0: stride-2 depthwise convolutions with padding, batch norm, residuals
    torch.manual_seed(0)
    net = build("fcn32s_efficientnet_lite0", num_classes=3).eval()
    torch.nn.init.normal_(net.score_fr.weight, std=0.1)
    stitched, rarefied = ShiftAndStitch(net, 4).eval(), rarefy(net, 4).eval()
    x = torch.randn(1, 3, 37, 53)
    with torch.no_grad():
        a, b = stitched.stitched_scores(x)[""], rarefied.coarse_scores(x)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * b.abs().max().item())


def test_subsampling_stages_of_vgg16_and_alexnet():
    vgg = build("fcn32s", num_classes=3, width=TINY)
    assert [(s.stride, s.input_stride) for s in subsampling_stages(vgg.encoder)] == \
        [(2, 1), (2, 2), (2, 4), (2, 8), (2, 16)]
    assert [len(s.layers) for s in subsampling_stages(vgg.encoder)] == [1] * 5
    alex = build("fcn_alexnet", num_classes=3, width=TINY)
    # conv1 (stride 4, padded by 100: its output has its input's size), pool1, pool2, pool5
    assert [(s.stride, s.input_stride) for s in subsampling_stages(alex.encoder)] == \
        [(4, 1), (2, 4), (2, 8), (2, 16)]


def test_skip_nets_and_heads_are_stitched():
    # FCN-8s (coarse stride 8): F = 8 shifts the inputs of pool1, pool2 and pool3, the layers that make stride 8;
    # the rest of the net, skips and fusion included, runs as it is on each copy. The output covers the input.
    net = _random_net("fcn8s", width=1 / 16, dropout=0.0)
    s = ShiftAndStitch(net, 8).eval()
    assert [st.input_stride for st in s.stages] == [1, 2, 4]
    x = torch.randn(2, 3, 45, 61)
    with torch.no_grad():
        assert s(x).shape == (2, 3, 45, 61)
        # the shift-0 copy is the plain net: every 8th stitched cell is its coarse score (where stitched)
        dense, coarse = s.stitched_scores(x)[""], net.coarse_scores(net.encoder(x))
    sub = dense[..., ::8, ::8]
    torch.testing.assert_close(sub, coarse[..., : sub.shape[2], : sub.shape[3]], rtol=1e-5, atol=1e-5)
    # the copies' fused maps are cropped to their coarsest path, so the stitched map stops before the coarse
    # map's far cells; with conv1_1's padding of 100 it still reaches past the image's last pixel
    m = s.upsample
    assert (45 - 1) * m.scale + m.shift <= dense.shape[2] - 1 and (61 - 1) * m.scale + m.shift <= dense.shape[3] - 1
    two = _random_net("fcn16s_siftflow", width=1 / 16, dropout=0.0)
    x = torch.randn(1, 3, 33, 40)
    with torch.no_grad():
        st2 = ShiftAndStitch(two, 2).eval()
        out, dense = st2(x), st2.stitched_scores(x)
        feats = two.encoder(x)
    assert set(out) == {"sem", "geo"} and out["geo"].shape == (1, 3, 33, 40)
    for task in ("sem", "geo"):
        c = two.coarse_scores(feats, f"_{task}")
        sub = dense[task][..., ::2, ::2]
        torch.testing.assert_close(sub, c[..., : sub.shape[2], : sub.shape[3]], rtol=1e-5, atol=1e-5)


def test_a_copy_of_the_wrapper_shifts_its_own_layers():
    import copy

    net = _random_net("fcn32s", width=1 / 16, dropout=0.0)
    s = ShiftAndStitch(net, 2).eval()
    x = torch.randn(1, 3, 37, 53)
    with torch.no_grad():
        torch.testing.assert_close(copy.deepcopy(s)(x), s(x), rtol=0, atol=0)


def test_factors_the_net_cannot_take_are_refused():
    net = build("fcn8s", num_classes=3, width=TINY)
    for f in (3, 16):
        with pytest.raises(ConfigError, match="shift_and_stitch"):
            ShiftAndStitch(net, f)
    alex = build("fcn_alexnet", num_classes=3, width=TINY)  # strides 4 (conv1), 2, 2, 2
    with pytest.raises(ConfigError, match="whole subsampling steps"):
        ShiftAndStitch(alex, 16)  # pool1 x pool2 x pool5 = 8, and conv1's 4 cannot be split to give 2 more
    assert [st.stride for st in ShiftAndStitch(alex, 8).stages] == [2, 2, 2]
    assert [st.stride for st in ShiftAndStitch(alex, 32).stages] == [4, 2, 2, 2]


def test_dense_upsample_places_cells_by_their_coordinates():
    # cells at pixels 1, 3, 5 (stride 2, first cell at pixel 1): pixel u reads cell (u - 1) / 2
    s = torch.tensor([[[[0.0, 2.0, 4.0]]]])  # (1, 1, 1, 3)
    up = DenseUpsample(CoordMap(Fraction(1, 2), Fraction(-1, 2)))
    out = up(s, (1, 7))
    # u = 0 lies before the first cell (border repeated); u = 1..5 interpolate; u = 6 past the last
    torch.testing.assert_close(out[0, 0, 0], torch.tensor([0.0, 0.0, 1.0, 2.0, 3.0, 4.0, 4.0]))


def test_scorer_factor_one_is_plain_inference_bit_for_bit(data_root, tmp_path):
    from fcnseg.train import run_train

    best = run_train(tiny_cfg(data_root, tmp_path / "run", max_steps=2, val_every=2), progress=False)
    ck = load_checkpoint(best)
    images = torch.randint(0, 256, (1, 3, 45, 61), dtype=torch.uint8)
    plain = make_scorer(ck, precision="fp32", device="cpu")(images)
    one = make_scorer(ck, precision="fp32", device="cpu", shift_and_stitch=1)(images)
    assert torch.equal(plain, one)
    two = make_scorer(ck, precision="fp32", device="cpu", shift_and_stitch=2)(images)
    assert two.shape == plain.shape and not torch.equal(two, plain)
    # eval: --shift-and-stitch 1 gives the same record as no flag; 2 runs and is recorded
    args = ["eval", "--checkpoint", str(best), "--max-images", "2", "--workers", "0", "--precision", "fp32"]
    assert main([*args, "--out", str(tmp_path / "a.json")]) == 0
    assert main([*args, "--shift-and-stitch", "1", "--out", str(tmp_path / "b.json")]) == 0
    assert main([*args, "--shift-and-stitch", "2", "--out", str(tmp_path / "c.json")]) == 0
    a, b, c = (json.loads((tmp_path / f"{n}.json").read_text()) for n in "abc")
    assert a["mean_iu"] == b["mean_iu"] and a["confusion_matrix"] == b["confusion_matrix"]
    assert c["shift_and_stitch"] == 2 and 0 <= c["mean_iu"] <= 1
    assert main([*args, "--shift-and-stitch", "3"]) == 2  # refused in one line, before the data is read


def test_sample_cells_drops_whole_cells_by_hand():
    # 1 image 5 x 6, cells of 4: a 2 x 2 grid of cells (the last row and column cut by the border)
    target = torch.arange(30).reshape(1, 5, 6) % 3
    g = torch.Generator().manual_seed(0)
    draws = torch.rand(1, 2, 2, generator=torch.Generator().manual_seed(0))
    out = sample_cells(target, 0.5, 4, g, ignore_index=255)
    for cy in range(2):
        for cx in range(2):
            block = out[0, cy * 4 : cy * 4 + 4, cx * 4 : cx * 4 + 4]
            if draws[0, cy, cx] >= 0.5:  # dropped: the whole block is ignored
                assert (block == 255).all()
            else:
                assert torch.equal(block, target[0, cy * 4 : cy * 4 + 4, cx * 4 : cx * 4 + 4])
    assert sample_cells(target, 1.0, 4, g, 255).equal(target)  # keep 1: nothing dropped
    # multi-task targets (N, T, H, W): the tasks of a pixel go together
    two = torch.stack([target, target + 1], dim=1)
    out2 = sample_cells(two, 0.5, 4, torch.Generator().manual_seed(0), 255)
    assert torch.equal(out2[:, 0] == 255, out2[:, 1] == 255)


def test_loss_sampling_keeps_about_p_of_the_cells_and_depends_on_the_step_alone():
    ls = LossSampling(0.25, 32, seed=3)
    target = torch.zeros(8, 320, 320, dtype=torch.long)
    a = ls.apply(target, 17, 255)
    kept = (a[:, ::32, ::32] != 255).float().mean().item()  # 800 cells
    assert 0.18 < kept < 0.32
    assert torch.equal(a, ls.apply(target, 17, 255))  # the same step draws the same cells
    assert not torch.equal(a, ls.apply(target, 18, 255))
    assert not torch.equal(a, LossSampling(0.25, 32, seed=3, rank=1).apply(target, 17, 255))
    assert output_stride(build("fcn16s", num_classes=3, width=TINY)) == 16
    # the cells are the coarse scores': VGG16's FCN-32s centres cell c at pixel 32 c + 12.5 (shift -25/64), so
    # pixel u goes to cell (u + 3) // 32; EfficientNet's at 32 c, so (u + 16) // 32
    assert LossSampling.for_model(build("fcn32s", num_classes=3, width=TINY), 0.5).phase == 3
    assert LossSampling.for_model(build("fcn32s_efficientnet_lite0", num_classes=3), 0.5).phase == 16
    t = torch.zeros(1, 40, 40, dtype=torch.long)
    out = sample_cells(t, 0.5, 32, torch.Generator().manual_seed(1), 255, phase=16)  # blocks 0-15, 16-39 per axis
    for rows in (slice(0, 16), slice(16, 40)):
        for cols in (slice(0, 16), slice(16, 40)):
            assert out[0, rows, cols].unique().numel() == 1  # each block kept or dropped whole


def test_train_one_epoch_draws_each_steps_own_cells():
    from fcnseg.engine import train_one_epoch
    from fcnseg.normalization import IMAGENET

    seen: list[int] = []

    class Spy(LossSampling):
        def apply(self, target, step, ignore_index):
            seen.append(step)
            return super().apply(target, step, ignore_index)

    model = build("fcn32s", num_classes=3, width=TINY, dropout=0.0)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    batches = [(torch.rand(1, 3, 32, 32), torch.randint(0, 3, (1, 32, 32))) for _ in range(3)]
    train_one_epoch(model, batches, opt, sched, norm=IMAGENET, device=torch.device("cpu"), step=5,
                    loss_sampling=Spy(0.5, 32))
    assert seen == [5, 6, 7]


def test_loss_sampling_trains_and_resumes_exactly(data_root, tmp_path):
    from fcnseg.train import run_train

    straight = run_train(tiny_cfg(data_root, tmp_path / "a", loss_sampling=0.5), progress=False)
    run_train(tiny_cfg(data_root, tmp_path / "b", loss_sampling=0.5, stop_at=2), progress=False)
    run_train(tiny_cfg(data_root, tmp_path / "b", loss_sampling=0.5, resume=str(tmp_path / "b" / "last.pt")),
              progress=False)
    a, b = load_checkpoint(straight.parent / "last.pt"), load_checkpoint(tmp_path / "b" / "last.pt")
    for k, v in a.state_dict.items():
        torch.testing.assert_close(b.state_dict[k], v, rtol=0, atol=0, msg=k)
    whole = run_train(tiny_cfg(data_root, tmp_path / "c"), progress=False)  # P = 1: other weights
    c = load_checkpoint(whole.parent / "last.pt")
    assert any(not torch.equal(c.state_dict[k], v) for k, v in a.state_dict.items())
    assert main(["train", "--dataset", "camvid", "--loss-sampling", "0", "--dry-run"]) == 2
    # resuming with another P would draw other cells: refused in one line
    with pytest.raises(ConfigError, match="loss_sampling"):
        run_train(tiny_cfg(data_root, tmp_path / "b", loss_sampling=0.25, max_steps=6,
                           resume=str(tmp_path / "b" / "last.pt")), progress=False)
