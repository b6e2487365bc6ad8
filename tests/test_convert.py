"""Weight import: caffemodels written by the real protobuf library, and torchvision VGG16 state dicts.

The caffemodels are serialised by ``google.protobuf`` with classes built from the library's own declaration of
caffe.proto's subset (:mod:`fcnseg.convert.caffe_proto`) plus fields the reader must skip; the declaration's
field numbers are checked against BVLC Caffe's caffe.proto, written out here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from google.protobuf import descriptor_pb2
from torch import nn

from fcnseg.checkpoint import load_checkpoint
from fcnseg.convert import (
    ConvertError,
    convert_caffemodel,
    convert_torchvision_vgg16,
    read_caffe_layers,
    read_caffemodel,
    vgg16_trunk_state,
)
from fcnseg.convert._common import VOC_CLASSES, voc_palette
from fcnseg.convert.caffe_proto import CAFFE_PROTO, V1_TYPE_NAMES, caffe_messages
from fcnseg.convert.torchvision import TORCHVISION_VGG16_KEYS
from fcnseg.models import FCN, BilinearUpsample, build
from fcnseg.models.vgg import TORCHVISION_VGG16_CONVS
from fcnseg.normalization import CAFFE_VGG, IMAGENET

from conftest import TINY

# ---------------------------------------------------------------------------------------------------------
# caffe.proto: the library's declaration, checked against BVLC Caffe's src/caffe/proto/caffe.proto, and a
# writer built from it with the fields a real caffemodel carries that the reader must skip.

_F = descriptor_pb2.FieldDescriptorProto
_BVLC = {  # message -> field -> (number, type) in BVLC caffe.proto
    "BlobShape": {"dim": (1, _F.TYPE_INT64)},
    "BlobProto": {"num": (1, _F.TYPE_INT32), "channels": (2, _F.TYPE_INT32), "height": (3, _F.TYPE_INT32),
                  "width": (4, _F.TYPE_INT32), "data": (5, _F.TYPE_FLOAT), "shape": (7, _F.TYPE_MESSAGE),
                  "double_data": (8, _F.TYPE_DOUBLE)},
    "LayerParameter": {"name": (1, _F.TYPE_STRING), "type": (2, _F.TYPE_STRING), "blobs": (7, _F.TYPE_MESSAGE)},
    "V0LayerParameter": {"name": (1, _F.TYPE_STRING), "type": (2, _F.TYPE_STRING),
                         "blobs": (50, _F.TYPE_MESSAGE)},
    "V1LayerParameter": {"layer": (1, _F.TYPE_MESSAGE), "name": (4, _F.TYPE_STRING), "type": (5, _F.TYPE_ENUM),
                         "blobs": (6, _F.TYPE_MESSAGE)},
    "NetParameter": {"name": (1, _F.TYPE_STRING), "layers": (2, _F.TYPE_MESSAGE), "layer": (100, _F.TYPE_MESSAGE)},
}
_V1_ENUM = {"Convolution": 4, "Dropout": 6, "InnerProduct": 14, "Pooling": 17, "ReLU": 18, "Softmax": 20,
            "SoftmaxWithLoss": 21, "Deconvolution": 39, "Python": 0, "Crop": 0, "Scale": 0, "Data": 5}


def test_caffe_proto_has_caffes_field_numbers():
    declared = {m.name: {f.name: (f.number, f.type) for f in m.field} for m in CAFFE_PROTO.message_type}
    assert declared == _BVLC
    assert all(V1_TYPE_NAMES[n] == k for k, n in _V1_ENUM.items() if n)


def _extra(fdp: descriptor_pb2.FileDescriptorProto, message: str, fields: list[tuple]) -> None:
    """Add fields (name, number, type, repeated[, type_name]) to ``message`` of ``fdp``, declaring it if new."""
    m = next((m for m in fdp.message_type if m.name == message), None) or fdp.message_type.add(name=message)
    for fname, number, ftype, repeated, *rest in fields:
        f = m.field.add(name=fname, number=number, type=ftype,
                        label=_F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL)
        if rest:
            f.type_name = rest[0]


def _caffe_net_class(packed: bool) -> type:
    """``caffe.NetParameter`` of the library's declaration plus fields to skip (bottom, top, param,
    convolution_param, diff, blobs_lr, input); ``packed`` False writes repeated numbers one field each (legal
    proto2, which readers must accept)."""
    fdp = descriptor_pb2.FileDescriptorProto()
    fdp.CopyFrom(CAFFE_PROTO)
    fdp.name = f"caffe_test_{packed}.proto"
    s, f32, u32, msg = _F.TYPE_STRING, _F.TYPE_FLOAT, _F.TYPE_UINT32, _F.TYPE_MESSAGE
    _extra(fdp, "ParamSpec", [("name", 1, s, False), ("lr_mult", 3, f32, False)])
    _extra(fdp, "ConvolutionParameter", [("num_output", 1, u32, False), ("kernel_size", 4, u32, True)])
    _extra(fdp, "BlobProto", [("diff", 6, f32, True)])
    _extra(fdp, "LayerParameter", [("bottom", 3, s, True), ("top", 4, s, True),
                                   ("param", 6, msg, True, ".caffe.ParamSpec"),
                                   ("convolution_param", 106, msg, False, ".caffe.ConvolutionParameter")])
    _extra(fdp, "V1LayerParameter", [("bottom", 2, s, True), ("top", 3, s, True), ("blobs_lr", 7, f32, True)])
    _extra(fdp, "NetParameter", [("input", 3, s, True)])
    for m in fdp.message_type:
        for f in m.field:
            if f.label == _F.LABEL_REPEATED and f.type not in (s, msg):
                f.options.packed = packed
    return caffe_messages(fdp)["NetParameter"]


Layer = tuple[str, str, list[np.ndarray]]  # name, type, blobs


def _legacy(shape: tuple[int, ...]) -> tuple[int, ...]:
    return (1,) * (4 - len(shape)) + tuple(shape)  # old blobs are 4-D (num, channels, height, width)


def _fill(bp, b: np.ndarray, legacy: bool, double: bool) -> None:
    if legacy:
        bp.num, bp.channels, bp.height, bp.width = _legacy(b.shape)
    else:
        bp.shape.dim.extend(b.shape)
    (bp.double_data if double else bp.data).extend(b.ravel().tolist())
    bp.diff.extend([1.0] * min(b.size, 3))  # gradients: must be ignored


def write_caffemodel(path: Path, layers: list[Layer], fmt: str = "new", packed: bool = True,
                     double: frozenset[str] = frozenset()) -> Path:
    """Serialise ``layers`` as a caffemodel: ``fmt`` "new" (layer=100, shape.dim), "v1" (layers=2, enum
    types, 4-D num/channels/height/width) or "v0" (a V1 layer wrapping a V0 one). Layers named in ``double``
    store double_data."""
    net = _caffe_net_class(packed)(name="tiny")
    net.input.append("data")
    for name, kind, blobs in layers:
        if fmt == "new":
            layer = net.layer.add(name=name, type=kind, bottom=["below"], top=[name])
            if kind == "Convolution":
                layer.param.add(lr_mult=1)
                layer.convolution_param.num_output = blobs[0].shape[0]
                layer.convolution_param.kernel_size.append(blobs[0].shape[-1])
            container = layer.blobs
        elif fmt == "v1":
            layer = net.layers.add(name=name, type=_V1_ENUM[kind], bottom=["below"], top=[name])
            layer.blobs_lr.extend([1.0, 2.0])
            container = layer.blobs
        else:
            v0 = net.layers.add().layer
            v0.name, v0.type = name, kind.lower()
            container = v0.blobs
        for b in blobs:
            _fill(container.add(), b, legacy=fmt != "new", double=name in double)
    path.write_bytes(net.SerializeToString())
    return path


def _rand(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


def fcn_layers(net: FCN, seed: int = 0, fc_as_inner_product: bool = False
               ) -> tuple[list[Layer], dict[str, np.ndarray]]:
    """A reference-style layer list for ``net`` with random weights (bilinear kernels for frozen upsampling),
    and the state-dict tensors the conversion must produce."""
    rng = np.random.default_rng(seed)
    layers: list[Layer] = [("data", "Python", [])]
    want: dict[str, np.ndarray] = {}

    def conv(prefix: str, name: str, m: nn.Conv2d) -> None:
        w, b = _rand(tuple(m.weight.shape), rng), _rand(tuple(m.bias.shape), rng)
        want[f"{prefix}{name}.weight"], want[f"{prefix}{name}.bias"] = w, b
        if fc_as_inner_product and name in ("fc6", "fc7"):
            layers.append((name, "InnerProduct", [w.reshape(w.shape[0], -1), b]))
        else:
            layers.append((name, "Convolution", [w, b]))

    for name, m in net.encoder.named_children():
        if isinstance(m, nn.Conv2d):
            conv("encoder.", name, m)
            layers.append((f"relu{name.removeprefix('conv').removeprefix('fc')}", "ReLU", []))
        else:
            layers.append((name, "Pooling" if isinstance(m, nn.MaxPool2d) else "Dropout", []))
    for name, m in net.named_children():
        if isinstance(m, nn.Conv2d):
            conv("", name, m)
        elif isinstance(m, BilinearUpsample):
            c, k = m.channels, m.kernel_size
            if m.learnable:
                w = _rand((c, c, k, k), rng)
                want[f"{name}.weight"] = w
            else:
                w = np.zeros((c, c, k, k), np.float32)
                w[range(c), range(c)] = m.weight[0, 0].numpy()
            layers.append((name, "Deconvolution", [w]))
    layers += [("score", "Crop", []), ("loss", "SoftmaxWithLoss", [])]
    return layers, want


def _assert_weights(ckpt_path: Path, want: dict[str, np.ndarray]) -> None:
    state = load_checkpoint(ckpt_path).state_dict
    assert want.keys() <= state.keys()
    for key, w in want.items():
        assert tuple(state[key].shape) == w.shape, key
        assert torch.equal(state[key], torch.from_numpy(w)), key


# ---------------------------------------------------------------------------------------------------------
# The decoder


@pytest.mark.parametrize("fmt", ["new", "v1", "v0"])
@pytest.mark.parametrize("packed", [True, False])
def test_decoder_reads_what_protobuf_writes(tmp_path, fmt, packed):
    layers, _ = fcn_layers(build("fcn8s", width=TINY, num_classes=3))
    path = write_caffemodel(tmp_path / "m.caffemodel", layers, fmt, packed, double=frozenset({"conv2_1"}))
    got = read_caffemodel(path)
    assert list(got) == [name for name, _, _ in layers]
    for name, _, blobs in layers:
        assert len(got[name]) == len(blobs), name
        for g, b in zip(got[name], blobs, strict=True):
            assert g.dtype == np.float32
            assert g.shape == (b.shape if fmt == "new" else _legacy(b.shape)), name
            assert np.array_equal(g.reshape(b.shape), b), name
    types = {layer.name: layer.type for layer in read_caffe_layers(path)}
    assert types["conv1_1"] == ("convolution" if fmt == "v0" else "Convolution")
    assert types["upscore8"] == ("deconvolution" if fmt == "v0" else "Deconvolution")


def test_not_a_caffemodel_is_named(tmp_path):
    garbage = tmp_path / "weights.pth"
    garbage.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ConvertError, match="weights.pth"):
        read_caffemodel(garbage)
    layers, _ = fcn_layers(build("fcn32s", width=TINY, num_classes=3))
    full = write_caffemodel(tmp_path / "full.caffemodel", layers).read_bytes()
    cut = tmp_path / "cut.caffemodel"
    cut.write_bytes(full[: len(full) // 2])
    with pytest.raises(ConvertError, match="cut.caffemodel is not a readable Caffe model.*fix: give the binary"):
        read_caffemodel(cut)
    text = tmp_path / "deploy.prototxt"
    text.write_text('name: "x"\n')
    with pytest.raises(ConvertError, match="deploy.prototxt"):
        read_caffemodel(text)
    with pytest.raises(ConvertError, match="does not exist"):
        read_caffemodel(tmp_path / "nope.caffemodel")


# ---------------------------------------------------------------------------------------------------------
# Caffe conversion


@pytest.mark.parametrize("fmt", ["new", "v1"])
def test_convert_fcn8s(tmp_path, fmt):
    net = build("fcn8s", width=TINY, num_classes=21)
    layers, want = fcn_layers(net)
    src = write_caffemodel(tmp_path / "fcn8s-heavy-pascal.caffemodel", layers, fmt)
    dst = convert_caffemodel(src, tmp_path / "out" / "fcn8s.ckpt", model="fcn8s", model_args={"width": TINY})
    assert dst == tmp_path / "out" / "fcn8s.ckpt"
    ck = load_checkpoint(dst)
    assert (ck.model_name, ck.model_args) == ("fcn8s", {"width": TINY, "num_classes": 21})  # 21 from score_fr
    assert ck.normalization == CAFFE_VGG
    assert ck.classes == VOC_CLASSES and ck.palette[:3] == [(0, 0, 0), (128, 0, 0), (0, 128, 0)]
    assert ck.extra["converted_from"] == src.name
    assert len(want) == len(ck.state_dict)  # every parameter comes from the file
    _assert_weights(dst, want)
    model = ck.build_model()
    assert model(torch.zeros(1, 3, 37, 45)).shape == (1, 21, 37, 45)


def test_convert_infers_other_class_counts(tmp_path):
    layers, want = fcn_layers(build("fcn32s", width=TINY, num_classes=5))
    src = write_caffemodel(tmp_path / "m.caffemodel", layers, "v1")
    args = {"width": TINY}
    ck = load_checkpoint(convert_caffemodel(src, tmp_path / "m.ckpt", model="fcn32s", model_args=args))
    assert ck.model_args["num_classes"] == 5 and ck.classes == [f"class_{i}" for i in range(5)]
    _assert_weights(tmp_path / "m.ckpt", want)
    names = ["a", "b", "c", "d", "e"]
    named = convert_caffemodel(src, tmp_path / "n.ckpt", model="fcn32s", model_args=args, classes=names)
    assert load_checkpoint(named).classes == names
    with pytest.raises(ConvertError, match="3 class names"):
        convert_caffemodel(src, tmp_path / "x.ckpt", model="fcn32s", model_args=args, classes=names[:3])
    with pytest.raises(ConvertError, match="list of names"):
        convert_caffemodel(src, tmp_path / "x.ckpt", model="fcn32s", model_args=args, classes="abcde")


@pytest.mark.parametrize("fmt", ["new", "v1", "v0"])
def test_convert_imagenet_vgg16(tmp_path, fmt):
    # VGG_ILSVRC_16_layers: fc6/fc7 InnerProduct, fc8 the 1000-way classifier, no head.
    net = build("fcn16s", width=TINY)
    layers, want = fcn_layers(net, fc_as_inner_product=True)
    trunk = [layer for layer in layers if not layer[0].startswith(("score", "upscore", "loss"))]
    fc8 = [_rand((1000, 128), np.random.default_rng(1)), np.zeros(1000, np.float32)]
    trunk += [("fc8", "InnerProduct", fc8), ("prob", "Softmax", [])]
    want = {k: v for k, v in want.items() if k.startswith("encoder.")}
    src = write_caffemodel(tmp_path / "VGG_ILSVRC_16_layers.caffemodel", trunk, fmt)
    dst = convert_caffemodel(src, tmp_path / "vgg.ckpt", model="fcn16s", model_args={"width": TINY})
    ck = load_checkpoint(dst)
    assert ck.model_args["num_classes"] == 21 and ck.normalization == CAFFE_VGG
    _assert_weights(dst, want)
    assert ck.state_dict["encoder.fc6.weight"].shape == (128, 16, 7, 7)
    for key in ("score_fr.weight", "score_fr.bias", "score_pool4.weight", "score_pool4.bias"):
        assert not ck.state_dict[key].any(), key  # the head starts at zero, as in the paper


def test_convert_fcn_alexnet(tmp_path):
    layers, want = fcn_layers(build("fcn_alexnet", width=TINY, num_classes=21))
    assert [n for n, t, _ in layers if t == "Deconvolution"] == ["upscore"]
    src = write_caffemodel(tmp_path / "fcn-alexnet-pascal.caffemodel", layers)
    dst = convert_caffemodel(src, tmp_path / "a.ckpt", model="fcn_alexnet", model_args={"width": TINY})
    assert load_checkpoint(dst).normalization == CAFFE_VGG
    _assert_weights(dst, want)


def _atonce_layers(c4: int, c3: int, s4: float = 0.01, s3: float = 1e-4) -> tuple[list[Layer], dict]:
    layers, want = fcn_layers(build("fcn8s_atonce", width=TINY, num_classes=21))
    i = [n for n, _, _ in layers].index("score_pool4")
    layers.insert(i, ("scale_pool4", "Scale", [np.full(c4, s4, np.float32)]))
    i = [n for n, _, _ in layers].index("score_pool3")
    layers.insert(i, ("scale_pool3", "Scale", [np.full(c3, s3, np.float32)]))
    return layers, want


def test_convert_fcn8s_atonce_checks_its_skip_scales(tmp_path):
    layers, want = _atonce_layers(16, 8)
    src = write_caffemodel(tmp_path / "fcn8s-atonce-pascal.caffemodel", layers)
    dst = convert_caffemodel(src, tmp_path / "a.ckpt", model="fcn8s_atonce", model_args={"width": TINY})
    _assert_weights(dst, want)
    with pytest.raises(ConvertError, match="scale_pool4.*fcn8s_atonce"):
        convert_caffemodel(src, tmp_path / "b.ckpt", model="fcn8s", model_args={"width": TINY})
    bad = write_caffemodel(tmp_path / "bad.caffemodel", _atonce_layers(16, 8, s3=1e-3)[0])
    with pytest.raises(ConvertError, match="bad.caffemodel: layer 'scale_pool3'"):
        convert_caffemodel(bad, tmp_path / "c.ckpt", model="fcn8s_atonce", model_args={"width": TINY})


def test_learnable_upsampling_loads_the_deconvolutions(tmp_path):
    args = {"width": TINY, "learnable_upsampling": True}
    layers, want = fcn_layers(build("fcn16s", num_classes=21, **args))
    assert {"upscore2.weight", "upscore16.weight"} <= want.keys()
    src = write_caffemodel(tmp_path / "learned.caffemodel", layers)
    _assert_weights(convert_caffemodel(src, tmp_path / "l.ckpt", model="fcn16s", model_args=args), want)
    # The same file into the reference's frozen upsampling: the learned kernels have nowhere to go.
    with pytest.raises(ConvertError, match="learned.caffemodel: layer 'upscore2' is not the bilinear kernel"):
        convert_caffemodel(src, tmp_path / "f.ckpt", model="fcn16s", model_args={"width": TINY})


def _replace(layers: list[Layer], name: str, blobs: list[np.ndarray]) -> list[Layer]:
    return [(n, t, blobs if n == name else b) for n, t, b in layers]


def test_caffe_errors_name_the_file_and_the_layer(tmp_path):
    args = {"width": TINY}
    layers, _ = fcn_layers(build("fcn16s", num_classes=21, **args))

    def convert(ls: list[Layer], model: str = "fcn16s", **kw):
        src = write_caffemodel(tmp_path / "case.caffemodel", ls)
        return convert_caffemodel(src, tmp_path / "case.ckpt", model=model, model_args=args, **kw)

    extra = ("conv_extra", "Convolution", [np.zeros((2, 2, 1, 1), np.float32), np.zeros(2, np.float32)])
    with pytest.raises(ConvertError, match=r"case.caffemodel has .*conv_extra \(Convolution, 2 blobs\)"):
        convert([*layers, extra])
    with pytest.raises(ConvertError, match=r"caffemodel: layer 'conv3_2' blob 0 has shape \(8, 8, 5, 5\);"):
        convert(_replace(layers, "conv3_2", [np.zeros((8, 8, 5, 5), np.float32), np.zeros(8, np.float32)]))
    with pytest.raises(ConvertError, match="layer 'conv3_2' has 1 blobs; fcn16s expects 2"):
        convert(_replace(layers, "conv3_2", [np.zeros((8, 8, 3, 3), np.float32)]))
    with pytest.raises(ConvertError, match="case.caffemodel lacks layers that fcn16s needs: conv4_1; fix: set `model`"):
        convert([layer for layer in layers if layer[0] != "conv4_1"])
    with pytest.raises(ConvertError, match="lacks layers that fcn8s needs: score_pool3; fix: .*`init_from`.*staged"):
        convert(layers, model="fcn8s")  # an FCN-16s file into FCN-8s
    with pytest.raises(ConvertError, match=r"'score_fr' blob 0 has shape \(21, 128, 1, 1\); fcn16s expects "
                                           r"\(5, 128, 1, 1\)") as e:
        convert(layers, num_classes=5)
    assert e.value.options == ("num_classes", "model") and e.value.path.endswith("case.caffemodel")
    with pytest.raises(ConvertError, match="lacks layers that fcn_alexnet needs: conv1, conv2, conv3, conv4, "
                                           "conv5; fix"):
        convert(layers, model="fcn_alexnet")  # a VGG file into FCN-AlexNet
    c = 21
    off_diagonal = np.zeros((c, c, 4, 4), np.float32)
    off_diagonal[0, 1] = 1.0
    with pytest.raises(ConvertError, match="'upscore2' is not the bilinear kernel .* learnable_upsampling"):
        convert(_replace(layers, "upscore2", [off_diagonal]))
    with pytest.raises(ConvertError, match=r"layer 'upscore2' has blobs \[\(21, 21, 3, 3\)\]"):
        convert(_replace(layers, "upscore2", [np.zeros((c, c, 3, 3), np.float32)]))


def test_voc_table_matches_the_data_package():
    data = pytest.importorskip("fcnseg.data")
    assert data.VOC_CLASSES == VOC_CLASSES
    assert data.voc_palette(21) == voc_palette(21)


# ---------------------------------------------------------------------------------------------------------
# torchvision VGG16


def _torchvision_layout(width: float, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict with vgg16-397923af.pth's keys at the trunk width ``width``."""
    g = torch.Generator().manual_seed(seed)
    trunk = build("fcn32s", width=width).encoder
    convs = [m for m in trunk.children() if isinstance(m, nn.Conv2d)][:13]
    sd = {}
    for idx, m in zip(TORCHVISION_VGG16_CONVS, convs, strict=True):
        sd[f"features.{idx}.weight"] = torch.randn(m.weight.shape, generator=g)
        sd[f"features.{idx}.bias"] = torch.randn(m.bias.shape, generator=g)
    c, fc = convs[-1].out_channels, trunk.fc7.out_channels
    fcs = {"classifier.0": (fc, c * 49), "classifier.3": (fc, fc), "classifier.6": (1000, fc)}
    for name, shape in fcs.items():
        sd[f"{name}.weight"] = torch.randn(shape, generator=g)
        sd[f"{name}.bias"] = torch.randn(shape[0], generator=g)
    return sd


def test_convert_torchvision_vgg16(tmp_path):
    sd = _torchvision_layout(TINY)
    src = tmp_path / "vgg16-397923af.pth"
    torch.save(sd, src)
    dst = convert_torchvision_vgg16(src, tmp_path / "v.ckpt", model="fcn8s", model_args={"width": TINY})
    ck = load_checkpoint(dst)
    assert (ck.model_name, ck.model_args) == ("fcn8s", {"width": TINY, "num_classes": 21})
    assert ck.normalization == IMAGENET and ck.classes == VOC_CLASSES
    assert ck.extra == {"converted_from": src.name, "source_format": "torchvision-vgg16"}
    names = [f"conv{s}_{i}" for s, n in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3)) for i in range(1, n + 1)]
    for name, idx in zip(names, TORCHVISION_VGG16_CONVS, strict=True):
        for p in ("weight", "bias"):
            assert torch.equal(ck.state_dict[f"encoder.{name}.{p}"], sd[f"features.{idx}.{p}"])
    fc6 = ck.state_dict["encoder.fc6.weight"]
    assert torch.equal(fc6, sd["classifier.0.weight"].reshape(fc6.shape))
    assert torch.equal(ck.state_dict["encoder.fc7.weight"][:, :, 0, 0], sd["classifier.3.weight"])
    assert torch.equal(ck.state_dict["encoder.fc7.bias"], sd["classifier.3.bias"])
    heads = [k for k in ck.state_dict if k.startswith("score")]
    assert len(heads) == 6 and not any(ck.state_dict[k].any() for k in heads)
    assert ck.build_model()(torch.zeros(1, 3, 20, 30)).shape == (1, 21, 20, 30)


def test_full_size_torchvision_vgg16_fits_every_vgg_fcn():
    with torch.device("meta"):  # shapes only: no 528 MB of weights
        sd = torchvision.models.vgg16().state_dict()
        trunk = vgg16_trunk_state(sd, "vgg16")
        assert set(sd) == TORCHVISION_VGG16_KEYS
        for name in ("fcn32s", "fcn16s", "fcn8s", "fcn8s_atonce"):
            build(name).encoder.load_state_dict(trunk)  # strict: every key, every shape


def test_torchvision_errors_name_the_file(tmp_path):
    with torch.device("meta"):
        bn, vgg19 = torchvision.models.vgg16_bn().state_dict(), torchvision.models.vgg19().state_dict()
    with pytest.raises(ConvertError, match="bn.pth has batch-norm"):
        vgg16_trunk_state(bn, "bn.pth")
    with pytest.raises(ConvertError, match="vgg19.pth is not a torchvision VGG16 .*missing features.17"):
        vgg16_trunk_state(vgg19, "vgg19.pth")
    ok = tmp_path / "tiny.pth"
    torch.save(_torchvision_layout(TINY), ok)
    with pytest.raises(ConvertError, match="tiny.pth does not fit fcn32s's trunk"):
        convert_torchvision_vgg16(ok, tmp_path / "x.ckpt", model_args={"width": 1 / 16})
    with pytest.raises(ConvertError, match="no VGG16 trunk"):
        convert_torchvision_vgg16(ok, tmp_path / "x.ckpt", model="fcn_alexnet", model_args={"width": TINY})
    wrapped = tmp_path / "train.pth"
    torch.save({"state_dict": _torchvision_layout(TINY), "epoch": 3}, wrapped)
    with pytest.raises(ConvertError, match="train.pth does not hold a state dict"):
        convert_torchvision_vgg16(wrapped, tmp_path / "x.ckpt")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a pickle")
    with pytest.raises(ConvertError, match="garbage.pth could not be read"):
        convert_torchvision_vgg16(garbage, tmp_path / "x.ckpt")


def test_convert_cli(tmp_path, capsys):
    from fcnseg.cli import main

    net = build("fcn8s", width=TINY, num_classes=21)
    layers, want = fcn_layers(net)
    src = write_caffemodel(tmp_path / "fcn8s-heavy-pascal.caffemodel", layers, "new")
    dst = tmp_path / "fcn8s.pt"
    argv = ["convert", "caffe", str(src), "-o", str(dst), "--model", "fcn8s", "--model-arg", f"width={TINY}"]
    assert main(argv) == 0
    _assert_weights(dst, want)
    assert load_checkpoint(dst).normalization == CAFFE_VGG
    # An existing output is kept unless --overwrite; a wrong layer is named.
    before = dst.read_bytes()
    assert main(argv) == 2
    assert "exists" in capsys.readouterr().err and dst.read_bytes() == before
    assert main([*argv[:6], "fcn32s", *argv[7:], "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "fcn8s-heavy-pascal.caffemodel" in err and dst.read_bytes() == before
    assert "fix: set --model (and --model-arg such as width)" in err  # the fix's options as the CLI's flags

    sd = _torchvision_layout(TINY)
    torch.save(sd, tmp_path / "vgg16.pth")
    names = tmp_path / "classes.txt"
    names.write_text("road\ncar\nsky\n")
    assert main(["convert", "torchvision", str(tmp_path / "vgg16.pth"), "-o", str(tmp_path / "v.pt"),
                 "--model", "fcn32s", "--classes", str(names), "--model-arg", f"width={TINY}"]) == 0
    ck = load_checkpoint(tmp_path / "v.pt")
    assert ck.classes == ["road", "car", "sky"] and ck.model_args["num_classes"] == 3
    assert torch.equal(ck.state_dict["encoder.conv1_1.weight"], sd["features.0.weight"])
