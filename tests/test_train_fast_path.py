"""The training fast path and recipe options: precision by hardware, the decoded-image cache, one persistent
loader across epochs, channels-last, median-frequency class weights and the weights' moving average."""

from __future__ import annotations

import logging
import shutil

import pytest
import torch

from fcnseg import data as fdata
from fcnseg.checkpoint import load_checkpoint
from fcnseg.data.cache import DecodedCache, cache_decision
from fcnseg.errors import ConfigError
from fcnseg.losses import class_frequencies, median_frequency_weights, segmentation_loss
from fcnseg.precision import bf16_native, machine_summary, resolve_precision
from fcnseg.train import _class_weights, run_train
from test_train import tiny_cfg


def test_auto_precision_follows_the_hardware(caplog):
    native = bf16_native("cpu")
    assert resolve_precision("auto", "cpu") == ("bf16" if native else "fp32")
    assert resolve_precision("fp32", "cpu") == "fp32"
    with caplog.at_level(logging.WARNING, logger="fcnseg.precision"):
        assert resolve_precision("bf16", "cpu") == "bf16"  # obeyed, with a warning where it is emulated
    warned = [r for r in caplog.records if "no native bf16" in r.getMessage()]
    assert bool(warned) is (not native)
    if warned:
        assert "--precision auto" in warned[0].getMessage()
    with pytest.raises(ConfigError, match="unknown precision 'fp16'; fix: set `precision` to auto, fp32 or bf16"):
        resolve_precision("fp16", "cpu")
    assert torch.backends.cpu.get_cpu_capability() in machine_summary()


def test_median_frequency_weights_by_hand():
    # Image A (4 px): class 0 x3, class 1 x1. Image B (4 px): class 0 x2, ignore x2. Class 2 absent.
    a = torch.tensor([[0, 0], [0, 1]])
    b = torch.tensor([[0, 255], [0, 255]])
    pixels, image_pixels = class_frequencies([a, b], 3)
    assert pixels.tolist() == [5, 1, 0] and image_pixels.tolist() == [6, 4, 0]  # valid pixels of A + B; of A
    w = median_frequency_weights(pixels, image_pixels)
    # f0 = 5/6, f1 = 1/4; median of the present classes' frequencies = (5/6 + 1/4) / 2 = 13/24
    torch.testing.assert_close(w, torch.tensor([13 / 24 / (5 / 6), 13 / 24 / (1 / 4), 1.0]))


def test_camvid_weights_rank_the_rare_classes_as_segnet_does(data_root):
    ds = fdata.build_dataset("camvid", data_root / "camvid", "train")
    masks = (torch.from_numpy(ds.load_mask(m)) for _, m in ds.samples[::4])
    w = dict(zip(ds.classes, median_frequency_weights(*class_frequencies(masks, 11)).tolist(), strict=True))
    # SegNet's published CamVid weights: road 0.14, sky 0.26, pole 4.6, pedestrian 6.2, bicyclist 7.4.
    assert w["Road"] < w["Sky"] < 0.5 < 3 < w["Pole"] < w["Bicyclist"]
    assert min(w, key=w.get) in ("Road", "Building") and w["Pedestrian"] > 3


def test_weighted_loss_by_hand():
    logits = torch.zeros(1, 2, 1, 2)  # uniform: each pixel's cross-entropy is log 2
    target = torch.tensor([[[0, 1]]])
    loss = segmentation_loss(logits, target, weight=torch.tensor([1.0, 3.0]))
    torch.testing.assert_close(loss, torch.tensor((1 + 3) * 0.6931472 / 2))


def test_decoded_cache_holds_the_samples(data_root, monkeypatch):
    ds = fdata.build_dataset("camvid", data_root / "camvid", "val")
    ds.samples = ds.samples[:3]
    cached = DecodedCache(ds, progress=False)
    for i in range(3):
        image, mask = ds[i]
        assert torch.equal(cached[i][0], image) and torch.equal(cached[i][1].long(), mask)
        assert cached[i][1].dtype == torch.uint8
    assert cached.nbytes == 3 * 480 * 360 * 4
    assert cache_decision(ds, "on")[0] and not cache_decision(ds, "off")[0]
    monkeypatch.setattr("fcnseg.data.cache.available_memory", lambda: 4 * 3 * 480 * 360 * 4)
    assert cache_decision(ds, "auto")[0]  # fits in a quarter of the memory
    monkeypatch.setattr("fcnseg.data.cache.available_memory", lambda: 3 * 3 * 480 * 360 * 4)
    use, why = cache_decision(ds, "auto")
    assert not use and "MiB" in why
    # class weights read the cached masks instead of decoding the files again, and agree with the files
    from_files = _class_weights(ds, "median_freq", False)
    monkeypatch.setattr(ds, "load_mask", lambda path: pytest.fail(f"decoded {path} again"))
    torch.testing.assert_close(_class_weights(ds, "median_freq", False, cached), from_files)


def _tiny_folder(data_root, root, n=3):
    """A folder dataset of ``n`` CamVid images: one epoch is two batches of 2."""
    src = fdata.build_dataset("camvid", data_root / "camvid", "train")
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for image, mask in src.samples[:n]:
        shutil.copy(image, root / "images" / image.name)
        shutil.copy(mask, root / "masks" / image.name)
    (root / "classes.txt").write_text("\n".join([*src.classes, "Void"]) + "\n")  # CamVid void is 11
    return root


@pytest.mark.parametrize("options", [
    dict(workers=2),  # persistent workers: each epoch's crops must still come from that epoch's seed
    dict(cache="on"),  # uint8 masks from memory, the same crops
])
def test_fast_path_trains_exactly_as_the_simple_path(data_root, tmp_path, options):
    _tiny_folder(data_root, tmp_path / "camvid")  # tiny_cfg reads <root>/camvid
    common = dict(dataset="folder", train_split="all", val_split="all", max_steps=5, val_every=5)
    simple = run_train(tiny_cfg(tmp_path, tmp_path / "simple", workers=0, cache="off", channels_last=True,
                                **common), progress=False)
    fast = run_train(tiny_cfg(tmp_path, tmp_path / "fast", **{**dict(workers=0, cache="off"), **options},
                              **common), progress=False)
    a, b = load_checkpoint(simple.parent / "last.pt"), load_checkpoint(fast.parent / "last.pt")
    assert a.train_state["epoch"] == b.train_state["epoch"] == 2  # 5 steps over epochs of 2 batches
    for k, v in a.state_dict.items():
        torch.testing.assert_close(b.state_dict[k], v, rtol=0, atol=0, msg=k)


def test_channels_last_gradients_are_accurate():
    # The layout changes only the kernels' summation order, so each layout is compared with the float64 answer.
    # On one thread oneDNN's NHWC weight gradients sum the N*H*W pixels less accurately than NCHW: measured on an
    # AMD EPYC (AVX512-BF16) over 4 seeds, norm-wise error 1e-3..9e-3 (1% at the stem) against 2e-5..8e-3 for
    # NCHW; on two threads the two match. SGD's own noise dwarfs either; a layout bug (wrong strides) gives ~1.
    # The test runs on one thread, so the figure does not depend on how many pytest-xdist workers share the cores.
    from fcnseg.models import build

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = build("fcn8s_efficientnet_lite0", num_classes=5)
        for p in model.parameters():  # the score layers start at zero: give every layer a gradient
            if p.ndim == 4 and not p.any():
                p.data.add_(0.01 * torch.randn_like(p))
        x, y = torch.randn(2, 3, 67, 93), torch.randint(0, 5, (2, 67, 93))
        grads, losses = {}, {}
        for name, layout, dtype in (("nchw", torch.contiguous_format, torch.float32),
                                    ("nhwc", torch.channels_last, torch.float32),
                                    ("f64", torch.contiguous_format, torch.float64)):
            m = model.to(dtype).to(memory_format=layout).train()
            m.zero_grad()
            torch.manual_seed(1)  # the same dropout draws
            loss = segmentation_loss(m(x.to(dtype).contiguous(memory_format=layout)), y)
            loss.backward()
            losses[name], grads[name] = loss.item(), [p.grad.double() for p in m.parameters()]
    finally:
        torch.set_num_threads(threads)
    assert abs(losses["nhwc"] - losses["f64"]) < 1e-5 * abs(losses["f64"])

    def error(name: str) -> float:  # norm-wise relative error of all gradients together
        g, r = torch.cat([t.flatten() for t in grads[name]]), torch.cat([t.flatten() for t in grads["f64"]])
        return ((g - r).norm() / r.norm()).item()

    assert error("nchw") < 2e-2 and error("nhwc") < 2e-2


def test_ema_and_class_weights_resume_exactly(data_root, tmp_path):
    opts = dict(ema_decay=0.9, class_weights="median_freq")
    straight = run_train(tiny_cfg(data_root, tmp_path / "a", **opts), progress=False)
    run_train(tiny_cfg(data_root, tmp_path / "b", stop_at=2, **opts), progress=False)
    run_train(tiny_cfg(data_root, tmp_path / "b", resume=str(tmp_path / "b" / "last.pt"), **opts), progress=False)
    a, b = load_checkpoint(straight.parent / "last.pt"), load_checkpoint(tmp_path / "b" / "last.pt")
    for k, v in a.state_dict.items():  # the averaged weights, saved as the model
        torch.testing.assert_close(b.state_dict[k], v, rtol=0, atol=0, msg=k)
    raw = a.train_state["raw_model"]
    # The average differs from the raw weights, and lies between the start and the end of training.
    moved = [k for k in raw if raw[k].is_floating_point() and not torch.equal(raw[k], a.state_dict[k])]
    assert moved
    with pytest.raises(ValueError, match="no moving average.*fix: resume without `ema_decay`"):
        run_train(tiny_cfg(data_root, tmp_path / "c", stop_at=2), progress=False)
        run_train(tiny_cfg(data_root, tmp_path / "c", resume=str(tmp_path / "c" / "last.pt"), **opts),
                  progress=False)


def test_multiscale_test_time_augmentation():
    from fcnseg.engine import predict_logits

    conv = torch.nn.Conv2d(3, 2, 1)
    ramp = torch.linspace(0, 1, 40).expand(1, 3, 30, 40).contiguous()  # linear along x: bilinear keeps it
    plain = predict_logits(conv, ramp)
    assert torch.equal(predict_logits(conv, ramp, scales=(1.0,)), plain)
    multi = predict_logits(conv, ramp, scales=(0.5, 1.0, 2.0))
    assert multi.shape == plain.shape
    torch.testing.assert_close(multi[..., 2:-2], plain[..., 2:-2], atol=1e-5, rtol=0)  # borders aside
    from fcnseg.cli import main

    with pytest.raises(SystemExit) as exit_:  # argparse: one usage line, exit 2, before any work
        main(["eval", "--checkpoint", "x.pt", "--scales", "0,1"])
    assert exit_.value.code == 2


@pytest.mark.slow
def test_compiled_training_step_matches_eager(data_root, tmp_path, monkeypatch):
    # --compile fuses kernels: the same training to float tolerance (compiling takes a minute or two). Inductor
    # draws fc6/fc7's dropout masks from its own generator, so the test asks it for eager's draws instead; without
    # that, the two runs drop different units and score_fr differs by half its size after two steps.
    import torch._inductor.config as inductor_config

    monkeypatch.setattr(inductor_config, "fallback_random", True)
    eager = run_train(tiny_cfg(data_root, tmp_path / "eager", max_steps=2, val_every=2), progress=False)
    comp = run_train(tiny_cfg(data_root, tmp_path / "compiled", max_steps=2, val_every=2, compile=True),
                     progress=False)
    a, b = load_checkpoint(eager.parent / "last.pt"), load_checkpoint(comp.parent / "last.pt")
    for k, v in a.state_dict.items():
        torch.testing.assert_close(b.state_dict[k], v, rtol=1e-3, atol=1e-4, msg=k)
