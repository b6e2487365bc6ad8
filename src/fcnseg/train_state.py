"""The state of a training run as one object: what a checkpoint saves and a resumed run loads.

:class:`TrainState` holds everything that changes as a run trains (weights, optimiser, scheduler, the weights'
moving average, step, epoch, sampler position, best score, random generators) and nothing else; the wiring
that stays fixed (loaders, folders, device) lives in :class:`fcnseg.train.Run`. Its ``state_dict()`` is the
``train_state`` entry of a checkpoint, so a state saved and loaded continues bit for bit (nanoGPT's and
torchvision's checkpoints hold the same parts as loose dictionary keys).
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from .config import TrainConfig

__all__ = ["TrainState", "make_ema", "make_optimizer", "make_scheduler", "new_state", "param_groups",
           "rng_state", "set_rng_state"]


def param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """Weights at ``lr`` with decay; biases and norm parameters at ``lr * bias_lr_mult`` (2 in the paper); the
    encoder's (``model.encoder``) of each kind at ``encoder_lr_mult`` times that (an unresolved -1, auto, counts
    as 1). Empty groups are left out; the first is the head's weights where there are any (the log reports its
    rate)."""
    mult = cfg.encoder_lr_mult if cfg.encoder_lr_mult >= 0 else 1.0  # -1: auto, which only build_model resolves
    encoder = {id(p) for p in getattr(model, "encoder", nn.Module()).parameters()}
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {(e, b): [] for e in (False, True) for b in (False, True)}
    for p in model.parameters():
        if p.requires_grad:
            groups[(id(p) in encoder and mult != 1.0, p.ndim <= 1)].append(p)
    out = []
    for (in_encoder, bias), params in groups.items():
        if params:
            lr = cfg.lr * (cfg.bias_lr_mult if bias else 1.0) * (mult if in_encoder else 1.0)
            out.append({"params": params, "lr": lr,
                        "weight_decay": cfg.weight_decay if cfg.bias_decay or not bias else 0.0})
    return out


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD with momentum (the paper, section 4.1) or AdamW over :func:`param_groups`."""
    groups = param_groups(model, cfg)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)


def make_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup_steps``, then constant (the paper) or poly decay to ``max_steps``."""
    def factor(step: int) -> float:
        warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps > 0 else 1.0
        if cfg.schedule == "poly":
            return warm * max(0.0, 1 - step / cfg.max_steps) ** cfg.poly_power
        return warm

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def make_ema(model: nn.Module, decay: float) -> AveragedModel:
    """Exponential moving average of ``model``'s weights and batch-norm statistics.

    The decay ramps up as ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so that a short run's
    average is not dominated by the initial weights. The decay is computed on the device (in float64, then
    rounded as a Python float would be), not read to the host once per tensor.
    """
    def average(avg: torch.Tensor, new: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        n64 = n.double()
        d = torch.clamp((1 + n64) / (10 + n64), max=decay)
        return avg * d.float() + new * (1 - d).float()

    return AveragedModel(model, avg_fn=average, use_buffers=True)


def rng_state() -> dict[str, Any]:
    """The global random generators' states (torch CPU, Python, every CUDA device): dropout draws from them."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclasses.dataclass(eq=False)
class TrainState:
    """Everything a run changes as it trains; ``state_dict()`` / ``load_state_dict()`` save and restore it.

    ``model`` is the plain module (not wrapped by DDP, not compiled): its parameters are the optimiser's.
    ``metrics`` (the last validation's) travels as the checkpoint's own ``metrics`` entry, not in
    ``state_dict()``.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    ema: AveragedModel | None = None
    step: int = 0  # optimiser steps taken
    epoch: int = 0  # the epoch the next batch comes from (its permutation: ShardedSampler seed + epoch)
    sampler_pos: int = 0  # samples of that epoch this process has consumed: where a resumed run starts
    best_miou: float = -math.inf  # the best validation mean IU so far (rank 0); best.pt holds its weights
    metrics: dict[str, Any] | None = None

    @property
    def evaluated(self) -> nn.Module:
        """The model that is validated and saved as the checkpoint's weights: the average when there is one."""
        return self.model if self.ema is None else self.ema.module

    def advance(self, batch_size: int) -> None:
        """Count one optimiser step that consumed ``batch_size`` samples, and average the new weights in."""
        self.step += 1
        self.sampler_pos += batch_size
        if self.ema is not None:
            self.ema.update_parameters(self.model)

    def next_epoch(self) -> None:
        """The loader ran out: the next batch comes from the next epoch's permutation, from its start."""
        self.epoch, self.sampler_pos = self.epoch + 1, 0

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint's ``train_state``: ``raw_model``, ``optimizer``, ``scheduler``, ``step``, ``epoch``,
        ``sampler_pos``, ``rng`` (the generators now), ``best_miou``, and ``ema`` when there is an average.

        Tensors are the live ones (not copies), as ``nn.Module.state_dict()`` returns them.
        """
        state = {"raw_model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "step": self.step, "epoch": self.epoch,
                 "sampler_pos": self.sampler_pos, "rng": rng_state(), "best_miou": self.best_miou}
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict` (also the random generators). An average in ``state`` that this
        state does not keep is ignored; the reverse is the caller's to refuse (:func:`fcnseg.train.resume`)."""
        self.model.load_state_dict(state["raw_model"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.epoch, self.sampler_pos = state["step"], state["epoch"], state["sampler_pos"]
        self.best_miou = state.get("best_miou", -math.inf)
        set_rng_state(state["rng"])


def new_state(model: nn.Module, cfg: TrainConfig) -> TrainState:
    """A run's state at step 0: ``cfg``'s optimiser and schedule over ``model``, and its average if asked."""
    optimizer = make_optimizer(model, cfg)
    return TrainState(model, optimizer, make_scheduler(optimizer, cfg),
                      make_ema(model, cfg.ema_decay) if cfg.ema_decay else None)
