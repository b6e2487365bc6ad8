"""The steps of the loop: ``train_step``, ``train_one_epoch`` and ``evaluate``, plain functions (STYLE.md habit 4)."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .errors import ConfigError, TrainingDiverged
from .losses import sample_cells, segmentation_loss
from .metrics import BoundaryScores, ConfusionMatrix, MultiTaskConfusion
from .models.fcn import head_labels, joined_logits, task_heads
from .normalization import Normalization
from .progress import Progress


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager[None]:
    """bf16 autocast on ``device`` when enabled; a null context otherwise."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def set_train_mode(model: nn.Module) -> None:
    """``model.train()``, except that a frozen encoder (no trainable parameter) stays in eval mode: it keeps
    its batch-norm statistics and has no dropout (the paper's "fixed" variant trains only the head)."""
    model.train()
    inner = getattr(model, "module", model)  # DDP wraps the model
    encoder = getattr(inner, "encoder", None)
    if encoder is not None and not any(p.requires_grad for p in encoder.parameters()):
        encoder.eval()


class TrainMeter:
    """The training loss and throughput since the last read, kept on the device between reads.

    :meth:`add` after each step queues a few tiny device operations and never waits for the device; only
    :meth:`read` (at logged steps) and :meth:`check` (before a checkpoint) copy to the host, once each. The
    first step whose loss was not finite (or above ``limit``: a mean cross-entropy of hundreds is a blow-up) is
    remembered on the device, so a check names it exactly; :class:`~fcnseg.errors.TrainingDiverged` then says
    ``cause`` (the likely one, from the run's settings) and ``fix``.
    """

    def __init__(self, device: torch.device, *, limit: float = math.inf, cause: str = "",
                 fix: str = "lower {lr} (or lengthen {warmup_steps}) and start again"):
        self.limit, self.cause, self.fix = limit, cause, fix  # a loss above limit counts as diverged
        self.total = torch.zeros((), device=device)  # sum of the losses since the last read
        self.first_bad = torch.zeros((), device=device)  # first step with a NaN/Inf loss; 0 = none
        self.bad_loss = torch.zeros((), device=device)  # that step's loss
        self.steps = self.images = 0
        self.since = time.perf_counter()
        self.started = time.monotonic()  # when the run (or its resumption) began stepping: log.jsonl's wall_s

    def add(self, loss: Tensor, step: int, images: int) -> None:
        """Count ``step`` (its number, from 1), which trained on ``images`` images with mean loss ``loss``."""
        loss = loss.detach().float()
        self.total += loss
        bad = (~torch.isfinite(loss) | (loss > self.limit)) & (self.first_bad == 0)  # NaN, Inf, past the limit
        self.first_bad.masked_fill_(bad, step)
        self.bad_loss = torch.where(bad, loss, self.bad_loss)
        self.steps, self.images = self.steps + 1, self.images + images

    def _pull(self) -> float:
        total, first_bad, bad_loss = torch.stack([self.total, self.first_bad, self.bad_loss]).tolist()  # 1 sync
        if first_bad:
            raise TrainingDiverged(f"the training loss is {bad_loss:.4g} at step {int(first_bad)}{self.cause}",
                                   fix=self.fix)
        return total

    def check(self) -> None:
        """Raise :class:`~fcnseg.errors.TrainingDiverged` if any step's loss so far was NaN or infinite."""
        self._pull()

    def read(self) -> tuple[float, float]:
        """(mean loss, images per second) since the last read, then start counting anew; raises like
        :meth:`check`. Images per second are this process's."""
        total, now = self._pull(), time.perf_counter()
        mean, ips = total / max(self.steps, 1), self.images / max(now - self.since, 1e-9)
        self.total.zero_()
        self.steps, self.images, self.since = 0, 0, now
        return mean, ips


@dataclass(frozen=True)
class LossSampling:
    """Loss sampling of the paper's figure 5: keep each final-layer cell's loss with probability ``keep``.

    ``cell`` is the net's output stride (:func:`output_stride`); the draws of step ``t`` come from a CPU
    generator seeded by ``(seed, t, rank)``, a function of the step alone, so resuming repeats them exactly
    and each process of a distributed run draws its own.
    """

    keep: float
    cell: int
    seed: int = 0
    rank: int = 0
    phase: int = 0  # pixels of the first cell cut off by the image's top-left (sample_cells)

    def apply(self, target: Tensor, step: int, ignore_index: int) -> Tensor:
        g = torch.Generator().manual_seed(((self.seed * 1_000_003 + step) * 1_009 + self.rank) % (2**63))
        return sample_cells(target, self.keep, self.cell, g, ignore_index, phase=self.phase)

    @classmethod
    def for_model(cls, model: nn.Module, keep: float, seed: int = 0, rank: int = 0) -> LossSampling:
        """Cells of ``model``'s coarse scores: its output stride, and the phase at which its cell centres
        (``coarse_map``: pixel ``u`` is nearest to cell ``round(u / S + shift)``) divide the pixels."""
        cell = output_stride(model)
        m = next((x.coarse_map for x in model.modules() if hasattr(x, "coarse_map")), None)
        phase = 0 if m is None else math.floor(cell * (m.shift + Fraction(1, 2))) % cell
        return cls(keep, cell, seed, rank, phase)


def output_stride(model: nn.Module) -> int:
    """The stride of the final layer's cells of ``model`` (inside DDP or ``torch.compile`` wrappers too): an
    FCN's ``fcn_stride``, the first one found among its submodules for the fusion nets, else 32."""
    for m in model.modules():
        if isinstance(getattr(m, "fcn_stride", None), int):
            return int(m.fcn_stride)
    return 32


def train_step(
    model: nn.Module,
    images: Tensor,
    masks: Tensor,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    *,
    norm: Normalization,
    device: torch.device,
    loss_reduction: str = "mean",
    ignore_index: int = 255,
    amp: bool = False,
    channels_last: bool = False,
    class_weights: Tensor | None = None,
    clip_grad_norm: float = 0.0,
    loss_sampling: LossSampling | None = None,
    step: int = 0,
) -> Tensor:
    """One optimiser and scheduler step on a batch: ``images`` (N, C, H, W) in [0, 1], ``masks`` (N, H, W)
    or (N, T, H, W) for a multi-task model. Returns the loss, detached, on the device: nothing here waits
    for the device, so a caller that reads it only now and then (:class:`TrainMeter`) keeps it busy.

    ``channels_last`` feeds the images in NHWC layout (the model should be converted likewise);
    ``class_weights`` (K,) weighs each pixel's loss by its class (:func:`~fcnseg.losses.median_frequency_weights`);
    ``clip_grad_norm`` > 0 scales the gradients down to that global norm where it is larger (on the device, no
    wait). ``loss_sampling`` drops the loss of each final-layer cell with its probability, drawn for ``step``
    (the step about to be made) so that a resumed run draws the same cells.
    """
    x = images.to(device, non_blocking=True)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x = norm(x)
    y = masks.to(device, non_blocking=True)
    if loss_sampling is not None:
        y = loss_sampling.apply(y, step, ignore_index)
    with autocast(device, amp):
        logits = model(x)  # (N, K, H, W)
    loss = segmentation_loss(logits, y, ignore_index=ignore_index, reduction=loss_reduction,  # type: ignore[arg-type]
                             weight=class_weights)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if clip_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], clip_grad_norm)
    optimizer.step()
    scheduler.step()
    return loss.detach()


def train_one_epoch(
    model: nn.Module,
    loader: Iterable[tuple[Tensor, Tensor]],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    *,
    norm: Normalization,
    device: torch.device,
    max_steps: int | None = None,
    step: int = 0,
    progress: bool = False,
    **options: Any,
) -> Tensor:
    """:func:`train_step` over every batch of ``loader`` (until ``step`` reaches ``max_steps``); returns the
    steps' losses (S,) on the CPU, read from the device once, at the end.

    ``options`` are :func:`train_step`'s (``loss_reduction``, ``ignore_index``, ``amp``, ``channels_last``,
    ``class_weights``). A batch left empty by skipped bad samples is passed over without a step.
    ``fcnseg train`` runs its own loop (:func:`fcnseg.train.train_loop`): it validates and saves between steps.
    """
    set_train_mode(model)
    losses: list[Tensor] = []
    total = len(loader) if hasattr(loader, "__len__") else None  # type: ignore[arg-type]
    with Progress(total, "train", "step", enabled=progress) as bar:
        for images, masks in loader:
            if max_steps is not None and step >= max_steps:
                break
            if images.shape[0] == 0:
                continue
            losses.append(train_step(model, images, masks, optimizer, scheduler, norm=norm, device=device,
                                     step=step, **options))
            step += 1
            bar.update(1)
    return torch.stack(losses).float().cpu() if losses else torch.zeros(0)


def prepare_inference(model: nn.Module, *, precision: str = "fp32", channels_last: bool = True) -> nn.Module:
    """Eval mode, optionally bf16 weights and channels-last layout: the fast CPU/GPU inference path.

    bf16 halves memory traffic and uses the CPU's AVX512-BF16 / the GPU's tensor cores; logits are returned
    in float32 by :func:`predict_logits` either way.
    """
    if precision not in ("fp32", "bf16"):
        raise ConfigError(f"inference precision {precision!r} is neither fp32 nor bf16",
                          fix="set {precision} to fp32 or bf16 (auto is resolved by fcnseg.precision)")
    model = model.eval()
    if precision == "bf16":
        model = model.to(torch.bfloat16)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


@torch.no_grad()
def predict_logits(model: nn.Module, x: Tensor, *, flip: bool = False, window: int = 0,
                   overlap: float = 1 / 3, amp: bool = False, scales: Sequence[float] = (1.0,)) -> Tensor:
    """Class scores (N, K, H, W) for normalised images ``x``, with optional test-time augmentation.

    ``flip`` averages with the prediction on the mirrored image; ``scales`` averages the predictions on the
    image resized by each factor (bilinear), each resized back to (H, W); ``window`` > 0 predicts over
    sliding windows of that side (overlapping by ``overlap``) and averages the overlaps, for images too large
    to process at once or for models trained on crops. A multi-task model's heads come back side by side on
    the class axis (``models.joined_logits``; split them with ``models.head_labels``).
    """
    p = next(model.parameters(), None)
    if p is not None and p.dtype != x.dtype:
        x = x.to(p.dtype)  # a bf16 model (prepare_inference) reads bf16 images

    def run_one(inp: Tensor) -> Tensor:
        with autocast(inp.device, amp):
            out = joined_logits(model(inp)).float()  # a multi-task model's heads side by side on dim 1
        if flip:
            with autocast(inp.device, amp):
                out = out + joined_logits(model(inp.flip(-1))).float().flip(-1)
            out = out / 2
        return out

    def run(inp: Tensor) -> Tensor:
        if tuple(scales) == (1.0,):
            return run_one(inp)
        size = inp.shape[-2:]
        total: Tensor | None = None
        for s in scales:
            scaled = F.interpolate(inp, size=[max(1, round(n * s)) for n in size], mode="bilinear",
                                   align_corners=False)
            out = F.interpolate(run_one(scaled), size=size, mode="bilinear", align_corners=False)
            total = out if total is None else total + out
        assert total is not None
        return total / len(scales)

    h, w = x.shape[-2:]
    if window <= 0 or (h <= window and w <= window):
        return run(x)
    stride = max(1, int(window * (1 - overlap)))
    ys = list(range(0, max(h - window, 0) + 1, stride))
    xs = list(range(0, max(w - window, 0) + 1, stride))
    if ys[-1] + window < h:
        ys.append(h - window)
    if xs[-1] + window < w:
        xs.append(w - window)
    out: Tensor | None = None
    count = torch.zeros(1, 1, h, w, device=x.device)
    for y0 in ys:
        for x0 in xs:
            tile = x[..., y0 : y0 + window, x0 : x0 + window]
            s = run(tile)
            if out is None:
                out = torch.zeros(x.shape[0], s.shape[1], h, w, device=x.device)
            out[..., y0 : y0 + window, x0 : x0 + window] += s
            count[..., y0 : y0 + window, x0 : x0 + window] += 1
    assert out is not None
    return out / count


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[tuple[Tensor, Tensor]],
    *,
    num_classes: int,
    norm: Normalization,
    device: torch.device,
    ignore_index: int = 255,
    flip: bool = False,
    window: int = 0,
    amp: bool = False,
    progress: bool = True,
    scales: Sequence[float] = (1.0,),
) -> ConfusionMatrix | MultiTaskConfusion:
    """:func:`evaluate_scores` of a model being trained (validation): its scores under ``amp`` autocast, with
    the test-time augmentation of :func:`predict_logits`. A multi-task model (``heads``) is scored task by task.
    """
    model.eval()

    def scores(images: Tensor) -> Tensor:
        return predict_logits(model, norm(images.to(device)), flip=flip, window=window, amp=amp, scales=scales)

    return evaluate_scores(scores, loader, num_classes=num_classes, heads=task_heads(model), device=device,
                           ignore_index=ignore_index, progress=progress)


@torch.no_grad()
def evaluate_scores(
    scores: Callable[[Tensor], Tensor],
    loader: Iterable[tuple[Tensor, Tensor]],
    *,
    num_classes: int,
    heads: dict[str, int] | None = None,
    device: torch.device | str = "cpu",
    ignore_index: int = 255,
    progress: bool = True,
    boundary: BoundaryScores | None = None,
) -> ConfusionMatrix | MultiTaskConfusion:
    """The one evaluation loop: accumulate one confusion matrix over the loader's images at their original
    resolution, whatever computes the scores (a model in training, or a :class:`fcnseg.scorer.Scorer` under
    PyTorch or ONNX Runtime).

    ``scores(images)`` maps uint8 images (N, 3, H, W) to class scores (N, K, H, W) (a multi-task model's
    ``heads`` side by side, scored task by task against stacked masks (N, T, H, W): one matrix each). Each
    batch holds whole images (batch size 1 keeps every image at its own size, so padding never touches a
    prediction); an empty batch (a sample dropped by ``skip_bad``) is passed over. The matrix lives on
    ``device``; under DDP the matrices of all processes are summed; the caller computes the metrics.

    ``boundary`` (made by the caller, on ``device``) is updated with the same labels and masks, at the same
    resolution, and summed likewise; for a multi-task model with the first task's only (the semantic one).
    """
    device = torch.device(device)
    cm = ConfusionMatrix(num_classes, ignore_index, device=device) if heads is None else \
        MultiTaskConfusion(heads, ignore_index, device=device)
    total = len(loader) if hasattr(loader, "__len__") else None  # type: ignore[arg-type]
    with Progress(total, "eval", "img", enabled=progress) as bar:
        for images, masks in loader:
            if images.shape[0]:
                labels = head_labels(scores(images), heads)  # (N, H, W), or (N, T, H, W) by task
                cm.update(labels.to(device), masks.to(device))
                if boundary is not None:
                    first = (slice(None), 0) if heads is not None else (...,)  # a multi-task model's first task
                    boundary.update(labels[first].to(device), masks[first].to(device))  # (N, H, W)
            bar.update(1)
    cm.reduce()
    if boundary is not None:
        boundary.reduce()
    return cm
