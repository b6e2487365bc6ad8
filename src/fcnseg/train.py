"""``fcnseg train``: wiring of data, model, optimiser and the loop (``run_train``)."""

from __future__ import annotations

import functools
import json
import logging
import math
import random
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from . import data as fdata
from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .distributed import ShardedSampler, init_distributed, is_main
from .engine import evaluate, set_train_mode, train_one_epoch
from .models import build
from .normalization import get_normalization

log = logging.getLogger("fcnseg.train")


class SeededTransforms(Dataset):
    """Applies random transforms with a generator seeded by (seed, epoch, index).

    Augmentation then depends on nothing but the sample and the epoch: a resumed run, any number of loader
    workers and any number of processes see exactly the same crops and flips.
    """

    def __init__(self, dataset: Dataset, transforms: Any, seed: int):
        self.dataset, self.transforms, self.seed, self.epoch = dataset, transforms, seed, 0

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.dataset[i]
        if self.transforms is None:
            return image, mask
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * 1_000_003 + self.epoch) * 10_000_019 + i)
            return self.transforms(image, mask)


def default_normalization(model: str, model_args: dict[str, Any] | None = None) -> str:
    """The normalisation the model's pretrained weights expect (ImageNet mean/std unless declared).

    ``fcn_timm`` asks its encoder (``model_args["encoder"]``).
    """
    from .models.backbones import PRETRAINED_NORMALIZATION, encoder_normalization

    if model == "fcn_timm" and model_args and "encoder" in model_args:
        return encoder_normalization(str(model_args["encoder"]))
    return PRETRAINED_NORMALIZATION.get(model, "imagenet")


def param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """Weights at ``lr`` with decay; biases and norm parameters at ``lr * bias_lr_mult`` (2 in the paper)."""
    weights, biases = [], []
    for p in model.parameters():
        if p.requires_grad:
            (weights if p.ndim > 1 else biases).append(p)
    return [
        {"params": weights, "lr": cfg.lr, "weight_decay": cfg.weight_decay},
        {"params": biases, "lr": cfg.lr * cfg.bias_lr_mult,
         "weight_decay": cfg.weight_decay if cfg.bias_decay else 0.0},
    ]


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)


def make_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    def factor(step: int) -> float:
        warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
        if cfg.schedule == "poly":
            return warm * max(0.0, 1 - step / cfg.max_steps) ** cfg.poly_power
        return warm

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _prepare_out_dir(cfg: TrainConfig) -> Path:
    out = Path(cfg.out_dir)
    if out.exists() and any(out.iterdir()) and not (cfg.overwrite or cfg.resume):
        raise FileExistsError(f"run folder {out} exists and is not empty: pass --overwrite, --resume, "
                              "or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    if cfg.overwrite and not cfg.resume:  # a new run: none of the old run's files may pass for this one's
        for name in ("log.jsonl", "best.pt", "last.pt", "config.json"):
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(out / "tensorboard", ignore_errors=True)
    return out


def run_train(cfg: TrainConfig, *, progress: bool = True) -> Path:
    """Train as ``cfg`` says; returns the path of the best checkpoint (by validation mean IU)."""
    rank, world, device = init_distributed(cfg.device)
    main = is_main()
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    out = _prepare_out_dir(cfg) if main else Path(cfg.out_dir)
    root = cfg.resolved_data_root()

    train_ds = fdata.build_dataset(cfg.dataset, root, cfg.train_split, **cfg.dataset_args)
    val_kind, val_root, val_args = cfg.resolved_val()
    val_ds = fdata.build_dataset(val_kind, val_root, cfg.val_split, **val_args)
    if val_ds.classes != train_ds.classes:
        raise fdata.DataError(f"validation set {val_root} ({val_kind}) has classes {val_ds.classes}; the training "
                              f"set {root} has {train_ds.classes}: they must be the same, in the same order")
    if cfg.skip_bad:
        for ds in (train_ds, val_ds):
            ds.check(skip_bad=True, progress=progress and main)
    if len(train_ds) == 0 or len(val_ds) == 0:
        raise fdata.DataError(f"empty split in {root}: train has {len(train_ds)}, val has {len(val_ds)} samples")
    if cfg.max_val_images:
        val_ds = torch.utils.data.Subset(val_ds, range(min(cfg.max_val_images, len(val_ds))))  # type: ignore[assignment]
    base = train_ds
    classes, palette, ignore = base.classes, base.palette, base.ignore_index

    norm = get_normalization(cfg.normalization or default_normalization(cfg.model, cfg.model_args))
    model_args = {"num_classes": len(classes), **cfg.model_args}
    model = build(cfg.model, **model_args)
    if cfg.init_from:
        init = load_checkpoint(cfg.init_from)
        copied, kept = model.init_from(init.state_dict)  # type: ignore[operator]
        log.info("init from %s: %d tensors copied, left as initialised: %s", cfg.init_from, len(copied), kept)
        if not cfg.normalization:  # the weights carry their input contract (e.g. Caffe's BGR 0-255)
            norm = init.normalization
    if cfg.freeze_encoder:
        model.encoder.requires_grad_(False)  # type: ignore[union-attr]
    model.to(device)
    ddp_model: nn.Module = model
    if world > 1:
        ddp_model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                        else None)
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg)

    step, epoch, start, best = 0, 0, 0, -math.inf
    if cfg.resume:
        ck = load_checkpoint(cfg.resume)
        if ck.train_state is None:
            raise ValueError(f"{cfg.resume} holds no training state (optimiser, step): cannot resume from it")
        saved = ck.config or {}
        for key in ("model", "batch_size", "dataset", "train_split", "seed"):
            if key in saved and saved[key] != getattr(cfg, key):
                raise ValueError(f"{cfg.resume} was trained with {key}={saved[key]!r}, not {getattr(cfg, key)!r}: "
                                 f"resume with the same {key} (or start a new run with --init-from)")
        model.load_state_dict(ck.state_dict)
        optimizer.load_state_dict(ck.train_state["optimizer"])
        scheduler.load_state_dict(ck.train_state["scheduler"])
        step, epoch, start = ck.train_state["step"], ck.train_state["epoch"], ck.train_state["sampler_pos"]
        best = ck.train_state.get("best_miou", -math.inf)
        _set_rng_state(ck.train_state["rng"])
        log.info("resumed from %s at step %d (epoch %d, sample %d)", cfg.resume, step, epoch, start)

    crop = cfg.crop_size or None
    tf = fdata.train_transforms(crop, scale_range=(cfg.scale_min, cfg.scale_max), hflip=cfg.hflip,
                                color_jitter=cfg.color_jitter, ignore_index=ignore)
    samples = SeededTransforms(train_ds, tf, cfg.seed)
    sampler = ShardedSampler(len(samples), shuffle=True, seed=cfg.seed, pad=True)
    val_loader = DataLoader(val_ds, batch_size=1, sampler=ShardedSampler(len(val_ds), shuffle=False, pad=False),
                            num_workers=cfg.workers, collate_fn=fdata.pad_collate)
    amp = cfg.amp if device.type == "cuda" else cfg.amp_cpu
    writer = _tensorboard(out) if main else None
    if main:
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    epoch_start_step = step
    best_path = out / "best.pt"

    def checkpoint(metrics: dict[str, Any] | None, s: int, pos: int) -> Checkpoint:
        return Checkpoint(
            model_name=cfg.model, model_args=model_args, state_dict=model.state_dict(), classes=list(classes),
            palette=list(palette), normalization=norm, ignore_index=ignore, config=cfg.to_dict(),
            metrics=metrics,
            train_state={"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": s,
                         "epoch": epoch, "sampler_pos": pos, "rng": _rng_state(), "best_miou": best},
        )

    def on_step(s: int, loss: float, ips: float) -> None:
        nonlocal best
        pos = start + (s - epoch_start_step) * cfg.batch_size
        if main and (s % cfg.log_every == 0 or s == cfg.max_steps):
            lr = optimizer.param_groups[0]["lr"]
            _log(out, writer, {"step": s, "loss": loss, "lr": lr, "images_per_s": ips * world})
        if s % cfg.val_every == 0 or s in (cfg.max_steps, cfg.stop_at):
            cm = evaluate(model, val_loader, num_classes=len(classes), norm=norm, device=device,
                          ignore_index=ignore, amp=amp, progress=progress and main)
            m = cm.compute()
            set_train_mode(model)
            if main:
                metrics = {"step": s, **{k: v for k, v in m.to_dict().items()}}
                _log(out, writer, {"step": s, "val_pixel_acc": m.pixel_acc, "val_mean_acc": m.mean_acc,
                                   "val_mean_iu": m.mean_iu, "val_fw_iu": m.fw_iu})
                improved = m.mean_iu > best
                best = max(best, m.mean_iu)
                ck = checkpoint(metrics, s, pos)
                save_checkpoint(ck, out / "last.pt")
                if improved:
                    save_checkpoint(ck, best_path)

    last = cfg.stop_at or cfg.max_steps
    while step < last:
        sampler.set_epoch(epoch, start)
        samples.epoch = epoch
        loader = DataLoader(samples, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.workers,
                            collate_fn=functools.partial(fdata.pad_collate, ignore_index=ignore),
                            generator=torch.Generator().manual_seed(cfg.seed + epoch),
                            pin_memory=device.type == "cuda", drop_last=False)
        epoch_start_step = step
        step = train_one_epoch(ddp_model, loader, optimizer, scheduler, norm=norm, device=device,
                               loss_reduction=cfg.loss, ignore_index=ignore, amp=amp, max_steps=last,
                               step=step, on_step=on_step, progress=progress and main)
        epoch, start = epoch + 1, 0  # the loader ended (or max_steps was reached and the loop ends)
    if writer is not None:
        writer.close()
    return best_path


def _tensorboard(out: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is a dependency; stay usable if a user removed it
        log.warning("tensorboard is not installed: logging to log.jsonl only")
        return None
    return SummaryWriter(str(out / "tensorboard"))


def _log(out: Path, writer: Any, record: dict[str, float]) -> None:
    with open(out / "log.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    if writer is not None:
        for k, v in record.items():
            if k != "step":
                writer.add_scalar(k, v, record["step"])
        writer.flush()
