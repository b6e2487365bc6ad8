"""Speed, side by side in one run: the machine's ceilings, each model's FLOPs, latency and training throughput.

Usage:
    python benchmarks/speed.py                    # CPU, whole table within --budget seconds
    python benchmarks/speed.py --device cuda      # on a GPU (CUDA events)
    python benchmarks/speed.py --json out.json

Columns: ms (median of --reps timed runs after warm-up, with min and max), GFLOP/s achieved, % of the
measured conv ceiling of the same precision, and the ratio of our latency to the peer's (torchvision's
fcn_resnet50, random weights, 21 classes) at the same batch and mode. Cells that would not fit in the
remaining budget are listed as skipped with their estimated cost, never silently dropped.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from fcnseg.models import build
from fcnseg.precision import machine_summary

H, W = 375, 500  # a typical VOC image


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_fn(fn: Callable[[], object], device: torch.device, reps: int, warmup: int = 2) -> list[float]:
    """Seconds per call for ``reps`` calls after ``warmup`` (CUDA events on GPU)."""
    for _ in range(warmup):
        fn()
    sync(device)
    out = []
    for _ in range(reps):
        if device.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            torch.cuda.synchronize()
            out.append(a.elapsed_time(b) / 1e3)
        else:
            t = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t)
    return out


def conv_ceiling(device: torch.device, dtype: torch.dtype, reps: int) -> float:
    """GFLOP/s of a large 3x3 convolution (256 -> 256 channels, 128x128, batch 1 CPU / 16 GPU), channels-last."""
    n = 16 if device.type == "cuda" else 1
    conv = torch.nn.Conv2d(256, 256, 3, padding=1).to(device, dtype).to(memory_format=torch.channels_last)
    x = torch.randn(n, 256, 128, 128, device=device, dtype=dtype).to(memory_format=torch.channels_last)
    flops = 2 * 256 * 256 * 9 * 128 * 128 * n
    with torch.no_grad():
        best_cl = flops / statistics.median(time_fn(lambda: conv(x), device, reps)) / 1e9
        conv2 = conv.to(memory_format=torch.contiguous_format)
        x2 = x.contiguous()
        best_nchw = flops / statistics.median(time_fn(lambda: conv2(x2), device, reps)) / 1e9
    return max(best_cl, best_nchw)


def memory_bandwidth(device: torch.device, reps: int) -> float:
    """GB/s of a 1 GiB device-to-device copy (read + write)."""
    a = torch.empty(2**28, device=device)
    b = torch.empty_like(a)
    t = statistics.median(time_fn(lambda: b.copy_(a), device, reps))
    return 2 * a.numel() * 4 / t / 1e9


def peer_fcn_resnet50() -> torch.nn.Module:
    from torchvision.models.segmentation import fcn_resnet50

    return fcn_resnet50(weights=None, weights_backbone=None, num_classes=21, aux_loss=False)


class Out(torch.nn.Module):  # torchvision's segmentation models return {"out": logits}
    def __init__(self, m: torch.nn.Module):
        super().__init__()
        self.m = m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.m(x)
        return y["out"] if isinstance(y, dict) else y


def make_model(name: str) -> torch.nn.Module:
    return Out(peer_fcn_resnet50() if name == "peer:fcn_resnet50" else build(name, num_classes=21)).eval()


def count_flops(name: str, h: int, w: int) -> float:
    with torch.device("meta"):
        m = make_model(name)
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            m(torch.empty(1, 3, h, w))
    return counter.get_total_flops()


def runner(model: torch.nn.Module, mode: str, x: torch.Tensor, tmp: Path) -> Callable[[], object]:
    """A no-argument callable running ``model`` on ``x`` in ``mode``."""
    if mode == "onnxruntime":
        import onnxruntime as ort

        f = tmp / "m.onnx"
        torch.onnx.export(model, (x[:1],), str(f), input_names=["x"], output_names=["y"], opset_version=18,
                          dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, dynamo=False)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(str(f), so, providers=["CPUExecutionProvider"])
        xn = x.cpu().numpy()
        return lambda: sess.run(None, {"x": xn})
    cl = mode in ("channels_last", "bf16", "compile")
    m = model.to(memory_format=torch.channels_last) if cl else model
    xi = x.to(memory_format=torch.channels_last) if cl else x
    if mode == "bf16":
        m, xi = m.to(torch.bfloat16), xi.to(torch.bfloat16)
    if mode == "compile":
        m = torch.compile(m)

    def run() -> object:
        with torch.no_grad():
            return m(xi)

    return run


def train_throughput(name: str, batch: int, device: torch.device, steps: int, amp: bool) -> dict[str, float]:
    """Images/s and peak memory of SGD steps at 480x360 (run in a subprocess on CPU for a clean peak RSS)."""
    from fcnseg.losses import segmentation_loss

    model = build(name, num_classes=11).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x = torch.randn(batch, 3, 360, 480, device=device)
    y = torch.randint(0, 11, (batch, 360, 480), device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def step() -> None:
        with torch.autocast(device.type, torch.bfloat16, enabled=amp):
            out = model(x)
        loss = segmentation_loss(out, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    ts = time_fn(step, device, steps, warmup=1)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**30
    else:
        # VmHWM: this process's own peak RSS (ru_maxrss would carry over the parent's peak across fork/exec).
        status = Path("/proc/self/status").read_text()
        peak = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM"))) / 2**20
    return {"images_per_s": batch / statistics.median(ts), "peak_gib": peak, "steps": steps}


def upsampling_times(device: torch.device, reps: int) -> list[dict[str, float]]:
    """Frozen bilinear upsampling: the dense (K, K, 16, 16) transposed convolution vs our depthwise one (NCHW, NHWC).

    FCN-8s's ``upscore8`` (factor 8, kernel 16) on the fused stride-8 scores of a 500x375 image
    (padded by 100 as in the reference: 88x72 positions), batch 1, for K = 21 (VOC) and 150 (ADE20K) classes.
    """
    from fcnseg.models import BilinearUpsample

    rows = []
    for k in (21, 150):
        frozen = BilinearUpsample(k, 8, 16).to(device)
        dense = BilinearUpsample(k, 8, 16, learnable=True).to(device).requires_grad_(False)
        x = torch.randn(1, k, 88, 72, device=device)
        with torch.no_grad():
            t_dense = statistics.median(time_fn(lambda m=dense, x=x: m(x), device, reps))
            want = dense(x)
            row = {"classes": k, "dense_ms": t_dense * 1e3,
                   "depthwise_ms": statistics.median(time_fn(lambda m=frozen, x=x: m(x), device, reps)) * 1e3,
                   "max_abs_diff": (frozen(x) - want).abs().max().item()}
            xc = x.contiguous(memory_format=torch.channels_last)
            row["depthwise_cl_ms"] = statistics.median(time_fn(lambda m=frozen, x=xc: m(x), device, reps)) * 1e3
        rows.append(row)
    return rows


def predict_folder(checkpoint: str, images: list[Path], device: str) -> dict[str, float]:
    """``run_predict`` over a folder (decode, infer, write PNGs + overlays) vs the bare forward passes."""
    from fcnseg.checkpoint import load_checkpoint
    from fcnseg.config import PredictConfig
    from fcnseg.data.base import read_image
    from fcnseg.engine import predict_logits, prepare_inference
    from fcnseg.predict import predict_files

    ck = load_checkpoint(checkpoint)
    model = prepare_inference(ck.build_model().to(device), precision="fp32", channels_last=True)
    xs = [ck.normalization(read_image(p).unsqueeze(0)) for p in images]
    predict_logits(model, xs[0].to(device))
    t = time.perf_counter()
    for x in xs:
        predict_logits(model, x.to(device)).argmax(1).cpu()
    bare = len(xs) / (time.perf_counter() - t)
    with tempfile.TemporaryDirectory() as out:
        r = predict_files(ck, PredictConfig(inputs=[str(p) for p in images], out_dir=str(Path(out) / "pred"),
                                             device=str(device)), progress=False)
    return {"images": len(images), "predict_images_per_s": r["images_per_s"], "forward_only_images_per_s": bare}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--budget", type=float, default=300, help="seconds for the latency cells in all")
    ap.add_argument("--json", help="write all measurements here")
    ap.add_argument("--train-child", nargs=4, help=argparse.SUPPRESS)
    ap.add_argument("--checkpoint", default="benchmarks/camvid/fcn8s_efficientnet_lite0_camvid.pt",
                    help="trained checkpoint for the predict-over-a-folder cell")
    ap.add_argument("--images", default=str(Path(os.environ.get("FCNSEG_DATA", "../shared/data")) / "camvid" / "val"),
                    help="folder of images for the predict cell")
    a = ap.parse_args()
    device = torch.device(a.device)
    if a.train_child:  # subprocess for one training-throughput cell
        name, batch, steps, amp = a.train_child
        print(json.dumps(train_throughput(name, int(batch), device, int(steps), amp == "1")))
        return
    t_start = time.perf_counter()
    gpu = device.type == "cuda"
    machine = torch.cuda.get_device_name() if gpu else f"{machine_summary()}, " \
        f"{os.cpu_count()} cores, {torch.get_num_threads()} threads"
    print(f"# speed.py on {machine}; torch {torch.__version__}; {time.strftime('%Y-%m-%d')}")

    ceil32 = conv_ceiling(device, torch.float32, a.reps)
    ceil16 = conv_ceiling(device, torch.bfloat16, a.reps)
    print(f"ceiling: 3x3 conv fp32 {ceil32:.0f} GFLOP/s, bf16 {ceil16:.0f} GFLOP/s", end="")
    bw = memory_bandwidth(device, a.reps) if gpu else None
    print(f", copy bandwidth {bw:.0f} GB/s" if bw else "")

    vgg = ["fcn8s", "fcn16s", "fcn32s"]
    lite = ["fcn8s_efficientnet_lite0", "fcn16s_efficientnet_lite0", "fcn32s_efficientnet_lite0"]
    peer = "peer:fcn_resnet50"
    modes = ["fp32", "channels_last", "bf16", "compile"] + ([] if gpu else ["onnxruntime"])
    # Priority order: what the targets need first; the rest as the budget allows.
    plan: list[tuple[str, int, str]] = []
    for b in (1, 8):
        for name in ["fcn8s", peer, "fcn8s_efficientnet_lite0"]:
            plan += [(name, b, m) for m in modes]
    for b in (1, 8):
        for name in vgg[1:] + lite[1:]:
            plan += [(name, b, m) for m in ("fp32", "bf16")]
    flops = {n: count_flops(n, H, W) for n in vgg + lite + [peer]}
    params = {n: sum(p.numel() for p in make_model(n).parameters()) / 1e6 for n in vgg + lite + [peer]}
    print("\n| model | params (M) | GFLOPs/img at 500x375 |\n|---|---:|---:|")
    for n in flops:
        print(f"| {n} | {params[n]:.1f} | {flops[n] / 1e9:.1f} |")

    results: list[dict[str, object]] = []
    skipped: list[str] = []
    models: dict[str, torch.nn.Module] = {}
    with tempfile.TemporaryDirectory() as tmpd:
        for name, b, mode in plan:
            left = a.budget - (time.perf_counter() - t_start)
            if mode == "compile" and not hasattr(torch, "compile"):
                continue
            # Skip before building anything when even an optimistic estimate (50% of the ceiling, plus a
            # minute to compile) does not fit: a first call alone costs 14 s for VGG16 at batch 8.
            guess = flops[name] * b / (0.5 * (ceil16 if mode == "bf16" else ceil32) * 1e9) * (a.reps + 3)
            guess += 60 if mode == "compile" else 0
            if guess > left:
                skipped.append(f"{name} b{b} {mode} (est. >= {guess:.0f} s, {left:.0f} s left)")
                continue
            if name not in models:
                models = {name: make_model(name).to(device)}  # one model in memory at a time
            model = models[name]
            x = torch.randn(b, 3, H, W, device=device)
            try:
                t0 = time.perf_counter()
                fn = runner(make_model(name).to(device) if mode != "fp32" else model, mode, x, Path(tmpd))
                fn()  # first call: compile / allocate
                first = time.perf_counter() - t0
                est = first + (a.reps + 1) * first
                if est > left:
                    skipped.append(f"{name} b{b} {mode} (est. {est:.0f} s, {left:.0f} s left)")
                    continue
                ts = time_fn(fn, device, a.reps, warmup=1)
            except Exception as e:  # noqa: BLE001 - a mode a platform lacks is reported, not fatal
                skipped.append(f"{name} b{b} {mode} ({type(e).__name__}: {str(e).splitlines()[0][:80]})")
                continue
            med = statistics.median(ts)
            gfs = flops[name] * b / med / 1e9
            ceil = ceil16 if mode == "bf16" else ceil32
            results.append({"model": name, "batch": b, "mode": mode, "ms": med * 1e3, "min_ms": min(ts) * 1e3,
                            "max_ms": max(ts) * 1e3, "gflops_s": gfs, "pct_ceiling": 100 * gfs / ceil,
                            "ideal_ratio": med / (flops[name] * b / (ceil * 1e9))})
    peer_ms = {(r["batch"], r["mode"]): r["ms"] for r in results if r["model"] == peer}

    train: list[dict[str, object]] = []
    for name in ("fcn8s", "fcn8s_efficientnet_lite0"):
        for b in (1, 8):
            steps = 10 if gpu else (2 if name == "fcn8s" and b == 8 else 4)  # VGG b8: ~40 s a step on 2 cores
            cmd = [sys.executable, __file__, "--device", a.device, "--train-child", name, str(b), str(steps),
                   "1" if gpu else "0"]
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode:
                train.append({"model": name, "batch": b, "error": r.stderr.strip().splitlines()[-1][:100]})
            else:
                train.append({"model": name, "batch": b, **json.loads(r.stdout.strip().splitlines()[-1])})

    ups = upsampling_times(device, a.reps)
    pred = None
    if Path(a.checkpoint).is_file() and Path(a.images).is_dir():
        pred = predict_folder(a.checkpoint, sorted(Path(a.images).glob("*.png")), a.device)

    print("\n| model | batch | mode | ms (median) | min-max | GFLOP/s | % ceiling | x ideal | x peer |")
    print("|---|---:|---|---:|---|---:|---:|---:|---:|")
    for r in results:
        p = peer_ms.get((r["batch"], r["mode"]))
        ratio = f"{r['ms'] / p:.2f}" if p and r["model"] != peer else "-"
        print(f"| {r['model']} | {r['batch']} | {r['mode']} | {r['ms']:.1f} | {r['min_ms']:.1f}-{r['max_ms']:.1f} "
              f"| {r['gflops_s']:.0f} | {r['pct_ceiling']:.0f} | {r['ideal_ratio']:.2f} | {ratio} |")
    print("\n| training 480x360 | batch | images/s | peak memory (GiB) | steps |\n|---|---:|---:|---:|---:|")
    for t in train:
        if "error" in t:
            print(f"| {t['model']} | {t['batch']} | error: {t['error']} | | |")
        else:
            print(f"| {t['model']} | {t['batch']} | {t['images_per_s']:.2f} | {t['peak_gib']:.2f} | {t['steps']} |")
    print("\n| upscore8 (frozen bilinear, 88x72, x8) | dense ms | depthwise ms (saving) "
          "| depthwise channels-last ms (saving) | max abs diff to dense |")
    print("|---|---:|---:|---:|---:|")
    for u in ups:
        d = u["dense_ms"]
        print(f"| {u['classes']} classes | {d:.1f} | {u['depthwise_ms']:.1f} ({d / u['depthwise_ms']:.1f}x) | "
              f"{u['depthwise_cl_ms']:.1f} ({d / u['depthwise_cl_ms']:.1f}x) | {u['max_abs_diff']:.1e} |")
    if pred:
        print(f"\npredict over a folder ({pred['images']} images, {a.checkpoint}): "
              f"{pred['predict_images_per_s']:.2f} images/s with decoding and PNG writing; forward passes alone "
              f"{pred['forward_only_images_per_s']:.2f} images/s")
    if skipped:
        print("\nskipped: " + "; ".join(skipped))
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s")
    if a.json:
        Path(a.json).write_text(json.dumps({"machine": machine, "torch": torch.__version__,
                                            "ceiling_fp32": ceil32, "ceiling_bf16": ceil16, "bandwidth": bw,
                                            "flops": flops, "latency": results, "train": train,
                                            "upsampling": ups, "predict": pred,
                                            "skipped": skipped}, indent=2))


if __name__ == "__main__":
    main()
