"""Why frozen, folded batch norm diverged at lr 0.01 (issue 19), measured.

For ``fcnseg train``'s default recipe (``--model fcn8s_efficientnet_lite0 --pretrained``, SGD lr 0.01, poly,
50-step warm-up, frozen batch norm) this prints, for the folded layers, the scale each batch norm folds into its
convolution (``s = gamma / sqrt(var + eps)``), and then trains a few tens of steps and records per step: the loss,
the gradient norm, and the relative update of each folded convolution's *effective* weight ``w * s`` (what the
convolution computes with): ``|delta(w s)| / |w s|``. An SGD step changes ``w`` by ``lr * g_w``, and
``g_w = s * g_(ws)``, so the effective weight moves by ``lr * s^2 * g_(ws)``: a layer with a large ``s`` trains at
``s^2`` times the learning rate. ``--fold`` picks the parameterisation:

* ``scaled``: fcnseg's fold (``w`` and ``gamma`` trained, ``s`` recomputed each step);
* ``unit``: ``w * s`` moved into the convolution once, the statistics set to mean 0, variance 1, ``gamma`` 1
  (``freeze_batch_norm(absorb=True)``), so every folded layer trains at the base learning rate (the same function
  at step 0); ``unit-fixed-gamma`` also stops ``gamma`` training.

``--encoder-lr-mult``, ``--clip-grad-norm`` and ``--batch-norm`` are ``fcnseg train``'s (-1: the automatic value).

Usage::

    python benchmarks/frozen_bn.py --dataset siftflow --fold scaled --encoder-lr-mult 1 --clip-grad-norm 0
    python benchmarks/frozen_bn.py --dataset siftflow --fold unit --encoder-lr-mult 1 --clip-grad-norm 0
    python benchmarks/frozen_bn.py --dataset camvid --batch-size 4 --crop-size 128 --steps 80
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import time

import torch

import fcnseg.train
from fcnseg.config import TrainConfig
from fcnseg.models.batchnorm import FoldedConv2d, freeze_batch_norm
from fcnseg.train import _datasets, _loaders, build_model
from fcnseg.train_state import make_optimizer, make_scheduler


def effective_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Each convolution's effective weight: ``w * s`` for a folded one (what it convolves with), else ``w``."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, FoldedConv2d):
            bn = m.bn
            s = bn.weight * torch.rsqrt(bn.running_var + bn.eps)  # type: ignore[operator]
            out[name] = (m.weight * s.reshape(-1, 1, 1, 1)).detach().clone()
        elif isinstance(m, torch.nn.Conv2d | torch.nn.ConvTranspose2d) and m.weight.requires_grad:
            out[name] = m.weight.detach().clone()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="siftflow")
    ap.add_argument("--data", default="")
    ap.add_argument("--dataset-arg", action="append", default=[], help="KEY=VALUE for the dataset")
    ap.add_argument("--fold", choices=["scaled", "unit", "unit-fixed-gamma"], default="unit")
    ap.add_argument("--steps", type=int, default=70)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--crop-size", type=int, default=256)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--warmup-steps", type=int, default=-1)
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--encoder-lr-mult", type=float, default=-1.0)
    ap.add_argument("--clip-grad-norm", type=float, default=-1.0)
    ap.add_argument("--batch-norm", default="auto")
    ap.add_argument("--json", default="", help="write the per-step records here")
    a = ap.parse_args()
    args = {k: json.loads(v) if v[:1].isdigit() or v in ("true", "false") else v
            for k, v in (kv.split("=", 1) for kv in a.dataset_arg)}
    cfg = TrainConfig(dataset=a.dataset, data_root=a.data, dataset_args=args, model="fcn8s_efficientnet_lite0",
                      model_args={"pretrained": True}, batch_size=a.batch_size, crop_size=a.crop_size, lr=a.lr,
                      warmup_steps=a.warmup_steps, precision=a.precision, workers=1, cache="off",
                      encoder_lr_mult=a.encoder_lr_mult, clip_grad_norm=a.clip_grad_norm, batch_norm=a.batch_norm)
    torch.manual_seed(0)
    dev = torch.device("cpu")
    train_ds, val_ds = _datasets(cfg)
    if a.fold == "scaled":
        fcnseg.train.freeze_batch_norm = functools.partial(freeze_batch_norm, absorb=False)  # type: ignore
    model, norm, cfg = build_model(cfg, train_ds, dev)
    if a.fold == "unit-fixed-gamma":
        for m in model.modules():
            if isinstance(m, FoldedConv2d):
                m.bn.weight.requires_grad_(False)  # type: ignore[union-attr]
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.backends.cpu.get_cpu_capability()}; dataset {a.dataset}, fold {a.fold}, batch {a.batch_size}, "
          f"crop {a.crop_size}, lr {a.lr}, warm-up {cfg.warmup_steps}, encoder lr x{cfg.encoder_lr_mult:g}, "
          f"clip {cfg.clip_grad_norm:g}")
    scales = []
    for name, m in model.named_modules():
        if isinstance(m, FoldedConv2d):
            bn = m.bn
            s = (bn.weight * torch.rsqrt(bn.running_var + bn.eps)).abs().detach()  # type: ignore[operator]
            scales.append((float(s.max()), name))
    scales.sort(reverse=True)
    print(f"folded layers: {len(scales)}; largest |s| (gamma/sqrt(var+eps)), s^2 = the layer's lr factor:")
    for v, name in scales[:5]:
        print(f"  {name:<40} |s| {v:8.2f}  s^2 {v * v:10.1f}")
    opt = make_optimizer(model, cfg)
    sched = make_scheduler(opt, cfg)
    _, loader, _, _ = _loaders(cfg, train_ds, val_ds, dev, False)
    model.train()
    records = []
    it = iter(loader)
    t0 = time.monotonic()
    print(f"{'step':>4} {'lr':>8} {'loss':>10} {'grad norm':>10} {'max rel. update':>15}  {'layer':<34} "
          f"{'head max':>10}  head layer")
    for step in range(1, a.steps + 1):
        try:
            images, masks = next(it)
        except StopIteration:
            it = iter(loader)
            images, masks = next(it)
        before = effective_weights(model)
        x = norm(images.contiguous(memory_format=torch.channels_last))
        with torch.autocast("cpu", torch.bfloat16, enabled=a.precision == "bf16"):
            logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits.float(), masks, ignore_index=255)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()
                                                             if p.grad is not None])))
        lr = opt.param_groups[0]["lr"]
        if cfg.clip_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(list(model.parameters()), cfg.clip_grad_norm)
        opt.step()
        sched.step()
        after = effective_weights(model)
        rel = {k: float((after[k] - before[k]).norm() / before[k].norm().clamp_min(1e-12)) for k in before}
        worst = max(rel, key=rel.get)  # type: ignore[arg-type]
        head = max((k for k in rel if not k.startswith("encoder.")), key=rel.get)  # type: ignore[arg-type]
        rec = {"step": step, "lr": lr, "loss": float(loss.detach()), "grad_norm": gnorm, "max_rel_update": rel[worst],
               "layer": worst, "head_rel_update": rel[head], "head_layer": head}
        records.append(rec)
        if step % 5 == 0 or step == 1 or not torch.isfinite(loss):
            print(f"{step:4d} {lr:8.5f} {float(loss):10.4g} {gnorm:10.4g} {rel[worst]:15.4g}  {worst:<34} "
                  f"{rel[head]:10.4g}  {head}")
        if not torch.isfinite(loss):
            break
    tail = [r["loss"] for r in records[-10:]]
    print(f"# mean loss of the last 10 steps: {sum(tail) / len(tail):.4g}")
    print(f"# {len(records)} steps in {time.monotonic() - t0:.0f} s")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(records, f)


if __name__ == "__main__":
    main()
