"""What both importers share: the error type, the class table and the checkpoint they write."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from ..checkpoint import Checkpoint, save_checkpoint, task_extra
from ..classes import VOC_CLASSES, voc_palette
from ..errors import ConvertError
from ..models import FCN, build, task_heads
from ..normalization import Normalization

__all__ = ["ConvertError", "VOC_CLASSES", "voc_palette", "class_table", "build_target", "write_checkpoint"]

PathLike = str | os.PathLike[str]


def class_table(num_classes: int, classes: Sequence[str] | None
                ) -> tuple[list[str], list[tuple[int, int, int]]]:
    """Class names and palette for a converted model.

    ``classes`` if given (its length must be ``num_classes``); else VOC's names for 21 classes and
    ``class_0 ...`` otherwise. The palette is VOC's colour map, which gives distinct colours to any count.
    """
    if isinstance(classes, str):
        raise ConvertError(f"classes must be a list of names, not the string {classes!r}",
                           fix="give {classes} as a list of names")
    if classes is not None:
        names = list(classes)
        if len(names) != num_classes:
            raise ConvertError(f"{len(names)} class names given for a model with {num_classes} classes",
                               fix="give one name a class in {classes}, or set {num_classes} to their count")
    elif num_classes == len(VOC_CLASSES):
        names = list(VOC_CLASSES)
    else:
        names = [f"class_{i}" for i in range(num_classes)]
    return names, voc_palette(num_classes)


def build_target(model: str, num_classes: int, model_args: Mapping[str, Any] | None
                 ) -> tuple[FCN, dict[str, Any]]:
    """The registry's ``model`` and the factory arguments that rebuild it (recorded in the checkpoint)."""
    if "num_classes" in (model_args or {}):
        raise ConvertError("num_classes given in model_args",
                           fix="give {num_classes} as its own option, not in {model_args}")
    args = {**(model_args or {}), "num_classes": num_classes}
    net = build(model, **args)
    if not isinstance(net, FCN):
        raise ConvertError(f"model {model!r} is not one of the paper's FCNs; weights cannot be imported",
                           fix="set {model} to an FCN of the registry (fcn32s, fcn16s, fcn8s ...)")
    return net, args


def write_checkpoint(dst: PathLike, net: nn.Module, model: str, model_args: dict[str, Any],
                     classes: Sequence[str] | None, normalization: Normalization, src: Path, source: str
                     ) -> Path:
    """Save ``net``'s weights as a self-describing fcnseg checkpoint at ``dst``; returns the path."""
    names, palette = class_table(model_args["num_classes"], classes)
    heads = task_heads(net)  # a multi-task net: ``classes`` name the first task's; the others get class_i
    tasks = {t: (names, palette) if i == 0 else class_table(k, None) for i, (t, k) in enumerate(heads.items())} \
        if heads else None
    ckpt = Checkpoint(
        model_name=model, model_args=model_args, state_dict=net.state_dict(), classes=names, palette=palette,
        normalization=normalization,
        extra={"converted_from": src.name, "source_format": source, **task_extra(tasks)},
    )
    return save_checkpoint(ckpt, dst)
