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

Region metrics say little about edges: a prediction that is a few pixels off along every object boundary loses
little IU. :class:`BoundaryScores` adds two edge measures within a distance ``D``: the boundary F-score (BF) of
Csurka, Larlus and Perronnin, "What is a good evaluation measure for semantic segmentation?" (BMVC 2013), and
the trimap IU, the IU restricted to a band of ``D`` pixels around the ground truth's boundaries (the measure of
DeepLab's trimap experiment, arXiv:1412.7062). Its docstring gives the exact definitions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace

import torch
from torch import Tensor
from torch import distributed as dist
from torch.nn import functional as F

from .errors import ConfigError, DataError

__all__ = ["BoundaryMetrics", "BoundaryScores", "ConfusionMatrix", "ImageBoundaryScores", "MultiTaskConfusion",
           "SegMetrics", "boundary_scores", "label_boundaries"]


@dataclass(frozen=True)
class SegMetrics:
    """Metrics of one split. Per-class lists hold ``nan`` where the value is undefined.

    ``tasks`` holds every task's metrics for a multi-task net (the top-level values are the first task's);
    it is empty for a single-task one. ``boundary`` holds the edge measures by distance (:class:`BoundaryScores`)
    where they were asked for, else it is empty.
    """

    pixel_acc: float
    mean_acc: float
    mean_iu: float
    fw_iu: float
    class_iu: list[float]
    class_acc: list[float]
    pixels: int
    tasks: dict[str, SegMetrics] = field(default_factory=dict)
    boundary: dict[int, BoundaryMetrics] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        for key in ("tasks", "boundary"):  # a plain evaluation's record keeps its plain shape
            if not d[key]:
                del d[key]
        return d


def _check_labels(pred: Tensor, target: Tensor, k: int, ignore_index: int | None) -> None:
    """Refuse scored target labels outside ``[0, k)`` (:class:`~fcnseg.errors.DataError`: the data's fault) and
    predictions outside it (``ValueError``: the caller's bug). Both tensors hold the scored pixels only."""
    if target.numel() and (target.min() < 0 or target.max() >= k):
        bad = target[(target < 0) | (target >= k)].unique()[:10].tolist()
        raise DataError(f"target labels {bad} are neither a class in [0, {k}) nor ignore={ignore_index}",
                        fix="score on a dataset whose classes are the model's ({dataset})")
    if pred.numel() and (pred.min() < 0 or pred.max() >= k):
        raise ValueError(f"predictions outside [0, {k})")


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
        _check_labels(pred, target, k, self.ignore_index)
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


# ----------------------------------------------------------------------------------------------- boundaries


def label_boundaries(labels: Tensor, valid: Tensor) -> Tensor:
    """The boundary pixels of integer label maps ``labels`` (..., H, W): a bool mask of the same shape.

    A pixel is a boundary pixel, of its own class, where it is ``valid`` and one of its four neighbours (up,
    down, left, right) inside the image is invalid or has another label. So each side of an edge between two
    classes has its own boundary pixels (each region's inner rim), and the image's border is no edge. An
    invalid (ignore) pixel is never a boundary pixel, but a valid pixel next to one is: VOC's void band hides
    the object's true edge, and the band's rims are the nearest known places of it.
    """
    lab = labels.masked_fill(~valid, -1)  # the ignore region: a label of its own, unlike every class
    edge = torch.zeros_like(valid)
    dy = lab[..., 1:, :] != lab[..., :-1, :]  # (..., H-1, W): a pixel and the one below differ
    edge[..., 1:, :] |= dy
    edge[..., :-1, :] |= dy
    dx = lab[..., :, 1:] != lab[..., :, :-1]  # (..., H, W-1): a pixel and the one to its right differ
    edge[..., :, 1:] |= dx
    edge[..., :, :-1] |= dx
    return edge & valid


def _dilate(mask: Tensor, radius: int) -> Tensor:
    """The pixels within Chebyshev distance ``radius`` of a True pixel of ``mask`` (C, H, W), bool (C, H, W):
    a (2r+1) x (2r+1) max-pool, as two exact 1-D passes (a square is the product of two segments)."""
    x = mask.to(torch.float16 if mask.is_cuda else torch.float32)[None]  # (1, C, H, W); max_pool2d wants floats
    k = 2 * radius + 1
    x = F.max_pool2d(x, (1, k), stride=1, padding=(0, radius))  # along W
    x = F.max_pool2d(x, (k, 1), stride=1, padding=(radius, 0))  # along H
    return x[0] > 0


@dataclass(frozen=True)
class ImageBoundaryScores:
    """One image's boundary scores, (D, K) float64 tensors for ``D`` distances and ``K`` classes.

    ``precision`` is ``nan`` where the prediction has no boundary pixel of the class, ``recall`` where the
    ground truth has none, ``f1`` (see :class:`BoundaryScores` for its empty cases) where the class is in
    neither map. ``present`` (K,) bool: the class has a scored pixel in the ground truth or the prediction;
    ``in_truth`` (K,): in the ground truth. ``bands``: each distance's trimap band (H, W) bool.
    """

    precision: Tensor
    recall: Tensor
    f1: Tensor
    present: Tensor
    in_truth: Tensor
    bands: list[Tensor]


def boundary_scores(pred: Tensor, target: Tensor, num_classes: int, distances: tuple[int, ...] = (2,),
                    ignore_index: int | None = 255) -> ImageBoundaryScores:
    """The boundary precision, recall and F1 of each class in one image: ``pred`` and ``target`` (H, W).

    Defined as in :class:`BoundaryScores`, which sums them over images. Raises like
    :meth:`ConfusionMatrix.update` for labels outside the classes.
    """
    if pred.shape != target.shape or pred.ndim != 2:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} must be one (H, W) each")
    k, device = num_classes, pred.device
    pred, target = pred.to(torch.int64), target.to(device, torch.int64)
    valid = target != ignore_index if ignore_index is not None else torch.ones_like(target, dtype=torch.bool)
    _check_labels(pred[valid], target[valid], k, ignore_index)
    in_truth = torch.bincount(target[valid], minlength=k) > 0  # (K,)
    in_pred = torch.bincount(pred[valid], minlength=k) > 0  # the prediction on scored pixels only
    present = in_truth | in_pred
    nan = torch.full((len(distances), k), float("nan"), dtype=torch.float64, device=device)
    precision, recall, f1 = nan.clone(), nan.clone(), nan.clone()
    if not present.any():  # every pixel carries the ignore label
        return ImageBoundaryScores(precision, recall, f1, present, in_truth,
                                   [torch.zeros_like(valid) for _ in distances])
    classes = present.nonzero().flatten()  # (K',) the classes in either map
    own = classes[:, None, None]
    b_true = label_boundaries(target, valid) & (target == own)  # (K', H, W): each class's true boundary pixels
    b_pred = label_boundaries(pred, valid) & (pred == own)  # (K', H, W): its predicted ones
    n_true, n_pred = b_true.sum((1, 2)).double(), b_pred.sum((1, 2)).double()  # (K',)
    in_both = (in_truth & in_pred)[classes]  # (K',)
    bands = []
    for i, d in enumerate(distances):
        near_true = _dilate(b_true, d)  # (K', H, W): within d of a true boundary pixel of the class
        p = (b_pred & near_true).sum((1, 2)) / n_pred  # nan where no predicted boundary pixel
        r = (b_true & _dilate(b_pred, d)).sum((1, 2)) / n_true  # nan where no true boundary pixel
        f = torch.where((n_pred > 0) & (n_true > 0), (2 * p * r / (p + r)).nan_to_num(0.0), 0.0)  # P + R = 0: 0
        f = torch.where((n_pred == 0) & (n_true == 0), in_both.double(), f)  # agree on no edge: 1
        precision[i, classes], recall[i, classes], f1[i, classes] = p, r, f
        bands.append(near_true.any(0) & valid)  # (H, W): within d of any true boundary pixel, not ignored
    return ImageBoundaryScores(precision, recall, f1, present, in_truth, bands)


@dataclass(frozen=True)
class BoundaryMetrics:
    """The edge measures of one split at one distance ``D``. Per-class lists hold ``nan`` where undefined.

    ``bf_score``: the mean over classes of ``class_bf_score``; ``trimap_iu``, ``class_trimap_iu`` and
    ``trimap_pixel_acc``: mean IU, IU and pixel accuracy over the ``trimap_pixels`` pixels of the band.
    """

    bf_score: float
    class_bf_score: list[float]
    trimap_iu: float
    class_trimap_iu: list[float]
    trimap_pixel_acc: float
    trimap_pixels: int


class BoundaryScores:
    """Accumulates the boundary F-score and the trimap IU at each distance of ``distances`` over a split.

    Definitions (``D`` a distance, ``c`` a class):

    * **scored pixels**: those whose ground truth is not ``ignore_index``; the prediction is read on them only,
      as if it carried the ground truth's ignore pixels too (what is predicted under the ignore label never
      counts, as in :class:`ConfusionMatrix`).
    * **boundary pixels** of ``c`` in a label map (:func:`label_boundaries`): scored pixels of ``c`` with a
      4-neighbour in the image that is of another class or ignored. The image's border is no boundary, an
      ignored pixel is never one, a class's rim against an ignored region is one (in both maps alike).
    * **distance**: Chebyshev (chessboard): ``q`` is within ``D`` of ``p`` when ``max(|dy|, |dx|) <= D``, the
      (2D+1) x (2D+1) square around ``p`` (one max-pool of the boundary maps, all classes at once).
    * **boundary F-score** of ``c`` in one image: precision ``P`` = the share of predicted boundary pixels of
      ``c`` within ``D`` of a true boundary pixel of ``c``; recall ``R`` = the share of true boundary pixels of
      ``c`` within ``D`` of a predicted one; ``F = 2PR / (P + R)``, 0 where ``P + R = 0`` (Csurka, Larlus and
      Perronnin, BMVC 2013). Empty sides: no boundary pixel of ``c`` on one side only gives ``F = 0`` (every
      edge of the other side is missed or spurious); none on either side gives ``F = 1`` when ``c`` has scored
      pixels in both maps (they agree: no edge), else ``F = 0`` (the class is missed or hallucinated whole).
    * **class BF score**: the mean of ``F`` over the images in which ``c`` has scored pixels in the ground truth
      or the prediction (``nan`` if none); **BF score**: the mean over classes of it (``nanmean``).
      ``present_only`` (SIFT Flow's rule) leaves out the classes never in the ground truth.
    * **trimap band**: the scored pixels within ``D`` of a true boundary pixel of any class; **trimap IU**:
      the IU of :class:`ConfusionMatrix` over the band's pixels only (one matrix per ``D`` over the split).

    The sums of ``F``, the image counts and the trimap matrices are summed across processes by :meth:`reduce`,
    like the confusion matrix; the ``F`` of each image is computed whole on the process that scored it.

    Args:
        num_classes: number of classes ``K``.
        distances: the distances ``D`` in pixels, whole numbers of 1 or more.
        ignore_index: the target label that is not scored.
    Raises:
        ConfigError: for a distance that is not a whole number of pixels of 1 or more (option ``boundary``).
    """

    def __init__(self, num_classes: int, distances: tuple[int, ...], ignore_index: int | None = 255,
                 device: torch.device | str = "cpu"):
        bad = [d for d in distances if isinstance(d, bool) or not isinstance(d, int) or d < 1]
        if bad or not distances:
            raise ConfigError(f"boundary distances must be whole numbers of pixels, 1 or more; got "
                              f"{list(distances)}", fix="set {boundary} to distances such as 1 2 5")
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.distances = tuple(sorted(set(distances)))
        self.device = torch.device(device)
        self.f1_sum = torch.zeros(len(self.distances), num_classes, dtype=torch.float64, device=self.device)
        self.images = torch.zeros(num_classes, dtype=torch.int64, device=self.device)  # images with the class
        self.truth_images = torch.zeros(num_classes, dtype=torch.int64, device=self.device)  # ... in the truth
        self.trimap = [ConfusionMatrix(num_classes, ignore_index, self.device) for _ in self.distances]

    def reset(self) -> None:
        for t in (self.f1_sum, self.images, self.truth_images):
            t.zero_()
        for cm in self.trimap:
            cm.reset()

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add images: integer label maps ``pred`` and ``target``, (H, W) or (N, H, W), each image scored by
        itself (:func:`boundary_scores`). Raises like :meth:`ConfusionMatrix.update`."""
        if pred.shape != target.shape or pred.ndim not in (2, 3):
            raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} must be the same "
                             "(H, W) or (N, H, W)")
        pred = pred.to(self.device).reshape(-1, *pred.shape[-2:])  # (N, H, W)
        target = target.to(self.device).reshape(-1, *target.shape[-2:])
        for p, t in zip(pred, target, strict=True):
            s = boundary_scores(p, t, self.num_classes, self.distances, self.ignore_index)
            self.f1_sum += s.f1.nan_to_num(0.0)  # nan: the class is in neither map, and this image does not count
            self.images += s.present
            self.truth_images += s.in_truth
            for cm, band in zip(self.trimap, s.bands, strict=True):
                cm.update(p[band], t[band])

    def reduce(self) -> None:
        """Sum the accumulators of all processes (distributed evaluation); a no-op outside ``torch.distributed``."""
        if dist.is_available() and dist.is_initialized():
            for t in (self.f1_sum, self.images, self.truth_images):
                dist.all_reduce(t, op=dist.ReduceOp.SUM)
        for cm in self.trimap:
            cm.reduce()

    def compute(self, *, present_only: bool = False) -> dict[int, BoundaryMetrics]:
        """``{D: BoundaryMetrics}`` from the accumulated sums; ``present_only`` as in
        :meth:`ConfusionMatrix.compute`, for the BF score as well."""
        class_bf = self.f1_sum.cpu() / self.images.double().cpu()  # (D, K): nan where the class was in no image
        if present_only:
            class_bf[:, self.truth_images.cpu() == 0] = float("nan")
        out = {}
        for i, (d, cm) in enumerate(zip(self.distances, self.trimap, strict=True)):
            m = cm.compute(present_only=present_only)
            out[d] = BoundaryMetrics(bf_score=float(class_bf[i].nanmean()), class_bf_score=class_bf[i].tolist(),
                                     trimap_iu=m.mean_iu, class_trimap_iu=m.class_iu,
                                     trimap_pixel_acc=m.pixel_acc, trimap_pixels=m.pixels)
        return out
