"""The paper's published numbers, each beside the command that would reproduce it; ``fcnseg models`` prints them.

One place for every row: :data:`PAPER_RESULTS`. Metrics are the paper's four (section 5): pixel accuracy, mean
accuracy, mean IU, frequency-weighted IU, in percent; ``None`` where the source gives only mean IU. Commands
follow the reference's solvers (``--recipe paper``: batch 1, summed loss, momentum 0.99, lr 1e-10 / 1e-12 /
1e-14 by stride; 100k iterations for VOC and NYUDv2, 400k for PASCAL-Context) and start from VGG16's ImageNet
weights converted from the Caffe model the reference used::

    fcnseg convert caffe VGG_ILSVRC_16_layers.caffemodel --model fcn32s -o runs/vgg16.pt
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

__all__ = ["PaperResult", "PAPER_RESULTS", "NOT_RUN", "describe", "models_table"]

NOT_RUN = "not run here: needs the dataset"


@dataclass(frozen=True)
class PaperResult:
    """One published result and the command that would reproduce it.

    Attributes:
        model: registry name.
        dataset: what is scored (split, images).
        source: where the number is published (paper version, table, row).
        pixel_acc, mean_acc, mean_iu, fw_iu: the paper's metrics in percent (``None``: not published).
        command: the ``fcnseg`` command line(s) that train the model as the paper did.
        status: what fcnseg measured; :data:`NOT_RUN` when the dataset is not on these machines.
    """

    model: str
    dataset: str
    source: str
    pixel_acc: float | None
    mean_acc: float | None
    mean_iu: float | None
    fw_iu: float | None
    command: str
    status: str = NOT_RUN

    def metrics(self) -> str:
        """``pixel acc / mean acc / mean IU / f.w. IU`` with ``-`` for unpublished ones."""
        return " / ".join("-" if v is None else f"{v:.1f}" for v in
                          (self.pixel_acc, self.mean_acc, self.mean_iu, self.fw_iu))


_PAPER = "fcnseg train --recipe paper"
_VOC = (f"{_PAPER} --dataset sbd --data benchmark_RELEASE --train-split train_noval --val-dataset voc "
        "--val-data-root VOCdevkit/VOC2011 --val-split seg11valid --max-steps 100000 --val-every 4000")
_SERVER = ("fcnseg predict --checkpoint runs/voc_fcn8s/best.pt VOCdevkit/VOC2012/JPEGImages -o runs/voc_test "
           "(the test ids), then the VOC evaluation server")
_NYUD = f"{_PAPER} --dataset nyud --data data/nyud --train-split trainval --val-split test --max-steps 100000 " \
        "--val-every 2000"
_CONTEXT = (f"{_PAPER} --dataset pascal_context --data data/pascal-context --dataset-arg voc_root=data/pascal/VOC2010 "
            "--train-split train --val-split val --max-steps 400000 --val-every 8000")


def _nyud(modality: str, model: str, out: str, init: str, extra: str = "") -> str:
    return (f"{_NYUD} --dataset-arg modality={modality} --normalization nyud_{modality} --model {model} "
            f"--init-from {init}{extra} --out runs/{out}")


PAPER_RESULTS: tuple[PaperResult, ...] = (
    # PASCAL VOC: the reference models (PAMI training), mean IU from the reference's README.
    PaperResult("fcn32s", "PASCAL VOC 2011 seg11valid (736)", "PAMI 2016 / reference voc-fcn32s",
                None, None, 63.6, None, f"{_VOC} --model fcn32s --init-from runs/vgg16.pt --out runs/voc_fcn32s"),
    PaperResult("fcn16s", "PASCAL VOC 2011 seg11valid (736)", "PAMI 2016 / reference voc-fcn16s",
                None, None, 65.0, None,
                f"{_VOC} --model fcn16s --init-from runs/voc_fcn32s/best.pt --out runs/voc_fcn16s"),
    PaperResult("fcn8s", "PASCAL VOC 2011 seg11valid (736)", "PAMI 2016 / reference voc-fcn8s",
                None, None, 65.5, None,
                f"{_VOC} --model fcn8s --init-from runs/voc_fcn16s/best.pt --out runs/voc_fcn8s"),
    PaperResult("fcn8s", "PASCAL VOC 2011 test", "CVPR 2015 Table 3, FCN-8s", None, None, 62.7, None, _SERVER),
    PaperResult("fcn8s", "PASCAL VOC 2012 test", "CVPR 2015 Table 3 and abstract, FCN-8s", None, None, 62.2, None,
                _SERVER),
    PaperResult("fcn8s", "PASCAL VOC 2012 test", "PAMI 2016 abstract, FCN-8s", None, None, 67.2, None, _SERVER),
    PaperResult("fcn8s_atonce", "PASCAL VOC 2011 seg11valid (736)", "PAMI 2016 / reference voc-fcn8s-atonce",
                None, None, 65.4, None, f"{_VOC} --model fcn8s_atonce --init-from runs/vgg16.pt --out runs/voc_atonce"),
    PaperResult("fcn_alexnet", "PASCAL VOC 2011 seg11valid (736)", "reference voc-fcn-alexnet",
                None, None, 48.0, None, "fcnseg convert caffe fcn-alexnet-pascal.caffemodel --model fcn_alexnet "
                "-o runs/fcn_alexnet.pt (trained with normalised loss and gradient accumulation)"),
    # NYUDv2, Table 4: test set (654 images), 40 classes.
    PaperResult("fcn32s", "NYUDv2 test (654), RGB", "CVPR 2015 Table 4, FCN-32s RGB", 60.0, 42.2, 29.2, 43.9,
                _nyud("rgb", "fcn32s", "nyud_fcn32s_rgb", "runs/vgg16.pt")),
    PaperResult("fcn32s_rgbd", "NYUDv2 test (654), RGB-D", "CVPR 2015 Table 4, FCN-32s RGBD", 61.5, 42.4, 30.5,
                45.5, _nyud("rgbd", "fcn32s_rgbd", "nyud_fcn32s_rgbd", "runs/vgg16.pt")),
    PaperResult("fcn32s", "NYUDv2 test (654), HHA", "CVPR 2015 Table 4, FCN-32s HHA", 57.1, 35.2, 24.2, 40.4,
                _nyud("hha", "fcn32s", "nyud_fcn32s_hha", "runs/vgg16.pt")),
    PaperResult("fcn32s_rgb_hha", "NYUDv2 test (654), RGB-HHA", "CVPR 2015 Table 4, FCN-32s RGB-HHA", 64.3, 44.9,
                32.8, 48.0, _nyud("rgb_hha", "fcn32s_rgb_hha", "nyud_fcn32s_rgb_hha",
                                  "color=runs/nyud_fcn32s_rgb/best.pt,hha=runs/nyud_fcn32s_hha/best.pt",
                                  " --lr 1e-12")),
    PaperResult("fcn16s_rgb_hha", "NYUDv2 test (654), RGB-HHA", "CVPR 2015 Table 4, FCN-16s RGB-HHA", 65.4, 46.1,
                34.0, 49.5, _nyud("rgb_hha", "fcn16s_rgb_hha", "nyud_fcn16s_rgb_hha",
                                  "runs/nyud_fcn32s_rgb_hha/best.pt")),
    # SIFT Flow, Table 5: 200 test images, 33 semantic classes and 3 geometric ones (geometric pixel acc 94.3).
    PaperResult("fcn16s_siftflow", "SIFT Flow test (200), semantic", "CVPR 2015 Table 5, FCN-16s (geometric "
                "pixel acc 94.3)", 85.2, 51.7, 39.5, 76.1,
                f"{_PAPER} --dataset siftflow --data $FCNSEG_DATA/sift-flow --train-split trainval --val-split test "
                "--normalization caffe_siftflow --model fcn16s_siftflow --init-from runs/siftflow/fcn32s/best.pt "
                "--max-steps 100000 --val-every 2000 --out runs/siftflow/fcn16s"),
    # PASCAL-Context, 59 classes + background (PAMI 2016): VOC2010 val (5,105 images).
    *(PaperResult(model, "PASCAL-Context val (5105), 59 classes", f"PAMI 2016, PASCAL-Context table, {row}", *paper,
                  f"{_CONTEXT} --normalization caffe --model {model} --init-from {init} --out runs/context_{model}")
      for model, row, paper, init in (
          ("fcn32s", "FCN-32s", (65.5, 49.1, 36.7, 50.9), "runs/vgg16.pt"),
          ("fcn16s", "FCN-16s", (66.9, 51.3, 38.4, 52.3), "runs/context_fcn32s/best.pt"),
          ("fcn8s", "FCN-8s", (67.5, 52.3, 39.1, 53.0), "runs/context_fcn16s/best.pt"))),
)


def describe(name: str) -> str:
    """The first line of a registered model factory's docstring."""
    from . import _REGISTRY, _load_backbones

    _load_backbones()
    doc = inspect.getdoc(_REGISTRY[name]) or ""
    return doc.splitlines()[0] if doc else ""


def models_table() -> str:
    """What ``fcnseg models`` prints: every registered model with what it is, then the paper's results with
    their commands."""
    from . import list_models

    names = list_models()
    width = max(map(len, names))
    lines = ["Models (fcnseg.models.build(name)):", ""]
    lines += [f"  {n:<{width}}  {describe(n)}" for n in names]
    lines += ["", "The paper's results (pixel acc / mean acc / mean IU / f.w. IU, %) and the commands that would "
              "reproduce them:", ""]
    for r in PAPER_RESULTS:
        lines.append(f"  {r.model:<{width}}  {r.dataset}: {r.metrics()}  [{r.source}]")
        lines.append(f"  {'':<{width}}  {r.status}")
        lines.append(f"  {'':<{width}}  $ {r.command}")
    return "\n".join(lines)
