"""``fcnseg models``: every registered model, the paper's published results with their commands, and Table 1.

The results are records of experiments, not library code: they live in one data file outside the package,
``experiments/paper.toml`` at the repository's root (its header describes the layout), which
:func:`load_paper_results` reads and the documentation's tables are checked against (``tests/test_zoo.py``).

Where the file is found: :data:`PAPER_RECORDS`, the repository's ``experiments/paper.toml`` seen from this
source file (``src/fcnseg/models/zoo.py``), which is there for a source checkout and an editable install
(``pip install -e .``). A wheel does not ship the repository's root and the file is deliberately not package
data (experiment records stay outside the package): installed so, ``fcnseg models`` lists the models and says
in one line that the records are not installed and where they are (:data:`RECORDS_URL`).

The paper's Table 1 (its ``[[architecture]]`` rows: FCN-AlexNet, FCN-VGG16, FCN-GoogLeNet) is printed beside what
fcnseg computes for the same nets (:func:`computed_architecture`): the built model's parameters, and its
receptive field, stride and convolutions composed from its layers (:func:`~fcnseg.models.geometry.receptive_field`).
"""

from __future__ import annotations

import inspect
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataError

__all__ = ["PaperResult", "PaperArchitecture", "ComputedArchitecture", "PAPER_RECORDS", "RECORDS_URL",
           "load_paper_results", "load_paper_architectures", "computed_architecture", "architectures_table",
           "describe", "models_table"]

PAPER_RECORDS = Path(__file__).resolve().parents[3] / "experiments" / "paper.toml"
"""The paper's results and commands: ``experiments/paper.toml`` of the source tree this package runs from."""

RECORDS_URL = "experiments/paper.toml in fcnseg's source repository"
"""Where the records are for an installation without the source tree."""

_METRICS = ("pixel_acc", "mean_acc", "mean_iu", "fw_iu")
_EXPERIMENT_KEYS = frozenset({"name", "dataset", "command", "result"})
_ROW_KEYS = frozenset({"model", "dataset", "source", "command", "label", "status", *_METRICS})
_ARCH_NUMBERS = ("mean_iu", "forward_ms", "conv_layers", "params_m", "rf_size", "max_stride")
_ARCH_KEYS = frozenset({"model", "label", "source", "note", *_ARCH_NUMBERS})


@dataclass(frozen=True)
class PaperResult:
    """One published result and the command that would reproduce it (a row of ``experiments/paper.toml``).

    Attributes:
        model: registry name.
        dataset: what is scored (split, images).
        source: where the number is published (paper version, table, row).
        pixel_acc, mean_acc, mean_iu, fw_iu: the paper's metrics in percent (``None``: not published).
        command: the whole command line that would reproduce it: the experiment's shared part, then ``args``.
        status: what fcnseg measured (e.g. "not run here: needs the dataset").
        experiment: the name of the experiment (group of rows) it belongs to.
        args: the row's own part of ``command`` (what follows the experiment's shared part).
        label: the row's name in the documentation's table ("" when it has no table for it).
    """

    model: str
    dataset: str
    source: str
    pixel_acc: float | None
    mean_acc: float | None
    mean_iu: float | None
    fw_iu: float | None
    command: str
    status: str
    experiment: str = ""
    args: str = ""
    label: str = ""

    def metrics(self) -> str:
        """``pixel acc / mean acc / mean IU / f.w. IU`` with ``-`` for unpublished ones."""
        return " / ".join("-" if v is None else f"{v:.1f}" for v in
                          (self.pixel_acc, self.mean_acc, self.mean_iu, self.fw_iu))


@dataclass(frozen=True)
class PaperArchitecture:
    """One row of the paper's Table 1 (an ``[[architecture]]`` of ``experiments/paper.toml``).

    Attributes:
        model: registry name; label: the paper's row ("FCN-GoogLeNet"); source: where it is published.
        mean_iu: mean IU (%) on PASCAL VOC 2011 val (the paper's subset), as FCN-32s.
        forward_ms: inference time of a 500x500 input on an NVIDIA Tesla K40c (milliseconds).
        conv_layers, params_m, rf_size, max_stride: parameter layers, parameters (millions), receptive field
            and coarsest stride (pixels).
        note: what to know when comparing the row with fcnseg's numbers ("" when nothing).
    """

    model: str
    label: str
    source: str
    mean_iu: float
    forward_ms: float
    conv_layers: int
    params_m: float
    rf_size: int
    max_stride: int
    note: str = ""


@dataclass(frozen=True)
class ComputedArchitecture:
    """What fcnseg computes for a registered net: :attr:`params` of the built model, and the receptive field,
    stride and convolutions along its main path from the input to the score layer (``score_fr``)."""

    params: int
    rf_size: int
    max_stride: int
    conv_layers: int


def _join(*parts: str) -> str:
    """Command parts as one line (the file wraps long commands over lines)."""
    return " ".join(" ".join(parts).split())


def _result(row: dict[str, Any], experiment: dict[str, Any], status: str, path: Path) -> PaperResult:
    dataset = row.get("dataset", experiment.get("dataset"))
    problems = [f"unknown key {k!r}" for k in row if k not in _ROW_KEYS]
    problems += [f"unknown experiment key {k!r}" for k in experiment if k not in _EXPERIMENT_KEYS]
    problems += [f"no {k!r}" for k in ("model", "source", "mean_iu") if k not in row] + ["no 'dataset'"] * (not dataset)
    if problems:
        raise DataError(f"{path}: experiment {experiment.get('name')!r}, result {row.get('model')!r}: "
                        f"{', '.join(problems)}", fix="follow the layout in the file's header", path=path)
    args = _join(row.get("command", ""))
    return PaperResult(
        model=row["model"], dataset=dataset, source=row["source"],
        **{k: None if row.get(k) is None else float(row[k]) for k in _METRICS},  # type: ignore[arg-type]
        command=_join(experiment.get("command", ""), args), status=row.get("status", status),
        experiment=experiment.get("name", ""), args=args, label=row.get("label", ""))


def _read_records(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise DataError(f"{path} not found: the paper's results are not installed", path=path,
                        fix=f"read them in {RECORDS_URL}, or run fcnseg from a source checkout") from e
    except tomllib.TOMLDecodeError as e:
        raise DataError(f"{path} is not valid TOML: {e}", path=path, fix="correct the file") from e


def load_paper_results(path: str | os.PathLike[str] = PAPER_RECORDS) -> tuple[PaperResult, ...]:
    """Every result of the records file at ``path``, in file order.

    Raises :class:`~fcnseg.errors.DataError` (naming the file) when it is missing, is not TOML or a row does
    not follow the layout in the file's header.
    """
    path = Path(path)
    records = _read_records(path)
    status = records.get("status", "")
    return tuple(_result(row, exp, status, path) for exp in records.get("experiment", [])
                 for row in exp.get("result", []))


def load_paper_architectures(path: str | os.PathLike[str] = PAPER_RECORDS) -> tuple[PaperArchitecture, ...]:
    """The paper's Table 1 rows in the records file at ``path`` (its ``[[architecture]]`` entries), in order.

    Raises :class:`~fcnseg.errors.DataError` (naming the file) as :func:`load_paper_results` does, and for a row
    that does not follow the layout in the file's header.
    """
    path = Path(path)
    records = _read_records(path)
    rows = []
    for row in records.get("architecture", []):
        problems = [f"unknown key {k!r}" for k in row if k not in _ARCH_KEYS]
        problems += [f"no {k!r}" for k in ("model", "label", "source", *_ARCH_NUMBERS) if k not in row]
        if problems:
            raise DataError(f"{path}: architecture {row.get('label', row.get('model'))!r}: {', '.join(problems)}",
                            fix="follow the layout in the file's header", path=path)
        rows.append(PaperArchitecture(**row))
    return tuple(rows)


def computed_architecture(name: str, num_classes: int = 21) -> ComputedArchitecture:
    """Table 1's columns for the registered net ``name``, from the net itself (built on the meta device: no
    memory, no arithmetic). The path is the encoder's up to ``fc7`` (the feature ``score_fr`` scores), then
    ``score_fr``; for GoogLeNet's inception modules, the largest branch (their 5x5 convolutions).

    Raises :class:`~fcnseg.errors.ConfigError` for a net whose encoder does not list its layers (``path``: the
    paper's trunks do; the timm encoders do not).
    """
    import torch

    from . import build
    from .geometry import receptive_field

    with torch.device("meta"):
        model = build(name, num_classes=num_classes)
    path = getattr(model.encoder, "path", None)
    if path is None:
        raise ConfigError(f"model {name!r}'s encoder does not list its layers; its receptive field is not computed",
                          fix="choose one of the paper's nets for {model}")
    rf = receptive_field([*path("fc7"), model.score_fr])
    return ComputedArchitecture(sum(p.numel() for p in model.parameters()), rf.size, rf.stride, rf.conv_layers)


def forward_ms(name: str, size: int = 500, repeats: int = 3, num_classes: int = 21) -> float:
    """Median wall time in milliseconds of one fp32 forward pass of the registered net ``name`` (random weights,
    eval mode, no gradients) on a ``size`` x ``size`` image, on this machine's CPU, after one warm-up pass."""
    import time

    import torch

    from . import build

    model = build(name, num_classes=num_classes).eval()
    x = torch.zeros(1, 3, size, size)
    times = []
    with torch.no_grad():
        model(x)
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
    return 1000 * sorted(times)[len(times) // 2]


def architectures_table(records: str | os.PathLike[str] = PAPER_RECORDS, *, timed: bool = False) -> list[str]:
    """The lines of ``fcnseg models``'s Table 1 section: each of the paper's rows, "paper | fcnseg" per column
    (mean IU is the paper's alone; the forward time too unless ``timed``, which measures it on this machine's
    CPU with :func:`forward_ms`); ``[]`` when the records hold no such rows."""
    rows = load_paper_architectures(records)
    if not rows:
        return []
    label_w = max(len(r.label) for r in rows)
    model_w = max(len(r.model) for r in rows)
    head = (f"  {'':<{label_w}}  {'':<{model_w}}  {'mean IU':>7}  {'forward':>7}  {'conv layers':>11}  "
            f"{'parameters':>14}  {'rf size':>9}  {'max stride':>10}")
    lines = ["", f"{rows[0].source}, the classifiers as FCN-32s. Mean IU (PASCAL VOC 2011 val) and forward time (a "
             "500x500 input on a Tesla K40c) are the paper's,", "not measured here; the other columns are paper | "
             "fcnseg, computed from the layers of the built net (21 classes):", "", head]
    if timed:
        import platform

        import torch

        lines[1:3] = [f"{rows[0].source}, the classifiers as FCN-32s. Mean IU (PASCAL VOC 2011 val) is the paper's; "
                      "forward time (500x500) is the paper's on a Tesla K40c | fcnseg's here,",
                      f"fp32 on this CPU ({platform.processor() or platform.machine()}, "
                      f"{torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()}); the other "
                      "columns are paper | fcnseg, computed from the layers of the built net (21 classes):"]
        lines[-1] = lines[-1].replace(f"{'forward':>7}", f"{'forward':>17}")
    for r in rows:
        c = computed_architecture(r.model)
        fwd = f"{r.forward_ms:>4g} ms"
        if timed:
            fwd = f"{f'{r.forward_ms:g} | {forward_ms(r.model):.0f} ms':>17}"
        lines.append(f"  {r.label:<{label_w}}  {r.model:<{model_w}}  {r.mean_iu:>7.1f}  {fwd}  "
                     f"{f'{r.conv_layers} | {c.conv_layers}':>11}  "
                     f"{f'{r.params_m:g}M | {c.params / 1e6:.1f}M':>14}  {f'{r.rf_size} | {c.rf_size}':>9}  "
                     f"{f'{r.max_stride} | {c.max_stride}':>10}")
        if r.note:
            lines.append(f"  {'':<{label_w}}  {'':<{model_w}}  {r.note}")
    return lines


def describe(name: str) -> str:
    """The first line of a registered model factory's docstring."""
    from . import _REGISTRY, _load_backbones

    _load_backbones()
    doc = inspect.getdoc(_REGISTRY[name]) or ""
    return doc.splitlines()[0] if doc else ""


def models_table(records: str | os.PathLike[str] = PAPER_RECORDS, *, timed: bool = False) -> str:
    """What ``fcnseg models`` prints: every registered model with what it is, then the paper's results (from
    ``records``) with their commands, or one line saying where the results are when the file is not here;
    ``timed`` measures Table 1's forward times here (:func:`architectures_table`)."""
    from . import list_models

    names = list_models()
    width = max(map(len, names))
    lines = ["Models (fcnseg.models.build(name)):", ""]
    lines += [f"  {n:<{width}}  {describe(n)}" for n in names]
    if not Path(records).is_file():
        return "\n".join([*lines, "", f"The paper's results and their commands: not installed here ({records} "
                          f"is missing); see {RECORDS_URL}."])
    lines += ["", "The paper's results (pixel acc / mean acc / mean IU / f.w. IU, %) and the commands that would "
              "reproduce them:", ""]
    for r in load_paper_results(records):
        lines.append(f"  {r.model:<{width}}  {r.dataset}: {r.metrics()}  [{r.source}]")
        lines.append(f"  {'':<{width}}  {r.status}")
        lines.append(f"  {'':<{width}}  $ {r.command}")
    return "\n".join(lines + architectures_table(records, timed=timed))
