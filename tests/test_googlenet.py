"""FCN-GoogLeNet (the paper's Table 1): sizes, gradients, derived crops, Caffe names, conversion, ``fcnseg models``.

The reference forward below is written from bvlc_googlenet's prototxt with ``torch.nn.functional`` and the
Caffe layer names, independently of the model's modules, so the conversion test checks the whole chain: a
caffemodel in Caffe's names -> the converter -> the model -> the same numbers as the prototxt's net.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from fcnseg.checkpoint import load_checkpoint
from fcnseg.cli import main
from fcnseg.convert import ConvertError, convert_caffemodel
from fcnseg.errors import ConfigError, DataError
from fcnseg.models import FCN, CoordMap, GoogLeNetTrunk, bilinear_kernel, build, receptive_field
from fcnseg.models.backbones import trace_coord_maps
from fcnseg.models.googlenet import CONV1_PAD, INCEPTIONS
from fcnseg.models.zoo import architectures_table, computed_architecture, load_paper_architectures
from test_convert import Layer, write_caffemodel

from conftest import TINY

# bvlc_googlenet's train_val.prototxt: (inception module, its six num_output), or a 3x3 stride-2 pooling.
PROTOTXT = [
    ("inception_3a", (64, 96, 128, 16, 32, 32)), ("inception_3b", (128, 128, 192, 32, 96, 64)), ("pool3", None),
    ("inception_4a", (192, 96, 208, 16, 48, 64)), ("inception_4b", (160, 112, 224, 24, 64, 64)),
    ("inception_4c", (128, 128, 256, 24, 64, 64)), ("inception_4d", (112, 144, 288, 32, 64, 64)),
    ("inception_4e", (256, 160, 320, 32, 128, 128)), ("pool4", None),
    ("inception_5a", (256, 160, 320, 32, 128, 128)), ("inception_5b", (384, 192, 384, 48, 128, 128)),
]
BRANCH_CONVS = ("1x1", "3x3_reduce", "3x3", "5x5_reduce", "5x5", "pool_proj")
SIZES = [(1, 1), (1, 2), (2, 3), (17, 23), (31, 33), (64, 64), (101, 77)]


def tiny(**kw) -> FCN:
    return build("fcn32s_googlenet", width=TINY, **kw).eval()


def ch(c: int, width: float = TINY) -> int:
    return max(1, round(c * width))


def test_output_size_equals_input_size():
    model = tiny(num_classes=21)
    with torch.no_grad():
        for h, w in SIZES:
            y = model(torch.randn(1, 3, h, w))
            assert y.shape == (1, 21, h, w), (h, w)
            assert torch.isfinite(y).all()


def _fits(model: FCN, n: int) -> bool:
    try:
        with torch.device("meta"):
            return model(torch.empty(1, 3, n, 2 * n + 1)).shape[2:] == (n, 2 * n + 1)
    except RuntimeError:  # a pooling with no window left: the input is too small for the padding
        return False


def test_conv1_pad_is_the_least_that_covers_every_size():
    # Shapes only: on the meta device every size from 1 to 300 pixels costs no arithmetic.
    with torch.device("meta"):
        nets = {pad: FCN(GoogLeNetTrunk(pad=pad, width=TINY), 3) for pad in (3, CONV1_PAD - 1, CONV1_PAD)}
    assert all(_fits(nets[CONV1_PAD], n) for n in range(1, 301))
    assert [n for n in range(1, 101) if not _fits(nets[CONV1_PAD - 1], n)] == [1, 2]
    assert [n for n in range(1, 101) if not _fits(nets[3], n)] == list(range(1, 31))  # Caffe's own pad


@pytest.mark.parametrize("pad", [3, 18, 50, 100])
def test_crop_offset_and_kernel_are_derived(pad):
    # Not tabulated: the map x -> x/32 + (pad - 33)/32 lands 63-kernel upsampling at x + pad - 2.
    with torch.device("meta"):
        model = FCN(GoogLeNetTrunk(pad=pad), 21)
    assert model.offsets == {"upscore": pad - 2}
    assert model.upscore.kernel_size == 63
    with torch.device("meta"):
        assert build("fcn32s_googlenet").offsets == {"upscore": 16}


def test_composed_map_equals_the_traced_one():
    # The branches' shared map (geometry's branches()) equals the map traced from the calls the data makes.
    trunk = GoogLeNetTrunk(width=TINY)
    assert trunk.coord_maps() == {"fc7": CoordMap(Fraction(1, 32), Fraction(CONV1_PAD - 33, 32))}
    assert trace_coord_maps(trunk, 3, probe=(227, 227)) == trunk.coord_maps()
    with pytest.raises(ConfigError, match="branches of Inception map coordinates differently"):
        inception = trunk.inception_3a
        inception._modules["5x5"].padding = (1, 1)  # a branch that would shrink: no longer concatenable
        trunk.coord_maps()


def test_every_parameter_gets_a_gradient():
    # Half width: at TINY the narrowest branches have one channel, which a ReLU turns off everywhere about half
    # the time (tests/test_models.py: WIDTHS).
    torch.manual_seed(0)
    model = build("fcn32s_googlenet", width=1 / 2, num_classes=5).train()
    with torch.no_grad():
        model.score_fr.weight.normal_(0, 0.1)  # the score layer starts at zero, which would block every gradient
    x = torch.randn(2, 3, 45, 61)
    y = model(x)
    assert y.shape == (2, 5, 45, 61) and torch.isfinite(y).all()
    y.square().mean().backward()
    for n, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
        assert p.grad.abs().sum() > 0, n


def caffe_weight_layers(width: float = TINY) -> list[tuple[str, int, int, int]]:
    """bvlc_googlenet's convolutions as (Caffe name, in, out, kernel), from the prototxt's table above."""
    c64, c192 = ch(64, width), ch(192, width)
    out = [("conv1/7x7_s2", 3, c64, 7), ("conv2/3x3_reduce", c64, c64, 1), ("conv2/3x3", c64, c192, 3)]
    c_in = c192
    for name, chans in PROTOTXT:
        if chans is None:
            continue
        c1, c3r, c3, c5r, c5, cp = (ch(c, width) for c in chans)
        out += [(f"{name}/1x1", c_in, c1, 1), (f"{name}/3x3_reduce", c_in, c3r, 1), (f"{name}/3x3", c3r, c3, 3),
                (f"{name}/5x5_reduce", c_in, c5r, 1), (f"{name}/5x5", c5r, c5, 5), (f"{name}/pool_proj", c_in, cp, 1)]
        c_in = c1 + c3 + c5 + cp
    return out


def test_modules_are_named_after_caffes_layers():
    assert [(n, tuple(c) if c else None) for n, c in INCEPTIONS] == PROTOTXT
    model = tiny()
    convs = [(name.removeprefix("encoder.").replace(".", "/"), m.in_channels, m.out_channels, m.kernel_size[0])
             for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert convs == [*caffe_weight_layers(), ("score_fr", ch(1024), 21, 1)]
    kinds = {name.removeprefix("encoder.").replace(".", "/"): type(m) for name, m in model.named_modules()}
    assert kinds["pool1/norm1"] is kinds["conv2/norm2"] is nn.LocalResponseNorm
    assert kinds["pool4/3x3_s2"] is kinds["inception_3a/pool"] is nn.MaxPool2d
    assert kinds["pool5/drop_7x7_s1"] is nn.Dropout and "pool5/7x7_s1" not in kinds  # average pooling discarded
    assert not any(k.startswith(("loss1", "loss2", "loss3")) for k in kinds)  # only the final loss layer's path
    assert all(m.ceil_mode for m in model.modules() if isinstance(m, nn.MaxPool2d))
    assert model.encoder.out_channels == {"fc7": ch(384) + ch(384) + ch(128) + ch(128)}
    # The prototxt's fillers: xavier (uniform, +-sqrt(3 / fan_in)) and biases 0.2.
    conv = model.encoder.inception_4a._modules["5x5"]
    assert (conv.bias == 0.2).all() and conv.weight.abs().max() <= (3 / (conv.in_channels * 25)) ** 0.5


def test_table1_columns_are_computed_from_the_layers():
    with torch.device("meta"):
        model = build("fcn32s_googlenet")
    path = model.encoder.path("fc7")
    assert receptive_field([*path, model.score_fr]).size == 715  # the FCN: 5x5 branches, no average pooling
    assert receptive_field([*path, nn.AvgPool2d(7, 1), model.score_fr]).size == 907  # the classifier: Table 1
    got = {name: computed_architecture(name) for name in ("fcn_alexnet", "fcn32s", "fcn32s_googlenet")}
    assert {n: (c.rf_size, c.max_stride, c.conv_layers) for n, c in got.items()} == {
        "fcn_alexnet": (355, 32, 8), "fcn32s": (404, 32, 16), "fcn32s_googlenet": (715, 32, 22)}
    # bvlc_googlenet's deploy net holds 6,998,552 parameters; less its 1000-way classifier, plus score_fr:
    assert got["fcn32s_googlenet"].params == 6_998_552 - 1_025_000 + 1024 * 21 + 21
    assert round(got["fcn_alexnet"].params / 1e6) == 57 and round(got["fcn32s"].params / 1e6) == 134


def reference_forward(blobs: dict[str, list[torch.Tensor]], x: torch.Tensor, pad: int = CONV1_PAD) -> torch.Tensor:
    """bvlc_googlenet up to inception_5b, from its prototxt, in Caffe's names (test phase: no dropout)."""

    def conv(name: str, x: torch.Tensor, padding: int = 0, stride: int = 1) -> torch.Tensor:
        w, b = blobs[name]
        return F.relu(F.conv2d(x, w, b, stride, padding))

    def pool(x: torch.Tensor, stride: int = 2, padding: int = 0) -> torch.Tensor:
        return F.max_pool2d(x, 3, stride, padding, ceil_mode=True)

    def lrn(x: torch.Tensor) -> torch.Tensor:
        return F.local_response_norm(x, 5, alpha=1e-4, beta=0.75, k=1.0)

    x = lrn(pool(conv("conv1/7x7_s2", x, pad, 2)))
    x = pool(lrn(conv("conv2/3x3", conv("conv2/3x3_reduce", x), 1)))
    for name, chans in PROTOTXT:
        if chans is None:
            x = pool(x)
            continue
        x = torch.cat([conv(f"{name}/1x1", x), conv(f"{name}/3x3", conv(f"{name}/3x3_reduce", x), 1),
                       conv(f"{name}/5x5", conv(f"{name}/5x5_reduce", x), 2),
                       conv(f"{name}/pool_proj", pool(x, 1, 1))], dim=1)
    return x  # (N, 1024 * width, ceil(H/32), ceil(W/32))


def _random_blobs(rng: np.random.Generator, width: float = TINY) -> dict[str, list[np.ndarray]]:
    return {name: [rng.standard_normal((c_out, c_in, k, k)).astype(np.float32) * 0.3,
                   rng.standard_normal(c_out).astype(np.float32) * 0.1 + 0.1]
            for name, c_in, c_out, k in caffe_weight_layers(width)}


def bvlc_googlenet_layers(blobs: dict[str, list[np.ndarray]], rng: np.random.Generator) -> list[Layer]:
    """An ImageNet bvlc_googlenet-like layer list: the trunk, the auxiliary classifiers and loss3/classifier."""
    layers: list[Layer] = [("data", "Data", [])]
    for name, bs in blobs.items():
        layers += [(name, "Convolution", bs), (name.replace("/", "/relu_"), "ReLU", [])]
        if name == "inception_4a/pool_proj":  # the first auxiliary classifier branches off inception_4a
            layers += [("loss1/ave_pool", "Pooling", []),
                       ("loss1/conv", "Convolution", [rng.standard_normal((4, 3, 1, 1)).astype(np.float32),
                                                      np.zeros(4, np.float32)]),
                       ("loss1/fc", "InnerProduct", [np.ones((8, 64), np.float32), np.zeros(8, np.float32)]),
                       ("loss1/classifier", "InnerProduct", [np.ones((1000, 8), np.float32),
                                                             np.zeros(1000, np.float32)])]
        if name == "inception_4d/pool_proj":
            layers += [("loss2/conv", "Convolution", [np.ones((4, 3, 1, 1), np.float32), np.zeros(4, np.float32)]),
                       ("loss2/classifier", "InnerProduct", [np.ones((1000, 8), np.float32),
                                                             np.zeros(1000, np.float32)])]
    c = sum(blobs[f"inception_5b/{b}"][0].shape[0] for b in ("1x1", "3x3", "5x5", "pool_proj"))  # 1024 * width
    layers += [("pool5/7x7_s1", "Pooling", []), ("pool5/drop_7x7_s1", "Dropout", []),
               ("loss3/classifier", "InnerProduct", [rng.standard_normal((1000, c)).astype(np.float32),
                                                     np.zeros(1000, np.float32)]),
               ("prob", "Softmax", [])]
    return layers


@pytest.mark.parametrize("fmt", ["new", "v1"])
def test_convert_bvlc_googlenet(tmp_path, fmt):
    rng = np.random.default_rng(0)
    blobs = _random_blobs(rng)
    src = write_caffemodel(tmp_path / "bvlc_googlenet.caffemodel", bvlc_googlenet_layers(blobs, rng), fmt)
    dst = tmp_path / "g.ckpt"
    if fmt == "v1":  # the command line, as docs/explanations/architecture.md gives it
        assert main(["convert", "caffe", str(src), "--model", "fcn32s_googlenet", "--model-arg", f"width={TINY}",
                     "-o", str(dst)]) == 0
    else:
        convert_caffemodel(src, dst, model="fcn32s_googlenet", model_args={"width": TINY})
    ck = load_checkpoint(dst)
    assert (ck.model_name, ck.model_args) == ("fcn32s_googlenet", {"width": TINY, "num_classes": 21})
    state = ck.state_dict
    for name, (w, b) in blobs.items():  # key by key: Caffe's "a/b" is the model's "encoder.a.b"
        key = "encoder." + name.replace("/", ".")
        assert torch.equal(state[f"{key}.weight"], torch.from_numpy(w)), name
        assert torch.equal(state[f"{key}.bias"], torch.from_numpy(b)), name
    trunk_keys = {k for k in state if k.startswith("encoder.")}
    assert len(trunk_keys) == 2 * len(blobs)  # every trunk parameter came from the file
    assert not state["score_fr.weight"].any() and not state["score_fr.bias"].any()  # the paper's zero start
    model = ck.build_model().eval()
    x = torch.randn(1, 3, 75, 58)
    want = reference_forward({n: [torch.from_numpy(a) for a in bs] for n, bs in blobs.items()}, x)
    with torch.no_grad():
        got = model.encoder(x)["fc7"]
    assert got.shape == want.shape == (1, ch(1024), 3, 2)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_convert_fcn_googlenet_whole(tmp_path):
    # An FCN-GoogLeNet trained in Caffe: score_fr and the frozen bilinear upscore (63) fill the head too.
    rng = np.random.default_rng(1)
    blobs = _random_blobs(rng)
    k = ch(1024)
    score = [rng.standard_normal((21, k, 1, 1)).astype(np.float32), rng.standard_normal(21).astype(np.float32)]
    up = np.zeros((21, 21, 63, 63), np.float32)
    up[range(21), range(21)] = bilinear_kernel(63).numpy()
    layers = [*bvlc_googlenet_layers(blobs, rng)[:-3], ("score_fr", "Convolution", score),
              ("upscore", "Deconvolution", [up]), ("score", "Crop", [])]
    src = write_caffemodel(tmp_path / "fcn-googlenet.caffemodel", layers)
    dst = convert_caffemodel(src, tmp_path / "f.ckpt", model="fcn32s_googlenet", model_args={"width": TINY})
    model = load_checkpoint(dst).build_model().eval()
    x = torch.randn(1, 3, 41, 70)
    p = {n: [torch.from_numpy(a) for a in bs] for n, bs in blobs.items()}
    h = F.conv2d(reference_forward(p, x), *map(torch.from_numpy, score))
    h = F.conv_transpose2d(h, torch.from_numpy(up), stride=32)
    want = h[:, :, 16:16 + 41, 16:16 + 70]  # the crop: CONV1_PAD - 2
    with torch.no_grad():
        torch.testing.assert_close(model(x), want, rtol=1e-4, atol=1e-4)


def test_a_file_of_another_net_is_refused_by_name(tmp_path):
    rng = np.random.default_rng(2)
    src = write_caffemodel(tmp_path / "bvlc_googlenet.caffemodel", bvlc_googlenet_layers(_random_blobs(rng), rng))
    with pytest.raises(ConvertError, match="lacks layers that fcn32s needs: conv1_1, conv1_2"):
        convert_caffemodel(src, tmp_path / "x.ckpt", model="fcn32s", model_args={"width": TINY})
    with pytest.raises(ConvertError, match=r"layer 'conv1/7x7_s2' blob 0 has shape \(2, 3, 7, 7\); "
                                           r"fcn32s_googlenet expects \(4, 3, 7, 7\) for encoder.conv1.7x7_s2.weight"):
        convert_caffemodel(src, tmp_path / "x.ckpt", model="fcn32s_googlenet", model_args={"width": 1 / 16})


def test_models_command_shows_table1(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    rows = {r.label: r for r in load_paper_architectures()}
    assert list(rows) == ["FCN-AlexNet", "FCN-VGG16", "FCN-GoogLeNet"]
    assert [(r.mean_iu, r.forward_ms, r.params_m, r.rf_size, r.max_stride) for r in rows.values()] == [
        (39.8, 50, 57, 355, 32), (56.0, 210, 134, 404, 32), (42.5, 59, 6, 907, 32)]
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip().startswith("FCN-")}
    assert lines["FCN-AlexNet"].split()[1:] == "fcn_alexnet 39.8 50 ms 8 | 8 57M | 57.0M 355 | 355 32 | 32".split()
    assert lines["FCN-VGG16"].split()[1:] == "fcn32s 56.0 210 ms 16 | 16 134M | 134.3M 404 | 404 32 | 32".split()
    assert lines["FCN-GoogLeNet"].split()[1:] == \
        "fcn32s_googlenet 42.5 59 ms 22 | 22 6M | 6.0M 907 | 715 32 | 32".split()
    assert "715 + 6 * 32 = 907" in out


def test_a_malformed_table1_row_is_named(tmp_path):
    bad = tmp_path / "paper.toml"
    bad.write_text('[[architecture]]\nmodel = "fcn32s_googlenet"\nlabel = "FCN-GoogLeNet"\nsource = "s"\n'
                   "mean_iu = 42.5\nforward_ms = 59\nconv_layers = 22\nparams = 6\nrf_size = 907\nmax_stride = 32\n")
    with pytest.raises(DataError, match="architecture 'FCN-GoogLeNet': unknown key 'params', no 'params_m'"):
        load_paper_architectures(bad)
    bad.write_text('status = "x"\n')  # records without Table 1: the section is left out
    assert architectures_table(bad) == []


def test_forward_time_is_measured_only_when_asked(monkeypatch, capsys):
    from fcnseg.models import zoo

    ms = zoo.forward_ms("fcn_alexnet", size=48, repeats=1)  # a real pass, small
    assert 0 < ms < 60_000
    calls: list[str] = []
    monkeypatch.setattr(zoo, "forward_ms", lambda name, **kw: calls.append(name) or 123.4)
    assert main(["models"]) == 0 and calls == []  # the plain listing never runs a net
    capsys.readouterr()
    assert main(["models", "--time"]) == 0
    assert calls == ["fcn_alexnet", "fcn32s", "fcn32s_googlenet"]
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.strip().startswith("FCN-VGG16"))
    assert "210 | 123 ms" in line and "fp32 on this CPU" in out
