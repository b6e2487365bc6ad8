"""``fcnseg train``: wiring of data, model, optimiser and the loop (``run_train``)."""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import random
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from . import data as fdata
from .checkpoint import Checkpoint, load_checkpoint, load_init_weights, save_checkpoint, task_extra
from .config import TrainConfig
from .distributed import (
    DistributedError,
    ShardedSampler,
    any_rank,
    collective,
    init_distributed,
    is_main,
    on_main,
)
from .engine import evaluate, set_train_mode, train_one_epoch
from .errors import TrainingInterrupted
from .models import build, task_heads
from .models.batchnorm import freeze_batch_norm, has_batch_norm
from .normalization import get_normalization
from .outputs import OutputError, atomic_write, check_output_dir, free_bytes, remove_stale_temp_files
from .precision import resolve_precision
from .progress import Progress

log = logging.getLogger("fcnseg.train")


class SeededTransforms(Dataset):
    """Applies random transforms with a generator seeded by (seed, epoch, index); indexed by ``(i, epoch)``.

    Augmentation then depends on nothing but the sample and the epoch: a resumed run, any number of loader
    workers and any number of processes see exactly the same crops and flips. The epoch travels with the
    index (:class:`EpochSampler`) because persistent loader workers keep their own copy of this object.
    """

    def __init__(self, dataset: Dataset, transforms: Any, seed: int):
        self.dataset, self.transforms, self.seed = dataset, transforms, seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor] | None:
        i, epoch = key
        sample = self.dataset[i]
        if sample is None or self.transforms is None:  # None: a bad sample skipped (skip_bad)
            return sample
        image, mask = sample
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * 1_000_003 + epoch) * 10_000_019 + i)
            return self.transforms(image, mask)


class EpochSampler(Sampler[tuple[int, int]]):
    """``(index, epoch)`` keys for :class:`SeededTransforms` from a :class:`ShardedSampler`'s indices."""

    def __init__(self, sampler: ShardedSampler):
        self.sampler, self.epoch = sampler, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.sampler.set_epoch(epoch, start)
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return ((i, self.epoch) for i in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


def default_normalization(model: str, model_args: dict[str, Any] | None = None) -> str:
    """The normalisation the model's pretrained weights expect (ImageNet mean/std unless declared).

    ``fcn_timm`` asks its encoder (``model_args["encoder"]``).
    """
    from .models.backbones import PRETRAINED_NORMALIZATION, encoder_normalization

    if model == "fcn_timm" and model_args and "encoder" in model_args:
        return encoder_normalization(str(model_args["encoder"]))
    return PRETRAINED_NORMALIZATION.get(model, "imagenet")


FROZEN_BN_WARMUP = 50
"""Warm-up steps of ``warmup_steps=-1`` (auto) when batch norm is frozen (CamVid, benchmarks/RESULTS.md)."""


def batch_norm_mode(cfg: TrainConfig) -> str:
    """``"frozen"`` or ``"train"``: ``cfg.batch_norm``, where ``auto`` is frozen when the weights start trained.

    Trained weights (``pretrained``, ``--init-from``) carry batch-norm statistics worth keeping. Re-estimating
    them on batches of 8 crops costs a quarter of a CPU step and, on CamVid, 8 points of val mean IU at a
    200-step budget (benchmarks/RESULTS.md). Random weights need them estimated.
    """
    if cfg.batch_norm != "auto":
        return cfg.batch_norm
    trained = bool(cfg.model_args.get("pretrained")) or bool(cfg.init_from)
    return "frozen" if trained else "train"


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
        warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps > 0 else 1.0
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


class _StopRequest:
    """Signal handler for SIGINT/SIGTERM: the first asks training to stop after the current step (with a
    checkpoint); a second one stops at once (files on disk stay whole: every write is atomic)."""

    GRACE_S = 5.0
    """Signals within this many seconds of the first are the same request: a terminal's Ctrl-C reaches both
    torchrun and its workers, and torchrun forwards it as SIGTERM a moment later."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._first = 0.0
        self._previous: dict[int, Any] = {}

    def __call__(self, signum: int, frame: Any) -> None:
        if self.signum is None:
            self.signum, self._first = signum, time.monotonic()
        elif time.monotonic() - self._first > self.GRACE_S:
            raise KeyboardInterrupt

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def _ignore_stop_signals(worker_id: int) -> None:
    # Loader workers leave Ctrl-C (sent to the whole terminal process group) to the main process, which saves
    # and stops them in order. SIGTERM keeps its default: it is how multiprocessing ends workers at exit.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _datasets(cfg: TrainConfig) -> tuple[fdata.SegmentationDataset, fdata.SegmentationDataset]:
    root = cfg.resolved_data_root()
    train_ds = fdata.build_dataset(cfg.dataset, root, cfg.train_split, **cfg.dataset_args)
    val_kind, val_root, val_args = cfg.resolved_val()
    val_ds = fdata.build_dataset(val_kind, val_root, cfg.val_split, **val_args)
    if val_ds.classes != train_ds.classes:
        raise fdata.DataError(f"validation set {val_root} ({val_kind}) has classes {val_ds.classes}; the training "
                              f"set {root} has {train_ds.classes}: they must be the same, in the same order")
    for ds in (train_ds, val_ds):
        ds.max_pixels = cfg.max_pixels
    return train_ds, val_ds


def _checks_before_work(cfg: TrainConfig, datasets: tuple[fdata.SegmentationDataset, ...], progress: bool
                        ) -> list[list[tuple[Path, Path]]]:
    """Everything that can refuse the run, before any step, deletion or output: the run folder can be
    written, and every sample passes validation (``--check-data``; bad ones dropped with ``--skip-bad``)."""
    check_output_dir(cfg.out_dir, overwrite=cfg.overwrite, allow_existing=bool(cfg.resume))
    level = cfg.check_data
    if cfg.skip_bad and level in ("headers", "labels"):
        level = "full"  # skip every bad sample now: one failing in the loop would leave a batch empty
    if level != "off":
        for ds in datasets:
            report = ds.validate(level, skip_bad=cfg.skip_bad, progress=progress)
            if report.bad:
                log.warning("%s: skipped %d bad samples of %d (--skip-bad)", ds, len(report.bad), report.samples)
    for ds in datasets:
        if len(ds) == 0:
            raise fdata.DataError(f"{ds}: empty split; fix: choose another --train-split/--val-split")
    return [ds.samples for ds in datasets]


def _start_run_folder(cfg: TrainConfig, out: Path) -> None:
    """Create the run folder; remove temp files of killed runs; with ``--overwrite`` (a new run), the old
    run's files, only now that every check has passed."""
    out.mkdir(parents=True, exist_ok=True)
    for p in remove_stale_temp_files(out):
        log.info("removed %s, left by an interrupted write", p)
    if cfg.overwrite and not cfg.resume:  # none of the old run's files may pass for this one's
        for name in ("log.jsonl", "best.pt", "last.pt", "config.json"):
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(out / "tensorboard", ignore_errors=True)


def _check_disk_space(out: Path, model: nn.Module, cfg: TrainConfig) -> None:
    """Refuse to start when the run folder's disk cannot hold the checkpoints (best, last and a temporary
    copy while one is written): better now than a failed save an hour in."""
    params = sum(p.numel() * p.element_size() for p in model.state_dict().values())
    states = {"sgd": 1, "adamw": 2}.get(cfg.optimizer, 2)
    need = 3 * params * (1 + states)
    existing = sum((out / n).stat().st_size for n in ("best.pt", "last.pt") if (out / n).is_file() and
                   out.is_dir())
    free = free_bytes(out) + existing
    if free < need:
        raise OutputError(f"--out {out}: {free / 2**20:.0f} MiB free, checkpoints need about {need / 2**20:.0f} "
                          f"MiB; fix: free disk space or choose another --out")


def _truncate_log(path: Path, step: int) -> None:
    """Keep the log records of steps up to ``step``: a resumed run logs the later steps again, once."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line)
        except ValueError:
            continue  # a line torn by a kill
    text = "".join(line + "\n" for line in kept).encode()
    atomic_write(path, lambda f: f.write(text))


def _metrics_line(s: int, last: int, m: Any, best: float) -> str:
    others = "".join(f"; {t}: mean IU {100 * tm.mean_iu:.2f}, pixel acc {100 * tm.pixel_acc:.2f}"
                     for t, tm in list(m.tasks.items())[1:])  # a multi-task net: the first task picks the best
    return (f"step {s}/{last}: val mean IU {100 * m.mean_iu:.2f}, pixel acc {100 * m.pixel_acc:.2f}, "
            f"mean acc {100 * m.mean_acc:.2f}, f.w. IU {100 * m.fw_iu:.2f} (best mean IU {100 * best:.2f}){others}")


def _check_tasks(model: nn.Module, ds: fdata.SegmentationDataset, cfg: TrainConfig) -> None:
    """A multi-task dataset needs a model with one head per task, of the same classes, and the reverse."""
    heads = task_heads(model)
    tasks = {t: len(names) for t, (names, _) in ds.tasks.items()} if ds.tasks else None
    if heads != tasks:
        what = ", ".join(f"{t} ({k} classes)" for t, k in tasks.items()) if tasks else "one task"
        has = ", ".join(f"{t} ({k} classes)" for t, k in heads.items()) if heads else "one head"
        fix = "a model with those heads (SIFT Flow: fcn16s_siftflow, fcn16s_siftflow_efficientnet_lite0)" if tasks \
            else "a single-head model (e.g. fcn8s)"
        raise ValueError(f"--dataset {cfg.dataset} labels {what}; --model {cfg.model} has {has}; fix: choose {fix}")


def run_train(cfg: TrainConfig, *, progress: bool = True, dry_run: bool = False) -> Path:
    """Train as ``cfg`` says; returns the path of the best checkpoint (by validation mean IU).

    Before any step, deletion or output, the run folder is checked and the data validated; SIGINT/SIGTERM
    save ``last.pt`` at the current step and raise :class:`TrainingInterrupted`. ``dry_run`` stops after
    those checks and the model's construction, having written nothing.
    """
    rank, world, device = init_distributed(cfg.device, cfg.dist_timeout)
    main = is_main()
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    out = Path(cfg.out_dir)
    train_ds, val_ds = _datasets(cfg)
    train_ds.samples, val_ds.samples = on_main(lambda: _checks_before_work(cfg, (train_ds, val_ds),
                                                                            progress and main))
    for ds in (train_ds, val_ds):
        ds.skip_bad = cfg.skip_bad
        ds.share_skip_counter()
    if cfg.max_val_images:
        val_ds = torch.utils.data.Subset(val_ds, range(min(cfg.max_val_images, len(val_ds))))  # type: ignore[assignment]
    base = train_ds
    classes, palette, ignore = base.classes, base.palette, base.ignore_index

    norm = get_normalization(cfg.normalization or default_normalization(cfg.model, cfg.model_args))
    model_args = {"num_classes": len(classes), **cfg.model_args}
    model = build(cfg.model, **model_args)
    _check_tasks(model, base, cfg)
    if cfg.init_from:
        init_state, init_norm = load_init_weights(cfg.init_from)  # one checkpoint, or NAME=PATH,... merged
        copied, kept = model.init_from(init_state)  # type: ignore[operator]
        log.info("init from %s: %d tensors copied, left as initialised: %s", cfg.init_from, len(copied), kept)
        if not cfg.normalization and init_norm is not None:  # the weights carry their input contract
            norm = init_norm
    if cfg.freeze_encoder:
        model.encoder.requires_grad_(False)  # type: ignore[union-attr]
    frozen_bn = batch_norm_mode(cfg) == "frozen" and has_batch_norm(model)
    if frozen_bn:
        frozen, folded = freeze_batch_norm(model)
        log.info("batch norm: %d frozen (running statistics fixed, gamma/beta trained), %d folded into their "
                 "convolutions; --batch-norm train re-estimates them", frozen, folded)
    if cfg.warmup_steps < 0:  # auto: frozen batch norm at lr 0.01 diverged within 30 steps without a warm-up
        cfg = dataclasses.replace(cfg, warmup_steps=FROZEN_BN_WARMUP if frozen_bn else 0)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    ddp_model: nn.Module = model
    if world > 1:
        ddp_model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                        else None)
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg)
    # The compiled module shares the parameters; validation and checkpoints use the plain one.
    step_model = torch.compile(ddp_model) if cfg.compile else ddp_model
    ema = make_ema(model, cfg.ema_decay) if cfg.ema_decay else None
    if dry_run:
        on_main(lambda: _check_disk_space(out, model, cfg))  # free_bytes looks up the first existing parent
        log.info("dry run: %d training and %d validation samples checked, %s can be written; nothing written",
                 len(train_ds), len(val_ds), out)
        return out / "best.pt"

    step, epoch, start, best = 0, 0, 0, -math.inf
    last_metrics: dict[str, Any] | None = None
    if cfg.resume:
        ck = load_checkpoint(cfg.resume)
        if ck.train_state is None:
            raise ValueError(f"--resume {cfg.resume}: holds no training state (optimiser, step); fix: start a new "
                             f"run with --init-from {cfg.resume}")
        saved = ck.config or {}
        for key, now in (("world_size", world), ("train_samples", len(train_ds))):
            was = ck.train_state.get(key, now)
            if was != now:
                raise ValueError(f"--resume {cfg.resume}: the run had {key.replace('_', ' ')} {was}, now {now}: the "
                                 f"sampler position would point at other samples; fix: resume with the same "
                                 f"processes and data (and --skip-bad setting), or start anew with --init-from")
        for key in ("model", "batch_size", "dataset", "train_split", "seed"):
            if key in saved and saved[key] != getattr(cfg, key):
                raise ValueError(f"--resume {cfg.resume}: trained with {key}={saved[key]!r}, not "
                                 f"{getattr(cfg, key)!r}; fix: resume with the same --{key.replace('_', '-')} "
                                 f"(or start a new run with --init-from)")
        if has_batch_norm(model):  # runs from before --batch-norm re-estimated the statistics
            was = batch_norm_mode(dataclasses.replace(cfg, batch_norm=saved.get("batch_norm", "train"),
                                                      model_args=saved.get("model_args", cfg.model_args),
                                                      init_from=saved.get("init_from", cfg.init_from)))
            if was != batch_norm_mode(cfg):
                raise ValueError(f"--resume {cfg.resume}: the run trained with batch norm {was}, this one would be "
                                 f"{batch_norm_mode(cfg)}; fix: resume with --batch-norm {was}")
        model.load_state_dict(ck.train_state.get("raw_model", ck.state_dict))
        if ema is not None:
            if "ema" not in ck.train_state:
                raise ValueError(f"--resume {cfg.resume}: the run had no --ema-decay; fix: resume without it")
            ema.load_state_dict(ck.train_state["ema"])
        optimizer.load_state_dict(ck.train_state["optimizer"])
        scheduler.load_state_dict(ck.train_state["scheduler"])
        step, epoch, start = ck.train_state["step"], ck.train_state["epoch"], ck.train_state["sampler_pos"]
        best = ck.train_state.get("best_miou", -math.inf)
        last_metrics = ck.metrics
        _set_rng_state(ck.train_state["rng"])
        log.info("resumed from %s at step %d (epoch %d, sample %d)", cfg.resume, step, epoch, start)

    def start_folder() -> None:
        _check_disk_space(out, model, cfg)
        _start_run_folder(cfg, out)
        if cfg.resume:
            _truncate_log(out / "log.jsonl", step)
        config_text = (json.dumps(cfg.to_dict(), indent=2) + "\n").encode()
        atomic_write(out / "config.json", lambda f: f.write(config_text))

    on_main(start_folder)

    crop = cfg.crop_size or None
    tf = fdata.train_transforms(crop, scale_range=(cfg.scale_min, cfg.scale_max), hflip=cfg.hflip,
                                color_jitter=cfg.color_jitter, ignore_index=ignore)
    decoded = _maybe_cached(train_ds, cfg.cache, progress and main)
    samples = SeededTransforms(decoded, tf, cfg.seed)
    sampler = EpochSampler(ShardedSampler(len(samples), shuffle=True, seed=cfg.seed, pad=True))
    # One loader for the whole run: its workers start once, not every epoch (persistent_workers).
    loader = DataLoader(samples, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.workers,
                        collate_fn=functools.partial(fdata.pad_collate, ignore_index=ignore),
                        pin_memory=device.type == "cuda", drop_last=False, persistent_workers=cfg.workers > 0,
                        worker_init_fn=_ignore_stop_signals,
                        # Its own generator: a loader iterator draws a seed, which must not come from the global
                        # RNG (dropout's), or a resumed run would diverge from the straight one.
                        generator=torch.Generator().manual_seed(cfg.seed))
    val_loader = DataLoader(val_ds, batch_size=1, sampler=ShardedSampler(len(val_ds), shuffle=False, pad=False),
                            num_workers=cfg.workers, collate_fn=fdata.pad_collate, persistent_workers=cfg.workers > 0,
                            worker_init_fn=_ignore_stop_signals, generator=torch.Generator().manual_seed(cfg.seed))
    amp = resolve_precision(cfg.precision, device) == "bf16"
    weights = _class_weights(train_ds, cfg.class_weights, progress and main, decoded)
    if weights is not None:
        weights = weights.to(device)
    writer = _tensorboard(out) if main else None
    epoch_start_step = step
    best_path, last_path = out / "best.pt", out / "last.pt"
    last = cfg.stop_at or cfg.max_steps
    bar = Progress(last, "train", "step", enabled=progress and main, initial=step)
    stop = _StopRequest()

    evaluated: nn.Module = model if ema is None else ema.module  # validated and saved as the model

    def checkpoint(s: int, pos: int) -> Checkpoint:
        state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": s,
                 "epoch": epoch, "sampler_pos": pos, "rng": _rng_state(), "best_miou": best,
                 "world_size": world, "train_samples": len(train_ds)}
        if ema is not None:  # the file's weights are the average; the raw ones resume training
            state.update(raw_model=model.state_dict(), ema=ema.state_dict())
        return Checkpoint(
            model_name=cfg.model, model_args=model_args, state_dict=evaluated.state_dict(), classes=list(classes),
            palette=list(palette), normalization=norm, ignore_index=ignore, config=cfg.to_dict(),
            metrics=last_metrics, extra=task_extra(base.tasks), train_state=state,
        )

    reached = {"step": step, "pos": start}  # the last finished step, for a stop that comes between steps

    def on_step(s: int, loss: float, ips: float) -> None:
        nonlocal best, last_metrics
        pos = start + (s - epoch_start_step) * cfg.batch_size
        reached.update(step=s, pos=pos)
        if ema is not None:
            ema.update_parameters(model)
        if main and (s % cfg.log_every == 0 or s == cfg.max_steps):
            lr = optimizer.param_groups[0]["lr"]
            _log(out, writer, {"step": s, "loss": loss, "lr": lr, "images_per_s": ips * world,
                               "wall_s": round(time.monotonic() - t_start, 3)})
        if s % cfg.val_every == 0 or s in (cfg.max_steps, cfg.stop_at):
            with collective(f"validating at step {s}"):
                cm = evaluate(evaluated, val_loader, num_classes=len(classes), norm=norm, device=device,
                              ignore_index=ignore, amp=amp, progress=False)
            m = cm.compute()
            set_train_mode(model)
            if main:
                last_metrics = {"step": s, **m.to_dict()}
                _log(out, writer, {"step": s, "val_pixel_acc": m.pixel_acc, "val_mean_acc": m.mean_acc,
                                   "val_mean_iu": m.mean_iu, "val_fw_iu": m.fw_iu,
                                   **{f"val_{t}_{k}": getattr(tm, k) for t, tm in m.tasks.items()
                                      for k in ("pixel_acc", "mean_acc", "mean_iu", "fw_iu")}})
                improved = m.mean_iu > best
                best = max(best, m.mean_iu)
                bar.write(_metrics_line(s, last, m, best))
                ck = checkpoint(s, pos)
                # best.pt first: a kill between the two writes leaves last.pt at the previous validation, so
                # the resumed run validates this step again and rewrites best.pt the same way.
                if improved:
                    save_checkpoint(ck, best_path)
                save_checkpoint(ck, last_path)
        if any_rank(stop.signum is not None) and s < last:
            name = signal.Signals(stop.signum).name if stop.signum else "a stop request to another rank"
            if main:
                save_checkpoint(checkpoint(s, pos), last_path)
            raise TrainingInterrupted(s, last_path, name)

    stop.install()
    t_start = time.monotonic()  # wall_s in log.jsonl: seconds since this run (or resume) began stepping
    try:
        with collective("training"):
            while step < last:
                sampler.set_epoch(epoch, start)
                epoch_start_step = step
                step = train_one_epoch(step_model, loader, optimizer, scheduler, norm=norm, device=device,
                                       loss_reduction=cfg.loss, ignore_index=ignore, amp=amp, max_steps=last,
                                       step=step, on_step=on_step, progress=bar, channels_last=cfg.channels_last,
                                       class_weights=weights)
                epoch, start = epoch + 1, 0  # the loader ended (or max_steps was reached and the loop ends)
                reached["pos"] = 0  # nothing of the new epoch is consumed yet
    except RuntimeError as e:
        if stop.signum is None or isinstance(e, DistributedError):
            raise
        # A SIGTERM to the whole process group also ended the loader workers: stop as asked, with the step reached.
        if main:
            save_checkpoint(checkpoint(reached["step"], reached["pos"]), last_path)
        raise TrainingInterrupted(reached["step"], last_path, signal.Signals(stop.signum).name) from None
    finally:
        stop.restore()
        bar.close()
        if writer is not None:
            writer.close()
    skipped = train_ds.skipped + (val_ds.skipped if isinstance(val_ds, fdata.SegmentationDataset) else 0)
    if skipped and main:
        log.warning("skipped %d sample loads that failed (--skip-bad; counted on this process, every epoch)",
                    skipped)
    return best_path


def make_ema(model: nn.Module, decay: float) -> torch.optim.swa_utils.AveragedModel:
    """Exponential moving average of ``model``'s weights and batch-norm statistics.

    The decay ramps up as ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so that a short run's
    average is not dominated by the initial weights.
    """
    def average(avg: torch.Tensor, new: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        d = min(decay, (1 + int(n)) / (10 + int(n)))
        return avg * d + new * (1 - d)

    return torch.optim.swa_utils.AveragedModel(model, avg_fn=average, use_buffers=True)


def _class_weights(ds: fdata.SegmentationDataset, mode: str, progress: bool,
                   decoded: Dataset | None = None) -> torch.Tensor | None:
    """Median-frequency class weights over the training masks (``--class-weights median_freq``), or None.

    The masks come from ``decoded`` when it is the decoded-image cache of ``ds`` (no second decoding pass).
    """
    if mode == "none":
        return None
    if ds.tasks:
        raise ValueError(f"--class-weights {mode} is for single-task datasets; {ds} has tasks "
                         f"{', '.join(ds.tasks)}; fix: --class-weights none")
    from .data.cache import DecodedCache
    from .losses import class_frequencies, median_frequency_weights

    def masks() -> Iterator[torch.Tensor]:
        if isinstance(decoded, DecodedCache) and decoded.dataset is ds:
            yield from (item[1].as_subclass(torch.Tensor) for item in decoded.items if item is not None)
            return
        with Progress(len(ds), "class weights", "mask", enabled=progress) as bar:
            for _, mask_path in ds.samples:
                yield torch.from_numpy(ds.load_mask(mask_path))
                bar.update(1)

    weights = median_frequency_weights(*class_frequencies(masks(), ds.num_classes, ds.ignore_index))
    log.info("class weights (median frequency): %s",
             ", ".join(f"{c} {w:.3f}" for c, w in zip(ds.classes, weights.tolist(), strict=True)))
    return weights


def _maybe_cached(ds: fdata.SegmentationDataset, mode: str, progress: bool) -> Dataset:
    """``ds`` decoded into memory (:class:`~fcnseg.data.cache.DecodedCache`) when ``--cache`` says so."""
    from .data.cache import DecodedCache, cache_decision

    use, why = cache_decision(ds, mode)
    if not use:
        log.info("not caching decoded images (%s)", why)
        return ds
    cached = DecodedCache(ds, progress=progress)
    log.info("cached %d decoded samples in memory, %.0f MiB (%s)", len(cached), cached.nbytes / 2**20, why)
    return cached


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
        f.flush()
    if writer is not None:
        for k, v in record.items():
            if k != "step":
                writer.add_scalar(k, v, record["step"])
        writer.flush()
