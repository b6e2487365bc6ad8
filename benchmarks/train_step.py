"""One training step of an FCN, model only (synthetic batch): NCHW vs channels-last vs ``torch.compile`` vs
frozen batch norm folded into the convolutions (``--batch-norm frozen``).

The profile behind ``fcnseg train``'s defaults (issue 11): what each candidate does to forward + backward +
SGD step of the EfficientNet-Lite FCN-8s at batch 8, 352x352, fp32, and the top operators of each.

    python benchmarks/train_step.py                         # Lite0: NCHW, channels-last
    python benchmarks/train_step.py --compile               # + torch.compile (channels-last); compile time apart
    python benchmarks/train_step.py --batch-norm             # + frozen batch norm, folded (channels-last)
    python benchmarks/train_step.py --model fcn8s_efficientnet_lite2 --profile
    python benchmarks/train_step.py --bn-compare /tmp/batchnorm_3c25ee1.py --repeat 3   # issue 17, below

``--bn-compare OLD_BATCHNORM_PY`` (an older ``fcnseg/models/batchnorm.py``, e.g. from ``git show
3c25ee1:src/fcnseg/models/batchnorm.py``): channels-last with frozen batch norm three ways, the file's
``freeze_batch_norm`` and this tree's with and without the fold, measured in turn ``--repeat`` rounds (each
round starting with the next), so that load from other processes falls on all three.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from fcnseg.losses import segmentation_loss
from fcnseg.models import build
from fcnseg.models.batchnorm import freeze_batch_norm
from fcnseg.precision import machine_summary


def measure(model_name: str, layout: str, compiled: bool, batch: int, size: int, steps: int,
            profile: bool, frozen_bn: bool | Callable[[nn.Module], object] = False) -> dict[str, float]:
    """Seconds per training step; ``frozen_bn``: ``freeze_batch_norm``, or the function to freeze with."""
    torch.manual_seed(0)
    model = build(model_name, num_classes=11).train()
    if frozen_bn:
        (freeze_batch_norm if frozen_bn is True else frozen_bn)(model)
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


def bn_compare(a: argparse.Namespace) -> None:
    """``--bn-compare``: the old file's frozen batch norm against this tree's, folded and unfolded."""
    spec = importlib.util.spec_from_file_location("fcnseg_batchnorm_old", a.bn_compare)
    assert spec is not None and spec.loader is not None, a.bn_compare
    old = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(old)
    variants = {"old file (folded)": old.freeze_batch_norm, "modules, folded": freeze_batch_norm,
                "modules, unfolded": functools.partial(freeze_batch_norm, fold=False)}
    names, times = list(variants), {n: [] for n in variants}
    for i in range(a.repeat):
        for name in names[i % 3:] + names[:i % 3]:
            r = measure(a.model, "channels_last", False, a.batch, a.size, a.steps, False, variants[name])
            times[name].append(r["s_per_step"])
            print(f"round {i + 1}: {name}: {r['s_per_step']:.3f} s/step", flush=True)
    print("\n| frozen batch norm | s/step, each round | median | images/s | vs old file |\n|---|---|---|---|---|")
    ref = statistics.median(times[names[0]])
    for name in names:
        med = statistics.median(times[name])
        print(f"| {name} | {', '.join(f'{t:.3f}' for t in times[name])} | {med:.3f} | {a.batch / med:.2f} "
              f"| {ref / med:.2f}x |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="fcn8s_efficientnet_lite0")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=352)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--compile", action="store_true", help="also torch.compile (inductor) over channels-last")
    p.add_argument("--batch-norm", action="store_true", help="also frozen batch norm folded into the convs")
    p.add_argument("--profile", action="store_true", help="print the top operators of each")
    p.add_argument("--bn-compare", metavar="OLD_BATCHNORM_PY", help="instead: frozen batch norm three ways")
    p.add_argument("--repeat", type=int, default=3, help="--bn-compare rounds")
    a = p.parse_args()
    print(f"{machine_summary()}; torch {torch.__version__}, {torch.get_num_threads()} threads; {a.model}, "
          f"batch {a.batch}, {a.size}x{a.size}, fp32")
    if a.bn_compare:
        return bn_compare(a)
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
