"""The paper's SIFT Flow net against the one trained here, per training step on this CPU (issue 19).

Times one SGD step (forward, backward, update) of the paper's FCN-16s over VGG16 (``fcn16s``, 33 classes; the
two-headed ``fcn16s_siftflow`` differs only in its score layers) on one whole 256x256 image, as the reference
trains it (batch 1), and of FCN-8s over EfficientNet-Lite2 on a batch of 8 256x256 crops (the committed
model's recipe). The rounds alternate between the two nets, so both see the same load on a shared machine; the
medians and the ratio of the paired rounds are printed, with the CPU and the time the paper's 100,000 steps per
stage would take at that rate.

Usage::

    python benchmarks/siftflow/step_time.py --rounds 5
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from fcnseg.models import build


def _cpu() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def step(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> float:
    t = time.perf_counter()
    loss = torch.nn.functional.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    torch.manual_seed(0)
    nets = {
        "FCN-16s VGG16, batch 1 (paper)": (build("fcn16s", num_classes=33), 1),
        "FCN-8s Lite2, batch 8 (here)": (build("fcn8s_efficientnet_lite2", num_classes=33), 8),
    }
    runs = {}
    for name, (model, batch) in nets.items():
        model.train().to(memory_format=torch.channels_last)
        x = torch.randn(batch, 3, 256, 256).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 33, (batch, 256, 256))
        opt = torch.optim.SGD(model.parameters(), lr=1e-10, momentum=0.99)
        step(model, opt, x, y)  # warm-up: allocation, oneDNN primitives
        runs[name] = (model, opt, x, y, [])
    for _ in range(a.rounds):
        for model, opt, x, y, times in runs.values():
            times.append(step(model, opt, x, y))
    print(f"# {_cpu()}, {torch.get_num_threads()} threads, capability {torch.backends.cpu.get_cpu_capability()}, "
          f"torch {torch.__version__}, fp32, {a.rounds} alternating rounds")
    print("| net | s/step (median) | images/s | 100,000 steps |")
    print("|---|---:|---:|---:|")
    for name, (_, _, x, _, times) in runs.items():
        med = statistics.median(times)
        print(f"| {name} | {med:.2f} | {x.shape[0] / med:.2f} | {100_000 * med / 3600:.0f} h |")
    (vgg, lite) = (r[4] for r in runs.values())
    ratio = statistics.median(v / (w / 8) for v, w in zip(vgg, lite, strict=True))
    print(f"per image, VGG16 FCN-16s costs {ratio:.1f}x FCN-8s Lite2 (median of paired rounds)")


if __name__ == "__main__":
    main()
