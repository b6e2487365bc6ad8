"""Self-describing checkpoints: everything ``eval`` and ``predict`` need is in the file.

A checkpoint is a dict saved with ``torch.save``::

    format: "fcnseg"          version: 1
    model: {"name": registry name, "args": factory kwargs}
    state_dict: model weights
    classes: class names       palette: [[r, g, b], ...] per class    ignore_index: int
    normalization: Normalization.to_dict()
    config: the resolved training config (dict) or None
    train_state: optimiser, scheduler, step, epoch, sampler position, RNG states (optional)
    metrics: the latest validation metrics (optional)
    extra: {"tasks": {task: {"classes": [...], "palette": [...]}}} for a multi-task model (SIFT Flow's sem, geo)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import CheckpointError, ConfigError
from .models import build
from .normalization import Normalization, get_normalization
from .outputs import atomic_write

__all__ = ["Checkpoint", "save_checkpoint", "load_checkpoint", "CheckpointError", "task_extra",
           "load_init_weights"]

TaskTables = dict[str, tuple[list[str], list[tuple[int, int, int]]]]
"""``{task: (class names, palette)}`` of a multi-task model, in the order of its heads."""


def task_extra(tasks: TaskTables | None) -> dict[str, Any]:
    """The checkpoint's ``extra`` entry that records a multi-task dataset's tasks (empty for one task)."""
    if not tasks:
        return {}
    return {"tasks": {t: {"classes": list(names), "palette": [[int(v) for v in c] for c in palette]}
                      for t, (names, palette) in tasks.items()}}

FORMAT, VERSION = "fcnseg", 1




@dataclass
class Checkpoint:
    """The description of a trained model; ``build_model()`` rebuilds it with its weights."""

    model_name: str
    model_args: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    classes: list[str]
    palette: list[tuple[int, int, int]]
    normalization: Normalization
    ignore_index: int = 255
    config: dict[str, Any] | None = None
    train_state: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def tasks(self) -> TaskTables | None:
        """A multi-task model's ``{task: (class names, palette)}``; ``None`` for a single-task one."""
        tasks = self.extra.get("tasks")
        if not tasks:
            return None
        return {t: (list(v["classes"]), [tuple(c) for c in v["palette"]]) for t, v in tasks.items()}

    @property
    def heads(self) -> dict[str, int] | None:
        """``{task: classes}`` of a multi-task model (split its joined scores with ``models.head_labels``)."""
        tasks = self.tasks
        return None if tasks is None else {t: len(names) for t, (names, _) in tasks.items()}

    def build_model(self, *, strict: bool = True) -> nn.Module:
        """The model with its weights, in eval mode. ``pretrained`` is never re-fetched: the weights are here."""
        args = {k: v for k, v in self.model_args.items() if k != "pretrained"}
        model = build(self.model_name, **args)
        model.load_state_dict(self.state_dict, strict=strict)
        return model.eval()

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "version": VERSION,
            "model": {"name": self.model_name, "args": self.model_args},
            "state_dict": self.state_dict, "classes": list(self.classes),
            "palette": [list(map(int, c)) for c in self.palette],
            "normalization": self.normalization.to_dict(), "ignore_index": self.ignore_index,
            "config": self.config, "train_state": self.train_state, "metrics": self.metrics,
            "extra": self.extra,
        }


def save_checkpoint(ckpt: Checkpoint, path: str | os.PathLike[str]) -> Path:
    """Write atomically and durably (temporary file, fsync, mode 0644, rename): a kill or a full disk at any
    moment leaves the previous file or the new one, never a broken one. Errors name the path
    (:class:`fcnseg.outputs.OutputError`)."""
    return atomic_write(path, lambda f: torch.save(ckpt.to_dict(), f))


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu", *,
                    option: str = "checkpoint") -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Errors are :class:`CheckpointError` naming the file (``path``) and what is wrong; their fix names
    ``option``, the config field that chose the file (``checkpoint``, ``resume``, ``init_from``).
    """
    path = Path(path)
    choose = f"choose another {{{option}}}"
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist", fix=f"check the path, or {choose}", path=path)
    try:
        # Our checkpoints hold only tensors and plain containers; weights_only keeps loading safe.
        d = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means the same to the user
        raise CheckpointError(f"checkpoint {path} could not be read ({type(e).__name__}: {e})", path=path,
                              fix=f"restore the file, or {choose}") from e
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an fcnseg checkpoint (no format={FORMAT!r} field)", path=path,
                              fix=f"convert foreign weights with fcnseg convert, or {choose}")
    if d.get("version", 0) > VERSION:
        raise CheckpointError(f"{path} has checkpoint version {d['version']}; this fcnseg reads up to {VERSION}",
                              fix=f"upgrade fcnseg, or {choose}", path=path)
    return Checkpoint(
        model_name=d["model"]["name"], model_args=dict(d["model"]["args"]), state_dict=d["state_dict"],
        classes=list(d["classes"]), palette=[tuple(c) for c in d["palette"]],
        normalization=get_normalization(d["normalization"]), ignore_index=int(d.get("ignore_index", 255)),
        config=d.get("config"), train_state=d.get("train_state"), metrics=d.get("metrics"),
        extra=d.get("extra") or {},
    )


def load_init_weights(spec: str) -> tuple[dict[str, torch.Tensor], Normalization | None]:
    """The weights the ``init_from`` option names, and the input normalisation they imply.

    ``spec`` is one checkpoint (its state dict and normalisation), or several merged under name prefixes,
    ``color=runs/rgb/best.pt,hha=runs/hha/best.pt`` (tensors as ``color.<name>``, ``hha.<name>``; no
    normalisation implied): the reference initialises its late-fusion RGB-HHA net from trained RGB and HHA nets.
    """
    if Path(spec).is_file() or "=" not in spec:
        ck = load_checkpoint(spec, option="init_from")
        return ck.state_dict, ck.normalization
    merged: dict[str, torch.Tensor] = {}
    for part in filter(None, spec.split(",")):
        prefix, sep, path = part.partition("=")
        if not sep or not prefix or not path:
            raise ConfigError(f"init_from {spec!r}: expected a checkpoint, or NAME=CHECKPOINT,NAME=CHECKPOINT",
                              fix="set {init_from} to one checkpoint, or to NAME=CHECKPOINT pairs joined by commas")
        merged.update({f"{prefix}.{k}": v for k, v in load_checkpoint(path, option="init_from").state_dict.items()})
    return merged, None
