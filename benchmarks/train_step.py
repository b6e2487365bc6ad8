"""One training step of an FCN, model only (synthetic batch): NCHW vs channels-last vs ``torch.compile`` vs
frozen batch norm folded into the convolutions (``--batch-norm frozen``).

The profile behind ``fcnseg train``'s defaults (issue 11): what each candidate does to forward + backward +
SGD step of the EfficientNet-Lite FCN-8s at batch 8, 352x352, fp32, and the top operators of each.

    python benchmarks/train_step.py                         # Lite0: NCHW, channels-last
    python benchmarks/train_step.py --compile               # + torch.compile (channels-last); compile time apart
    python benchmarks/train_step.py --batch-norm             # + frozen batch norm, folded (channels-last)
    python benchmarks/train_step.py --model fcn8s_efficientnet_lite2 --profile
"""

from __future__ import annotations

import argparse
import time

import torch

from fcnseg.losses import segmentation_loss
from fcnseg.models import build
from fcnseg.models.batchnorm import freeze_batch_norm
from fcnseg.precision import machine_summary


def measure(model_name: str, layout: str, compiled: bool, batch: int, size: int, steps: int,
            profile: bool, frozen_bn: bool = False) -> dict[str, float]:
    torch.manual_seed(0)
    model = build(model_name, num_classes=11).train()
    if frozen_bn:
        freeze_batch_norm(model)
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 11, (batch, size, size))
    if layout == "channels_last":
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    run = torch.compile(model) if compiled else model

    def step() -> None:
        loss = segmentation_loss(run(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    t = time.perf_counter()
    step()  # compiles, when compiled
    first = time.perf_counter() - t
    step()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    dt = (time.perf_counter() - t) / steps
    if profile:
        from torch.profiler import profile as prof

        with prof() as p:
            step()
        print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
    return {"s_per_step": dt, "images_per_s": batch / dt, "first_step_s": first}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="fcn8s_efficientnet_lite0")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=352)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--compile", action="store_true", help="also torch.compile (inductor) over channels-last")
    p.add_argument("--batch-norm", action="store_true", help="also frozen batch norm folded into the convs")
    p.add_argument("--profile", action="store_true", help="print the top operators of each")
    a = p.parse_args()
    print(f"{machine_summary()}; torch {torch.__version__}, {torch.get_num_threads()} threads; {a.model}, "
          f"batch {a.batch}, {a.size}x{a.size}, fp32")
    rows = [("NCHW", "contiguous", False, False), ("channels-last", "channels_last", False, False)]
    if a.compile:
        rows.append(("channels-last + torch.compile", "channels_last", True, False))
    if a.batch_norm:
        rows.append(("channels-last + frozen BN folded", "channels_last", False, True))
    results = []
    for name, layout, compiled, frozen_bn in rows:
        r = measure(a.model, layout, compiled, a.batch, a.size, a.steps, a.profile, frozen_bn)
        results.append((name, r))
        print(f"{name}: {r['s_per_step']:.3f} s/step", flush=True)
    base = results[0][1]["images_per_s"]
    print("\n| layout | s/step | images/s | vs NCHW | first step s |\n|---|---|---|---|---|")
    for name, r in results:
        print(f"| {name} | {r['s_per_step']:.3f} | {r['images_per_s']:.2f} | {r['images_per_s'] / base:.2f}x "
              f"| {r['first_step_s']:.1f} |")


if __name__ == "__main__":
    main()
