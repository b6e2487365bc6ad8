"""Print the model zoo table: parameters, GFLOPs at 500x375 (a typical VOC image) and crop offsets.

Usage: python benchmarks/model_zoo.py [--classes 21] [--height 375 --width 500] [--markdown]
FLOPs are counted by torch.utils.flop_counter (a multiply-add is 2 FLOPs) on the meta device: exact counts
of the network's convolutions, no memory and no time spent on real arithmetic.
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.flop_counter import FlopCounterMode

from fcnseg.models import build, list_models


def zoo_rows(num_classes: int, height: int, width: int) -> list[dict[str, object]]:
    rows = []
    for name in list_models():
        if name == "fcn_timm":  # needs an encoder name: any timm encoder, not one fixed network
            continue
        with torch.device("meta"):
            model = build(name, num_classes=num_classes).eval()
            x = torch.empty(1, 3, height, width)
            counter = FlopCounterMode(display=False)
            with counter, torch.no_grad():
                model(x)
        rows.append({
            "model": name,
            "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
            "gflops": counter.get_total_flops() / 1e9,
            "offsets": ", ".join(f"{k}={v}" for k, v in model.offsets.items()),
        })
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--classes", type=int, default=21)
    ap.add_argument("--height", type=int, default=375)
    ap.add_argument("--width", type=int, default=500)
    args = ap.parse_args()
    rows = zoo_rows(args.classes, args.height, args.width)
    print(f"| variant | parameters (M) | GFLOPs at {args.width}x{args.height} | crop offsets |")
    print("|---|---:|---:|---|")
    for r in rows:
        print(f"| `{r['model']}` | {r['params_M']:.1f} | {r['gflops']:.1f} | {r['offsets']} |")


if __name__ == "__main__":
    main()
