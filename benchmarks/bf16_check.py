"""Is bf16 worth it on this machine? fp32 vs bf16 forward of a trained checkpoint, in one run.

What ``--precision auto`` decides from the hardware, measured: median ms per 480x360 CamVid image for the
committed EfficientNet-Lite0 FCN-8s (channels-last, batch 1) in fp32 and in bf16 weights.

    python benchmarks/bf16_check.py [--checkpoint PATH] [--reps 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from fcnseg.checkpoint import load_checkpoint
from fcnseg.engine import predict_logits, prepare_inference
from fcnseg.precision import machine_summary, resolve_precision

CHECKPOINT = Path(__file__).parent / "camvid" / "fcn8s_efficientnet_lite0_camvid.pt"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=str(CHECKPOINT))
    p.add_argument("--reps", type=int, default=5)
    a = p.parse_args()
    ck = load_checkpoint(a.checkpoint)
    x = ck.normalization(torch.randint(0, 256, (1, 3, 360, 480), dtype=torch.uint8))
    print(f"{machine_summary()}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"--precision auto -> {resolve_precision('auto', 'cpu')}")
    ms = {}
    for precision in ("fp32", "bf16"):
        model = prepare_inference(ck.build_model(), precision=precision)
        predict_logits(model, x)  # warm-up
        times = []
        for _ in range(a.reps):
            t = time.perf_counter()
            predict_logits(model, x)
            times.append(time.perf_counter() - t)
        ms[precision] = 1000 * statistics.median(times)
        print(f"{precision}: {ms[precision]:.1f} ms/image (median of {a.reps})", flush=True)
    print(f"bf16 / fp32 time: {ms['bf16'] / ms['fp32']:.2f}x")


if __name__ == "__main__":
    main()
