"""``fcnseg train``: build a run, resume it, loop (``run_train`` reads in that order).

``run_train`` wires the phases: checked data, the model (:func:`build_model`), its
:class:`~fcnseg.train_state.TrainState` (optimiser, schedule, average, step, sampler position, best score,
random generators), :func:`resume`, the run folder, the :class:`Run` (loaders, logs), and
:func:`train_loop`, where one step reads top to bottom: step, log, validate and save, stop check.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
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
from .distributed import ShardedSampler, any_rank, collective, init_distributed, is_main, on_main
from .engine import LossSampling, TrainMeter, evaluate, set_train_mode, train_step
from .errors import (
    CheckpointError,
    ConfigError,
    DataError,
    DistributedError,
    OutputError,
    TrainingDiverged,
    TrainingInterrupted,
)
from .models import build, is_multitask, task_heads
from .models.batchnorm import freeze_batch_norm, frozen_batch_norms, has_batch_norm
from .normalization import Normalization, get_normalization
from .outputs import atomic_write, check_output_dir, free_bytes, remove_stale_temp_files
from .precision import resolve_precision
from .progress import Progress
from .train_state import TrainState, make_ema, make_optimizer, make_scheduler, new_state, param_groups

__all__ = ["FROZEN_BN_CLIP_GRAD_NORM", "FROZEN_BN_ENCODER_LR_MULT", "FROZEN_BN_WARMUP", "Run", "TrainState",
           "TrainingDiverged", "TrainingInterrupted", "batch_norm_mode", "build_model", "check_resume", "make_ema",
           "make_optimizer", "make_run", "make_scheduler", "param_groups", "resume", "run_train", "train_loop"]

log = logging.getLogger("fcnseg.train")


def run_train(cfg: TrainConfig, *, progress: bool = True, dry_run: bool = False) -> Path:
    """Train as ``cfg`` says; returns the path of the best checkpoint (by validation mean IU).

    Before any step, deletion or output, the run folder is checked and the data validated; SIGINT/SIGTERM
    save ``last.pt`` at the current step and raise :class:`TrainingInterrupted`; a NaN or infinite loss
    raises :class:`TrainingDiverged` before any checkpoint holds its weights. ``dry_run`` stops after those
    checks and the model's construction, having written nothing.
    """
    _, world, device = init_distributed(cfg.device, cfg.dist_timeout)
    torch.manual_seed(cfg.seed)  # the model's initial weights, then dropout's draws
    random.seed(cfg.seed)
    train_ds, val_ds = _checked_datasets(cfg, progress and is_main())
    model, norm, cfg = build_model(cfg, train_ds, device)
    state = new_state(model, cfg)
    out = Path(cfg.out_dir)
    if dry_run:
        on_main(lambda: _check_disk_space(out, model, cfg))  # free_bytes looks up the first existing parent
        log.info("dry run: %d training and %d validation samples checked, %s can be written; nothing written",
                 len(train_ds), len(val_ds), out)
        return out / "best.pt"
    if cfg.resume:
        resume(state, cfg, world=world, train_samples=len(train_ds))
    on_main(lambda: _prepare_run_folder(cfg, model, state.step))
    run = make_run(cfg, state, train_ds, val_ds, norm=norm, device=device, world=world, progress=progress)
    stop = _StopRequest()
    stop.install()
    try:
        with collective("training"):
            train_loop(run, state, stop)
    except RuntimeError as e:
        if stop.signum is None or isinstance(e, DistributedError):
            raise
        # A SIGTERM to the whole process group also ended the loader workers: stop as asked, at the step reached.
        raise _interrupted(run, state, stop) from None
    finally:
        stop.restore()
        run.close()
    _report_skipped(train_ds, val_ds)
    return run.best_path


def build_model(cfg: TrainConfig, ds: fdata.SegmentationDataset, device: torch.device
                ) -> tuple[nn.Module, Normalization, TrainConfig]:
    """The model ``cfg`` names for ``ds``'s classes, on ``device``: weights from ``init_from``, the encoder
    frozen (``freeze_encoder``), batch norm frozen or trained (:func:`batch_norm_mode`). Returns it, the input
    normalisation it expects, and ``cfg`` with the automatic warm-up (``warmup_steps=-1``), encoder
    learning-rate factor (``encoder_lr_mult=-1``) and gradient clipping (``clip_grad_norm=-1``) resolved."""
    norm = get_normalization(cfg.normalization or default_normalization(cfg.model, cfg.model_args))
    model = build(cfg.model, **_model_args(cfg, ds))
    _check_tasks(model, ds, cfg)
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
                 "convolutions; batch_norm=train re-estimates them", frozen, folded)
    if cfg.warmup_steps < 0:  # auto: frozen BN at lr 0.01 diverged without one (RESULTS.md, abl_frozenbn)
        cfg = dataclasses.replace(cfg, warmup_steps=FROZEN_BN_WARMUP if frozen_bn else 0)
    if cfg.encoder_lr_mult < 0:  # auto: frozen BN's unnormalised encoder diverged at the head's rate (issue 19)
        cfg = dataclasses.replace(cfg, encoder_lr_mult=FROZEN_BN_ENCODER_LR_MULT if frozen_bn else 1.0)
    if cfg.clip_grad_norm < 0:  # auto: and its gradient spikes compound without a bound on the step
        cfg = dataclasses.replace(cfg, clip_grad_norm=FROZEN_BN_CLIP_GRAD_NORM if frozen_bn else 0.0)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    return model, norm, cfg


def resume(state: TrainState, cfg: TrainConfig, *, world: int, train_samples: int) -> None:
    """Load the checkpoint ``cfg.resume`` into ``state`` (weights, optimiser, schedule, average, step,
    sampler position, best score, random generators), after :func:`check_resume` has found that it
    continues this very run."""
    ck = load_checkpoint(cfg.resume)
    check_resume(ck, cfg, state, world=world, train_samples=train_samples)
    assert ck.train_state is not None
    state.load_state_dict({"raw_model": ck.state_dict, **ck.train_state})  # raw_model: saved with an average
    state.metrics = ck.metrics
    log.info("resumed from %s at step %d (epoch %d, sample %d)", cfg.resume, state.step, state.epoch,
             state.sampler_pos)


def check_resume(ck: Checkpoint, cfg: TrainConfig, state: TrainState, *, world: int, train_samples: int) -> None:
    """Refuse, in one line, a checkpoint that would not continue the same run: no training state; another
    number of processes or samples (the sampler position would point elsewhere); another model, batch size,
    data or seed; another batch-norm mode; no average when ``ema_decay`` asks for one."""
    path = cfg.resume
    if ck.train_state is None:
        raise CheckpointError(f"{path}: holds no training state (optimiser, step)", path=path,
                              fix=f"start a new run with {{init_from}} {path}")
    saved = ck.config or {}
    for key, now in (("world_size", world), ("train_samples", train_samples)):
        was = ck.train_state.get(key, now)
        if was != now:
            raise ConfigError(f"{path}: the run had {key.replace('_', ' ')} {was}, now {now}: the sampler "
                              f"position would point at other samples", path=path,
                              fix="resume with the same processes and data (and {skip_bad} setting), or start "
                                  "anew with {init_from}")
    if saved.get("loss_sampling", 1.0) != cfg.loss_sampling:  # the cells' draws would change
        raise ConfigError(f"{path}: trained with loss_sampling={saved.get('loss_sampling', 1.0)!r}, not "
                          f"{cfg.loss_sampling!r}", path=path,
                          fix="resume with the same {loss_sampling} (or start a new run with {init_from})")
    for key in ("model", "batch_size", "dataset", "train_split", "seed"):
        if key in saved and saved[key] != getattr(cfg, key):
            raise ConfigError(f"{path}: trained with {key}={saved[key]!r}, not {getattr(cfg, key)!r}", path=path,
                              fix=f"resume with the same {{{key}}} (or start a new run with {{init_from}})")
    if has_batch_norm(state.model):  # runs from before batch_norm existed re-estimated the statistics
        was = batch_norm_mode(dataclasses.replace(cfg, batch_norm=saved.get("batch_norm", "train"),
                                                  model_args=saved.get("model_args", cfg.model_args),
                                                  init_from=saved.get("init_from", cfg.init_from)))
        if was != batch_norm_mode(cfg):
            raise ConfigError(f"{path}: the run trained with batch norm {was}, this one would be "
                              f"{batch_norm_mode(cfg)}", path=path, fix=f"resume with {{batch_norm}} {was}")
    if state.ema is not None and "ema" not in ck.train_state:
        raise ConfigError(f"{path}: the run kept no moving average of its weights", path=path,
                          fix="resume without {ema_decay}")
    groups = len(ck.train_state.get("optimizer", {}).get("param_groups", state.optimizer.param_groups))
    if groups != len(state.optimizer.param_groups):  # the encoder's own rate makes groups of its own
        was = saved.get("encoder_lr_mult", 1.0)
        raise ConfigError(f"{path}: the run's optimiser had {groups} parameter groups, this one would have "
                          f"{len(state.optimizer.param_groups)} (encoder lr factor {was:g} then, "
                          f"{cfg.encoder_lr_mult:g} now)", path=path,
                          fix=f"resume with {{encoder_lr_mult}} {was:g} (and the run's {{clip_grad_norm}})")


@dataclasses.dataclass(eq=False)
class Run:
    """The wiring of one run, fixed while it trains: loaders, the model that takes the steps, where records
    go. What changes as it trains is the :class:`~fcnseg.train_state.TrainState`."""

    cfg: TrainConfig
    device: torch.device
    world: int  # processes (torchrun); each takes batch_size samples a step
    main: bool  # rank 0: logs and saves
    out: Path
    step_model: nn.Module  # the state's model as it steps: DDP-wrapped and/or compiled (the same parameters)
    sampler: EpochSampler
    loader: DataLoader
    val_loader: DataLoader
    norm: Normalization
    step_options: dict[str, Any]  # train_step's keywords: loss_reduction, ignore_index, amp, channels_last, ...
    template: Checkpoint  # the checkpoint's description of the model and data, without weights or state
    train_samples: int
    writer: Any  # a TensorBoard SummaryWriter on rank 0, else None
    bar: Progress
    meter: TrainMeter
    present_only: bool = False  # the validation set's scoring rule (SIFT Flow's: absent classes left out)

    @property
    def last(self) -> int:
        """The step this invocation stops at: ``stop_at`` (a run to be resumed later) or ``max_steps``."""
        return self.cfg.stop_at or self.cfg.max_steps

    @property
    def best_path(self) -> Path:
        return self.out / "best.pt"

    @property
    def last_path(self) -> Path:
        return self.out / "last.pt"

    def close(self) -> None:
        self.bar.close()
        if self.writer is not None:
            self.writer.close()


def make_run(cfg: TrainConfig, state: TrainState, train_ds: fdata.SegmentationDataset, val_ds: Dataset, *,
             norm: Normalization, device: torch.device, world: int, progress: bool) -> Run:
    """The loaders, the stepping model (DDP, ``compile``), class weights, TensorBoard and progress of a run
    whose folder exists; ``state`` is where it starts (step, for the progress bar)."""
    main = is_main()
    step_model: nn.Module = state.model
    if world > 1:
        step_model = nn.parallel.DistributedDataParallel(
            step_model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:  # the compiled module shares the parameters; validation and checkpoints use the plain one
        step_model = torch.compile(step_model)  # type: ignore[assignment]
    sampler, loader, val_loader, decoded = _loaders(cfg, train_ds, val_ds, device, progress and main)
    weights = _class_weights(train_ds, cfg.class_weights, progress and main, decoded)
    options = dict(loss_reduction=cfg.loss, ignore_index=train_ds.ignore_index, channels_last=cfg.channels_last,
                   amp=resolve_precision(cfg.precision, device) == "bf16",
                   class_weights=None if weights is None else weights.to(device), clip_grad_norm=cfg.clip_grad_norm,
                   loss_sampling=None if cfg.loss_sampling == 1 else
                   LossSampling.for_model(state.model, cfg.loss_sampling, cfg.seed,
                                          rank=torch.distributed.get_rank() if world > 1 else 0))
    template = Checkpoint(model_name=cfg.model, model_args=_model_args(cfg, train_ds), state_dict={},
                          classes=list(train_ds.classes), palette=list(train_ds.palette), normalization=norm,
                          ignore_index=train_ds.ignore_index, config=cfg.to_dict(), extra=task_extra(train_ds.tasks))
    out = Path(cfg.out_dir)
    return Run(cfg, device, world, main, out, step_model, sampler, loader, val_loader, norm, options, template,
               len(train_ds), _tensorboard(out) if main else None,
               Progress(cfg.stop_at or cfg.max_steps, "train", "step", enabled=progress and main, initial=state.step),
               _meter(cfg, state.model, device), present_only=_present_only(val_ds))


def train_loop(run: Run, state: TrainState, stop: _StopRequest) -> None:
    """Train ``state`` to step ``run.last``. After each optimiser step, in this order: the log record (every
    ``log_every`` steps), validation and checkpoints (every ``val_every`` steps and at the end), the stop
    check (SIGINT/SIGTERM on any process). The device is waited for at logged steps only.

    Raises :class:`TrainingDiverged` (a NaN/Inf loss, found before any checkpoint holds its weights) and
    :class:`TrainingInterrupted` (a signal; ``last.pt`` then holds the step reached).
    """
    cfg = run.cfg
    set_train_mode(run.step_model)
    while state.step < run.last:
        run.sampler.set_epoch(state.epoch, state.sampler_pos)  # a resumed run starts mid-epoch
        for images, masks in run.loader:
            if images.shape[0] == 0:
                continue  # every sample of the batch was bad and skipped (skip_bad): no step
            # step
            loss = train_step(run.step_model, images, masks, state.optimizer, state.scheduler, norm=run.norm,
                              device=run.device, step=state.step, **run.step_options)
            state.advance(cfg.batch_size)
            run.meter.add(loss, state.step, images.shape[0])
            run.bar.update(1)
            # log
            if state.step % cfg.log_every == 0 or state.step == cfg.max_steps:
                _log_step(run, state)
            # validate and save
            if state.step % cfg.val_every == 0 or state.step in (cfg.max_steps, cfg.stop_at):
                run.meter.check()  # no checkpoint may hold the weights of a diverged run
                _validate_and_save(run, state)
            # stop: asked to (a signal to any process), or done
            if any_rank(stop.signum is not None) and state.step < run.last:
                raise _interrupted(run, state, stop)
            if state.step >= run.last:
                return
        state.next_epoch()


def _log_step(run: Run, state: TrainState) -> None:
    """The step's record in log.jsonl and TensorBoard (rank 0): the mean loss since the last record."""
    loss, ips = run.meter.read()  # the one host sync of a logged step; raises TrainingDiverged
    run.bar.update(0, loss=f"{loss:.4g}", img_s=f"{ips:.2f}")
    if run.main:
        _log(run.out, run.writer, {"step": state.step, "loss": loss, "lr": state.optimizer.param_groups[0]["lr"],
                                   "images_per_s": ips * run.world,
                                   "wall_s": round(time.monotonic() - run.meter.started, 3)})


def _validate_and_save(run: Run, state: TrainState) -> None:
    """Validate the evaluated model (each process its shard, matrices summed); on rank 0 record the metrics,
    write ``best.pt`` when the mean IU improved, then ``last.pt``."""
    s = state.step
    with collective(f"validating at step {s}"):
        cm = evaluate(state.evaluated, run.val_loader, num_classes=len(run.template.classes), norm=run.norm,
                      device=run.device, ignore_index=run.template.ignore_index, amp=run.step_options["amp"],
                      progress=False)
    m = cm.compute(present_only=run.present_only)
    set_train_mode(state.model)
    if not run.main:
        return
    state.metrics = {"step": s, **m.to_dict()}
    _log(run.out, run.writer, {"step": s, "val_pixel_acc": m.pixel_acc, "val_mean_acc": m.mean_acc,
                               "val_mean_iu": m.mean_iu, "val_fw_iu": m.fw_iu,
                               **{f"val_{t}_{k}": getattr(tm, k) for t, tm in m.tasks.items()
                                  for k in ("pixel_acc", "mean_acc", "mean_iu", "fw_iu")}})
    improved = m.mean_iu > state.best_miou
    state.best_miou = max(state.best_miou, m.mean_iu)
    run.bar.write(_metrics_line(s, run.last, m, state.best_miou))
    ck = _checkpoint(run, state)
    # best.pt first: a kill between the two writes leaves last.pt at the previous validation, so the resumed
    # run validates this step again and rewrites best.pt the same way.
    if improved:
        save_checkpoint(ck, run.best_path)
    save_checkpoint(ck, run.last_path)


def _checkpoint(run: Run, state: TrainState) -> Checkpoint:
    """The run's checkpoint now: the evaluated weights, the last metrics and the state to resume from."""
    train_state = {**state.state_dict(), "world_size": run.world, "train_samples": run.train_samples}
    if state.ema is None:
        del train_state["raw_model"]  # the file's weights are the model's: not twice
    return dataclasses.replace(run.template, state_dict=state.evaluated.state_dict(), metrics=state.metrics,
                               train_state=train_state)


def _interrupted(run: Run, state: TrainState, stop: _StopRequest) -> TrainingInterrupted:
    """Save ``last.pt`` at the step reached (rank 0) and return the error that says how to resume."""
    name = signal.Signals(stop.signum).name if stop.signum else "a stop request to another rank"
    run.meter.check()  # a diverged run's weights are not saved, interrupted or not
    if run.main:
        save_checkpoint(_checkpoint(run, state), run.last_path)
    return TrainingInterrupted(state.step, run.last_path, name)


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

FROZEN_BN_ENCODER_LR_MULT = 0.1
"""The encoder's learning-rate factor of ``encoder_lr_mult=-1`` (auto) when batch norm is frozen: with its
statistics fixed, nothing renormalises the encoder's activations, so an update that grows one layer's output
grows every later one's, and at the head's rate the loss blew up within 60 steps on SIFT Flow and a second
dataset (``benchmarks/frozen_bn.py``, benchmarks/RESULTS.md, issue 19)."""

FROZEN_BN_CLIP_GRAD_NORM = 5.0
"""The gradient-norm bound of ``clip_grad_norm=-1`` (auto) when batch norm is frozen: the encoder at a tenth of
the rate still saw the gradient norm jump from ~10 to ~60 and the loss with it on small batches (CamVid, 4 crops
of 128); bounded, the same runs train smoothly (benchmarks/RESULTS.md, issue 19)."""


def batch_norm_mode(cfg: TrainConfig) -> str:
    """``"frozen"`` or ``"train"``: ``cfg.batch_norm``, where ``auto`` is frozen when the weights start trained.

    Trained weights (``pretrained``, ``init_from``) carry batch-norm statistics worth keeping. Re-estimating
    them on batches of 8 crops costs a quarter of a CPU step and, on CamVid, 8 points of val mean IU at a
    200-step budget (benchmarks/RESULTS.md). Random weights need them estimated.
    """
    if cfg.batch_norm != "auto":
        return cfg.batch_norm
    trained = bool(cfg.model_args.get("pretrained")) or bool(cfg.init_from)
    return "frozen" if trained else "train"


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
    multitask = is_multitask(cfg.model)
    train_ds = fdata.build_dataset(cfg.dataset, root, cfg.train_split,
                                   **fdata.task_args(cfg.dataset, cfg.dataset_args, multitask))
    val_kind, val_root, val_args = cfg.resolved_val()
    val_ds = fdata.build_dataset(val_kind, val_root, cfg.val_split, **fdata.task_args(val_kind, val_args, multitask))
    if val_ds.classes != train_ds.classes:
        raise DataError(f"validation set {val_root} ({val_kind}) has classes {val_ds.classes}; the training set "
                        f"{root} has {train_ds.classes}: they must be the same, in the same order", path=val_root,
                        fix="choose a validation set ({val_dataset}, {val_data_root}) with the training set's classes")
    for ds in (train_ds, val_ds):
        ds.max_pixels = cfg.max_pixels
    return train_ds, val_ds


DIVERGED_MEAN_LOSS = 100.0
"""A pixel-averaged cross-entropy above this is a blow-up (it starts near ln K, 3.5 for 33 classes), stopped
as a divergence rather than trained on until it is NaN."""


def _meter(cfg: TrainConfig, model: nn.Module, device: torch.device) -> TrainMeter:
    """The run's loss meter, whose divergence error names the likely cause and the flag for this run."""
    limit = DIVERGED_MEAN_LOSS if cfg.loss == "mean" else float("inf")
    if frozen_batch_norms(model)[0]:
        cause = (f" (likely cause: batch norm is frozen, so nothing renormalises the encoder's activations, and its "
                 f"updates compound at encoder lr {cfg.lr * cfg.encoder_lr_mult:g})")
        fix = (f"lower {{encoder_lr_mult}} (now {cfg.encoder_lr_mult:g}) or {{lr}}, bound {{clip_grad_norm}} (now "
               f"{cfg.clip_grad_norm:g}), or re-estimate batch norm with {{batch_norm}} train, and start again")
        return TrainMeter(device, limit=limit, cause=cause, fix=fix)
    return TrainMeter(device, limit=limit, fix="lower {lr} (or lengthen {warmup_steps}) and start again")


def _present_only(ds: Dataset) -> bool:
    """The scoring rule of ``ds`` (or of the dataset a ``Subset`` cuts)."""
    return bool(getattr(ds.dataset if isinstance(ds, torch.utils.data.Subset) else ds, "present_only", False))


def _checks_before_work(cfg: TrainConfig, datasets: tuple[fdata.SegmentationDataset, ...], progress: bool
                        ) -> list[list[tuple[Path, Path]]]:
    """Everything that can refuse the run, before any step, deletion or output: the run folder can be
    written, and every sample passes validation (``check_data``; bad ones dropped with ``skip_bad``)."""
    check_output_dir(cfg.out_dir, overwrite=cfg.overwrite, allow_existing=bool(cfg.resume))
    level = cfg.check_data
    if cfg.skip_bad and level in ("headers", "labels"):
        level = "full"  # skip every bad sample now: one failing in the loop would leave a batch empty
    if level != "off":
        for ds in datasets:
            report = ds.validate(level, skip_bad=cfg.skip_bad, progress=progress)
            if report.bad:
                log.warning("%s: skipped %d bad samples of %d (skip_bad)", ds, len(report.bad), report.samples)
    for ds in datasets:
        if len(ds) == 0:
            raise DataError(f"{ds}: empty split", fix="choose another {train_split} or {val_split}")
    return [ds.samples for ds in datasets]


def _start_run_folder(cfg: TrainConfig, out: Path) -> None:
    """Create the run folder; remove temp files of killed runs; with ``overwrite`` (a new run), the old
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
        raise OutputError(f"{out}: {free / 2**20:.0f} MiB free, checkpoints need about {need / 2**20:.0f} MiB",
                          path=out, fix="free disk space or choose another {out_dir}")


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
        raise ConfigError(f"dataset {cfg.dataset} labels {what}; model {cfg.model} has {has}",
                          fix=f"choose {fix} as {{model}}")


def _checked_datasets(cfg: TrainConfig, progress: bool) -> tuple[fdata.SegmentationDataset, Dataset]:
    """The training and validation sets, checked on rank 0 before any work (:func:`_checks_before_work`),
    the validation set cut to ``max_val_images``."""
    train_ds, val_ds = _datasets(cfg)
    train_ds.samples, val_ds.samples = on_main(lambda: _checks_before_work(cfg, (train_ds, val_ds), progress))
    for ds in (train_ds, val_ds):
        ds.skip_bad = cfg.skip_bad
        ds.share_skip_counter()
    if cfg.max_val_images:
        return train_ds, torch.utils.data.Subset(val_ds, range(min(cfg.max_val_images, len(val_ds))))
    return train_ds, val_ds


def _model_args(cfg: TrainConfig, ds: fdata.SegmentationDataset) -> dict[str, Any]:
    return {"num_classes": len(ds.classes), **cfg.model_args}


def _prepare_run_folder(cfg: TrainConfig, model: nn.Module, step: int) -> None:
    """On rank 0, once every check has passed: the disk has room, the folder exists (an ``overwrite``
    run's old files gone), a resumed run's log ends at ``step``, ``config.json`` holds the resolved config."""
    out = Path(cfg.out_dir)
    _check_disk_space(out, model, cfg)
    _start_run_folder(cfg, out)
    if cfg.resume:
        _truncate_log(out / "log.jsonl", step)
    config_text = (json.dumps(cfg.to_dict(), indent=2) + "\n").encode()
    atomic_write(out / "config.json", lambda f: f.write(config_text))


def _loaders(cfg: TrainConfig, train_ds: fdata.SegmentationDataset, val_ds: Dataset, device: torch.device,
             progress: bool) -> tuple[EpochSampler, DataLoader, DataLoader, Dataset]:
    """(sampler, training loader, validation loader, the training set as decoded: cached or not)."""
    ignore = train_ds.ignore_index
    tf = fdata.train_transforms(cfg.crop_size or None, scale_range=(cfg.scale_min, cfg.scale_max), hflip=cfg.hflip,
                                color_jitter=cfg.color_jitter, ignore_index=ignore)
    decoded = _maybe_cached(train_ds, cfg.cache, progress)
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
    return sampler, loader, val_loader, decoded


def _report_skipped(train_ds: fdata.SegmentationDataset, val_ds: Dataset) -> None:
    skipped = train_ds.skipped + (val_ds.skipped if isinstance(val_ds, fdata.SegmentationDataset) else 0)
    if skipped and is_main():
        log.warning("skipped %d sample loads that failed (skip_bad; counted on this process, every epoch)",
                    skipped)


def _class_weights(ds: fdata.SegmentationDataset, mode: str, progress: bool,
                   decoded: Dataset | None = None) -> torch.Tensor | None:
    """Median-frequency class weights over the training masks (``class_weights="median_freq"``), or None.

    The masks come from ``decoded`` when it is the decoded-image cache of ``ds`` (no second decoding pass).
    """
    if mode == "none":
        return None
    if ds.tasks:
        raise ConfigError(f"class weights {mode} are for single-task datasets; {ds} has tasks "
                          f"{', '.join(ds.tasks)}", fix="set {class_weights} to none")
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
    """``ds`` decoded into memory (:class:`~fcnseg.data.cache.DecodedCache`) when ``cache`` says so."""
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
    except ImportError:  # an optional extra: log.jsonl holds every record either way
        log.warning("tensorboard is not installed, logging to log.jsonl only (pip install 'fcnseg[tensorboard]')")
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
