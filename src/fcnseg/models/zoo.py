"""``fcnseg models``: every registered model, then the paper's published results with their commands.

The results are records of experiments, not library code: they live in one data file outside the package,
``experiments/paper.toml`` at the repository's root (its header describes the layout), which
:func:`load_paper_results` reads and the documentation's tables are checked against (``tests/test_zoo.py``).

Where the file is found: :data:`PAPER_RECORDS`, the repository's ``experiments/paper.toml`` seen from this
source file (``src/fcnseg/models/zoo.py``), which is there for a source checkout and an editable install
(``pip install -e .``). A wheel does not ship the repository's root and the file is deliberately not package
data (experiment records stay outside the package): installed so, ``fcnseg models`` lists the models and says
in one line that the records are not installed and where they are (:data:`RECORDS_URL`).
"""

from __future__ import annotations

import inspect
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DataError

__all__ = ["PaperResult", "PAPER_RECORDS", "RECORDS_URL", "load_paper_results", "describe", "models_table"]

PAPER_RECORDS = Path(__file__).resolve().parents[3] / "experiments" / "paper.toml"
"""The paper's results and commands: ``experiments/paper.toml`` of the source tree this package runs from."""

RECORDS_URL = "experiments/paper.toml in fcnseg's source repository"
"""Where the records are for an installation without the source tree."""

_METRICS = ("pixel_acc", "mean_acc", "mean_iu", "fw_iu")
_EXPERIMENT_KEYS = frozenset({"name", "dataset", "command", "result"})
_ROW_KEYS = frozenset({"model", "dataset", "source", "command", "label", "status", *_METRICS})


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


def load_paper_results(path: str | os.PathLike[str] = PAPER_RECORDS) -> tuple[PaperResult, ...]:
    """Every result of the records file at ``path``, in file order.

    Raises :class:`~fcnseg.errors.DataError` (naming the file) when it is missing, is not TOML or a row does
    not follow the layout in the file's header.
    """
    path = Path(path)
    try:
        records = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise DataError(f"{path} not found: the paper's results are not installed", path=path,
                        fix=f"read them in {RECORDS_URL}, or run fcnseg from a source checkout") from e
    except tomllib.TOMLDecodeError as e:
        raise DataError(f"{path} is not valid TOML: {e}", path=path, fix="correct the file") from e
    status = records.get("status", "")
    return tuple(_result(row, exp, status, path) for exp in records.get("experiment", [])
                 for row in exp.get("result", []))


def describe(name: str) -> str:
    """The first line of a registered model factory's docstring."""
    from . import _REGISTRY, _load_backbones

    _load_backbones()
    doc = inspect.getdoc(_REGISTRY[name]) or ""
    return doc.splitlines()[0] if doc else ""


def models_table(records: str | os.PathLike[str] = PAPER_RECORDS) -> str:
    """What ``fcnseg models`` prints: every registered model with what it is, then the paper's results (from
    ``records``) with their commands, or one line saying where the results are when the file is not here."""
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
    return "\n".join(lines)
