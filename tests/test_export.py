"""Export keeps the crop geometry: ONNX Runtime and TorchScript match PyTorch at three sizes."""

from __future__ import annotations

import logging

import pytest
import torch

from fcnseg.checkpoint import Checkpoint, save_checkpoint
from fcnseg.cli import main
from fcnseg.models import build
from fcnseg.normalization import IMAGENET

from conftest import TINY

SIZES = [(1, 1), (45, 77), (224, 301)]  # tiny, odd, larger than the traced sample


def _checkpoint(name: str) -> Checkpoint:
    model = build(name, width=TINY, num_classes=3).eval()
    with torch.no_grad():
        for p in model.parameters():  # non-zero score layers so the outputs carry the geometry
            p.normal_(0, 0.1)
    return Checkpoint(name, {"width": TINY, "num_classes": 3}, model.state_dict(), ["a", "b", "c"],
                      [(0, 0, 0), (255, 0, 0), (0, 255, 0)], IMAGENET)


def _close(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.shape == want.shape
    assert (got - want).abs().max() <= 1e-4 * max(1.0, want.abs().max().item())


@pytest.mark.parametrize("name", ["fcn8s", "fcn16s", "fcn_alexnet"])
def test_onnx_dynamic_sizes(tmp_path, name):
    ort = pytest.importorskip("onnxruntime")
    ck = _checkpoint(name)
    path = tmp_path / "m.ckpt"
    save_checkpoint(ck, path)
    onnx_file = tmp_path / "m.onnx"
    assert main(["export", str(path), "-o", str(onnx_file)]) == 0
    sess = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    model = ck.build_model()
    for h, w in SIZES:
        x = torch.randn(2, 3, h, w)
        with torch.no_grad():
            want = model(x)
        got = torch.from_numpy(sess.run(None, {"image": x.numpy()})[0])
        _close(got, want)
    # An existing file is not overwritten without --overwrite.
    assert main(["export", str(path), "-o", str(onnx_file)]) == 2


def test_torchscript_dynamic_sizes(tmp_path):
    ck = _checkpoint("fcn8s")
    path = tmp_path / "m.ckpt"
    save_checkpoint(ck, path)
    out = tmp_path / "m.ts"
    assert main(["export", str(path), "-o", str(out), "--format", "torchscript"]) == 0
    ts = torch.jit.load(str(out))
    model = ck.build_model()
    for h, w in SIZES:
        x = torch.randn(1, 3, h, w)
        with torch.no_grad():
            _close(ts(x), model(x))


def test_int8_onnx_export_is_quantised_and_close(tmp_path, data_root):
    ort = pytest.importorskip("onnxruntime")
    import onnx

    ck = _checkpoint("fcn8s")
    path = tmp_path / "m.ckpt"
    save_checkpoint(ck, path)
    train = sorted((data_root / "camvid" / "train").glob("*.png"))[:4]
    out = tmp_path / "m_int8.onnx"
    assert main(["export", str(path), "-o", str(out), "--int8", *map(str, train[:3])]) == 0
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    from fcnseg.data.base import read_image

    x = IMAGENET(read_image(train[3]).unsqueeze(0))[:, :, :121, :163]  # an image not calibrated on, odd size
    with torch.no_grad():
        want = ck.build_model().eval()(x)
    got = torch.from_numpy(sess.run(None, {"image": x.numpy()})[0])
    assert got.shape == want.shape
    # 8-bit activations: a few percent of the logits' range, far from the float result's exactness.
    err = (got - want).abs().max() / want.abs().max()
    assert 0 < err < 0.1, err
    # Calibration images are required; int8 is for ONNX only.
    assert main(["export", str(path), "-o", str(tmp_path / "t.pt"), "--format", "torchscript", "--int8",
                 str(train[0])]) == 2


def test_export_format_follows_the_suffix(tmp_path):
    ck = _checkpoint("fcn32s")
    path = tmp_path / "m.ckpt"
    save_checkpoint(ck, path)
    assert main(["export", str(path), "-o", str(tmp_path / "m.pt")]) == 0
    assert torch.jit.load(str(tmp_path / "m.pt"))(torch.zeros(1, 3, 20, 30)).shape == (1, 3, 20, 30)
    assert main(["export", str(path), "-o", str(tmp_path / "x.onnx"), "--format", "torchscript"]) == 2
    assert not (tmp_path / "x.onnx").exists()


def test_int8_export_of_a_trained_model_does_not_flood_the_log(tmp_path, data_root, caplog):
    # On a trained model ONNX Runtime's quantiser logs ~80 INFO lines ("Increased scale ... for weight") on the
    # root logger; the user sees the one line that names the file written.
    pytest.importorskip("onnxruntime")
    from conftest import REPO

    ck = REPO / "benchmarks" / "camvid" / "fcn8s_efficientnet_lite0_camvid.pt"
    image = sorted((data_root / "camvid" / "train").glob("*.png"))[0]
    with caplog.at_level(logging.INFO):
        assert main(["export", str(ck), "-o", str(tmp_path / "q.onnx"), "--int8", str(image)]) == 0
    flood = [r for r in caplog.records if r.levelno == logging.INFO and "scale" in r.getMessage()]
    assert not flood, caplog.text[-2000:]
