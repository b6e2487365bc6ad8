"""The paper's four metrics from one confusion matrix (arXiv:1411.4038, section 5).

With ``n_ij`` the number of pixels of class ``i`` predicted to belong to class ``j``, ``n_cl`` the number of
classes and ``t_i = sum_j n_ij`` the number of pixels of class ``i``:

* pixel accuracy ``sum_i n_ii / sum_i t_i``
* mean accuracy ``(1/n_cl) sum_i n_ii / t_i``
* mean IU ``(1/n_cl) sum_i n_ii / (t_i + sum_j n_ji - n_ii)``
* frequency weighted IU ``(sum_k t_k)^-1 sum_i t_i n_ii / (t_i + sum_j n_ji - n_ii)``

The matrix accumulates over a whole split; the metrics are computed once from it, never averaged per image.
A class absent from both the ground truth and the prediction has an undefined IU and is left out of the means
(as the reference's ``nanmean``); a class absent from the ground truth has no accuracy and is left out of
mean accuracy.

A multi-task net (the SIFT Flow one: semantic and geometric labels) is scored by :class:`MultiTaskConfusion`,
one matrix per task. It follows the reference's SIFT Flow protocol: classes absent from the split's ground truth
(cow, desert and moon on SIFT Flow's test set) are left out of mean IU as well (``compute(present_only=True)``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace

import torch
from torch import Tensor
from torch import distributed as dist

from .errors import ConfigError, DataError

__all__ = ["ConfusionMatrix", "MultiTaskConfusion", "SegMetrics"]


@dataclass(frozen=True)
class SegMetrics:
    """Metrics of one split. Per-class lists hold ``nan`` where the value is undefined.

    ``tasks`` holds every task's metrics for a multi-task net (the top-level values are the first task's);
    it is empty for a single-task one.
    """

    pixel_acc: float
    mean_acc: float
    mean_iu: float
    fw_iu: float
    class_iu: list[float]
    class_acc: list[float]
    pixels: int
    tasks: dict[str, SegMetrics] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        if not self.tasks:  # a single-task net's record keeps its plain shape
            del d["tasks"]
        return d


class ConfusionMatrix:
    """Accumulates ``n_ij`` over (prediction, target) pairs with ``torch.bincount``.

    Args:
        num_classes: number of classes ``n_cl``.
        ignore_index: target label that is not scored (the VOC border/void label 255 by default).
    """

    def __init__(self, num_classes: int, ignore_index: int | None = 255, device: torch.device | str = "cpu"):
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.mat = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def reset(self) -> None:
        self.mat.zero_()

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add pixels. ``pred`` and ``target`` are integer tensors of the same shape (any shape).

        Raises :class:`~fcnseg.errors.DataError` for target labels that are neither a class nor the ignore
        label, and ``ValueError`` for predictions outside ``[0, num_classes)`` or shapes that differ (bugs of
        the caller): a silently wrong metric is worse than an error.
        """
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
        k = self.num_classes
        target = target.to(self.mat.device, torch.int64).flatten()
        pred = pred.to(self.mat.device, torch.int64).flatten()
        keep = target != self.ignore_index if self.ignore_index is not None else torch.ones_like(target, dtype=bool)
        target, pred = target[keep], pred[keep]
        if target.numel() and (target.min() < 0 or target.max() >= k):
            bad = target[(target < 0) | (target >= k)].unique()[:10].tolist()
            raise DataError(f"target labels {bad} are neither a class in [0, {k}) nor ignore={self.ignore_index}",
                            fix="score on a dataset whose classes are the model's ({dataset})")
        if pred.numel() and (pred.min() < 0 or pred.max() >= k):
            raise ValueError(f"predictions outside [0, {k})")
        self.mat += torch.bincount(target * k + pred, minlength=k * k).reshape(k, k)

    def reduce(self) -> None:
        """Sum the matrices of all processes (distributed evaluation); a no-op outside ``torch.distributed``."""
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.mat, op=dist.ReduceOp.SUM)

    def compute(self, *, present_only: bool = False) -> SegMetrics:
        """The paper's four metrics plus per-class IU and accuracy, from the accumulated matrix.

        ``present_only``: classes absent from the ground truth get no IU either (``nan``), so a class that is
        only ever predicted does not count in mean IU; pixels predicted as it still count against the others.
        """
        h = self.mat.double().cpu()
        tp = h.diag()
        t = h.sum(1)  # pixels of each class in the ground truth
        union = t + h.sum(0) - tp
        total = t.sum()
        class_acc = tp / t  # nan where t_i == 0
        class_iu = tp / union  # nan where the class is in neither ground truth nor prediction
        if present_only:
            class_iu[t == 0] = float("nan")
        # Weighted by ground-truth frequency: a class with none (t_i == 0) weighs nothing, even where present_only
        # made its IU nan (the reference's `freq > 0`).
        fw = (t[t > 0] * class_iu[t > 0]).sum() / total if total > 0 else torch.tensor(float("nan"))
        return SegMetrics(
            pixel_acc=float(tp.sum() / total) if total > 0 else float("nan"),
            mean_acc=float(class_acc.nanmean()),
            mean_iu=float(class_iu.nanmean()),
            fw_iu=float(fw),
            class_iu=class_iu.tolist(),
            class_acc=class_acc.tolist(),
            pixels=int(total),
        )


class MultiTaskConfusion:
    """One :class:`ConfusionMatrix` per task of a multi-task net, over stacked labels.

    ``update(pred, target)`` takes (N, T, H, W) predictions and targets, channel ``t`` for the ``t``-th task
    of ``heads`` (``{task: classes}``); ``compute()`` returns the first task's metrics with every task's in
    :attr:`SegMetrics.tasks`, each with ``present_only`` (the reference's SIFT Flow scoring).

    Attributes:
        matrices: ``{task: ConfusionMatrix}``.
    """

    def __init__(self, heads: Mapping[str, int], ignore_index: int | None = 255,
                 device: torch.device | str = "cpu"):
        self.matrices = {task: ConfusionMatrix(k, ignore_index, device) for task, k in heads.items()}

    def reset(self) -> None:
        for cm in self.matrices.values():
            cm.reset()

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add pixels of (N, T, H, W) predictions and targets, task ``t`` in channel ``t``."""
        if pred.ndim != 4 or pred.shape[1] != len(self.matrices) or target.shape != pred.shape:
            raise ConfigError(f"{len(self.matrices)} tasks need predictions and targets (N, {len(self.matrices)}, "
                              f"H, W); got {tuple(pred.shape)} and {tuple(target.shape)}",
                              fix="score a multi-task model on a dataset with one label channel per task ({dataset})")
        for t, cm in enumerate(self.matrices.values()):
            cm.update(pred[:, t], target[:, t])

    def reduce(self) -> None:
        for cm in self.matrices.values():
            cm.reduce()

    def compute(self, *, present_only: bool = True) -> SegMetrics:
        tasks = {task: cm.compute(present_only=present_only) for task, cm in self.matrices.items()}
        first = next(iter(tasks.values()))
        return replace(first, tasks=tasks)
