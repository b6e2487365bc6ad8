"""The paper's core idea (section 3.1): a classifier's fully connected layers are convolutions."""

from __future__ import annotations

import pytest
import torch
import torchvision

from fcnseg.errors import ConvertError
from fcnseg.models import VGG16Trunk, convolutionalize_vgg16


@pytest.fixture(scope="module")
def vgg_pair():
    torch.manual_seed(0)
    vgg = torchvision.models.vgg16(weights=None).eval()
    # torchvision's default init gives activations that vanish with depth; rescale so each layer keeps
    # unit-ish activations and the comparison below is meaningful (non-zero fc7, many active units).
    with torch.no_grad():
        for m in vgg.modules():
            if isinstance(m, torch.nn.Conv2d | torch.nn.Linear):
                fan_in = m.weight[0].numel()
                m.weight.normal_(0, (2.0 / fan_in) ** 0.5)
                m.bias.normal_(0, 0.01)
    trunk = VGG16Trunk(pad=1).eval()  # the classifier's own padding instead of the paper's 100
    state = convolutionalize_vgg16(vgg.state_dict(), keep_fc8=True)
    fc8 = torch.nn.Conv2d(4096, 1000, 1)
    fc8.load_state_dict({"weight": state.pop("fc8.weight"), "bias": state.pop("fc8.bias")})
    trunk.load_state_dict(state)
    return vgg, trunk, fc8


def _classifier_fc7(vgg: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    # torchvision's classifier up to fc7's ReLU (classifier.0..4; dropout is the identity in eval mode).
    f = torch.flatten(vgg.avgpool(vgg.features(x)), 1)
    return vgg.classifier[:5](f)


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_fc7_at_224_equals_the_classifier(vgg_pair):
    vgg, trunk, _ = vgg_pair
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        want = _classifier_fc7(vgg, x)  # (1, 4096)
        got = trunk(x)["fc7"]  # (1, 4096, 1, 1): one location
    assert got.shape == (1, 4096, 1, 1)
    assert want.abs().sum() > 0
    assert _rel_err(got[:, :, 0, 0], want) < 1e-4


def _unpad(model: torch.nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.padding = (0, 0)


def test_sliding_window_for_free(vgg_pair):
    # The convolutional classifier's output at location (i, j) equals the classifier applied to the window
    # at (32 i, 32 j). Exactly so for valid (unpadded) convolutions, which we use here in both networks:
    # with VGG's "same" padding the two differ near window borders, where a window sees zeros that the dense
    # map sees as image. Without padding the classifier's window is 404 pixels (pool5 = 7x7).
    vgg, trunk, fc8 = vgg_pair
    _unpad(vgg)
    _unpad(trunk)
    x = torch.randn(1, 3, 404 + 32, 404 + 32)
    try:
        with torch.no_grad():
            dense = fc8(trunk(x)["fc7"])  # (1, 1000, 2, 2)
            assert dense.shape == (1, 1000, 2, 2)
            for i in range(2):
                for j in range(2):
                    window = x[:, :, 32 * i : 32 * i + 404, 32 * j : 32 * j + 404]
                    want = vgg(window)  # (1, 1000) class scores
                    assert want.abs().sum() > 0
                    assert _rel_err(dense[:, :, i, j], want) < 1e-4, (i, j)
    finally:
        for m in (*vgg.modules(), *trunk.modules()):
            if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3):
                m.padding = (1, 1)


def test_bad_state_dict_is_named():
    with pytest.raises(ConvertError, match="features.0.weight"):
        convolutionalize_vgg16({"conv1.weight": torch.zeros(1)})
