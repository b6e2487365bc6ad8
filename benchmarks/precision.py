"""bf16 and int8 inference against fp32 on a trained checkpoint: pixel agreement, mean IU and speed.

Usage:
    python benchmarks/precision.py --checkpoint benchmarks/camvid/fcn8s_efficientnet_lite0_camvid.pt \
        [--split val] [--max-images 0] [--calibration-images 32]

Paths compared, each on every image of the split at its own size (CamVid: 480x360), batch 1:
  fp32            PyTorch, float32, NCHW (the reference)
  fp32_cl         PyTorch, float32, channels-last
  bf16            PyTorch, bfloat16 weights and activations, channels-last (AVX512-BF16 / tensor cores)
  ort_fp32        ONNX Runtime, float32 (the `fcnseg export` file)
  ort_int8        ONNX Runtime, static int8 (QDQ, per-channel weights), calibrated on training images
Reported: % of pixels whose argmax equals fp32's, mean IU (and its change), median ms per image, speed-up.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from fcnseg import data as fdata
from fcnseg.checkpoint import load_checkpoint
from fcnseg.config import TrainConfig
from fcnseg.engine import predict_logits, prepare_inference
from fcnseg.export import export_model
from fcnseg.metrics import ConfusionMatrix


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--split", default="val")
    ap.add_argument("--max-images", type=int, default=0, help="0 = the whole split")
    ap.add_argument("--calibration-images", type=int, default=32)
    a = ap.parse_args()
    ck = load_checkpoint(a.checkpoint)
    cfg = ck.config or {}
    dataset = cfg.get("dataset", "camvid")
    root = TrainConfig(dataset=dataset, data_root=cfg.get("data_root", "")).resolved_data_root()
    ds = fdata.build_dataset(dataset, root, a.split)
    n = len(ds) if not a.max_images else min(a.max_images, len(ds))
    k = len(ck.classes)
    import onnxruntime as ort

    runners = {}
    fp32 = ck.build_model().eval()
    runners["fp32"] = lambda x: predict_logits(fp32, x)
    cl = prepare_inference(ck.build_model(), precision="fp32", channels_last=True)
    runners["fp32_cl"] = lambda x: predict_logits(cl, x.contiguous(memory_format=torch.channels_last))
    bf = prepare_inference(ck.build_model(), precision="bf16", channels_last=True)
    runners["bf16"] = lambda x: predict_logits(bf, x.contiguous(memory_format=torch.channels_last))
    tmp = Path(tempfile.mkdtemp())
    export_model(ck, tmp / "fp32.onnx")
    train = fdata.build_dataset(dataset, root, cfg.get("train_split", "train"))
    calib = [train.files(i)[0] for i in range(0, len(train), max(1, len(train) // a.calibration_images))]
    t0 = time.perf_counter()
    export_model(ck, tmp / "int8.onnx", int8_calibration=calib[: a.calibration_images])
    quant_s = time.perf_counter() - t0
    for name in ("fp32", "int8"):
        sess = ort.InferenceSession(str(tmp / f"{name}.onnx"), providers=["CPUExecutionProvider"])
        runners[f"ort_{name}"] = lambda x, s=sess: torch.from_numpy(s.run(None, {"image": x.numpy()})[0])

    cms = {m: ConfusionMatrix(k, ignore_index=ck.ignore_index) for m in runners}
    agree = dict.fromkeys(runners, 0)
    times: dict[str, list[float]] = {m: [] for m in runners}
    total = 0
    for i in range(n):
        image, mask = ds[i]
        x = ck.normalization(image.unsqueeze(0))
        ref = None
        for m, run in runners.items():
            with torch.no_grad():
                if i == 0:
                    run(x)  # warm-up on the first image
                t = time.perf_counter()
                pred = run(x).argmax(1)
                times[m].append(time.perf_counter() - t)
            if ref is None:
                ref = pred
            agree[m] += int((pred == ref).sum())
            cms[m].update(pred, mask.unsqueeze(0))
        total += ref.numel()
    base_iu = cms["fp32"].compute().mean_iu
    base_ms = statistics.median(times["fp32"]) * 1e3
    print(f"# {a.checkpoint}: {dataset} {a.split}, {n} images; torch {torch.__version__}, "
          f"onnxruntime {ort.__version__}; {torch.get_num_threads()} threads; int8 calibration "
          f"{len(calib[: a.calibration_images])} train images ({quant_s:.0f} s)")
    print("| path | argmax = fp32 (% pixels) | mean IU | change | ms/image (median) | speed-up vs fp32 |")
    print("|---|---:|---:|---:|---:|---:|")
    for m in runners:
        iu = cms[m].compute().mean_iu
        ms = statistics.median(times[m]) * 1e3
        print(f"| {m} | {100 * agree[m] / total:.2f} | {100 * iu:.2f} | {100 * (iu - base_iu):+.2f} | {ms:.1f} "
              f"| {base_ms / ms:.2f} |")


if __name__ == "__main__":
    main()
