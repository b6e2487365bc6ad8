"""The error family (fcnseg.errors): one root, options named by field, each caller's spelling."""

from __future__ import annotations

import pickle

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from fcnseg.cli import flag_spelling
from fcnseg.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    FcnsegError,
    MissingDependency,
    OutputError,
    PredictionError,
    TrainingInterrupted,
    optional_import,
)


def test_fix_names_fields_and_each_caller_spells_them() -> None:
    e = DataError("a.png: not an image", fix="remove it or turn on {skip_bad}", path="a.png")
    assert e.options == ("skip_bad",) and e.option == "skip_bad" and e.path == "a.png"
    assert str(e) == "a.png: not an image; fix: remove it or turn on `skip_bad`"
    assert e.render(flag_spelling) == "a.png: not an image; fix: remove it or turn on --skip-bad"
    assert e.render(flag_spelling, with_fix=False) == "a.png: not an image"
    out = OutputError("runs/x exists", fix="choose another {out_dir} or set {overwrite}")
    assert out.options == ("out_dir", "overwrite")
    assert out.render(flag_spelling) == "runs/x exists; fix: choose another --out or set --overwrite"


def test_one_root_and_the_builtins_they_replaced() -> None:
    for cls, builtin in ((ConfigError, ValueError), (DataError, ValueError), (OutputError, ValueError),
                         (CheckpointError, ValueError), (PredictionError, RuntimeError)):
        assert issubclass(cls, FcnsegError) and issubclass(cls, builtin)
    assert DataError("x").exit_code == 2 and PredictionError("x").exit_code == 1
    assert TrainingInterrupted(3, "r/last.pt", "SIGINT").exit_code == 130


def test_pickle_keeps_parts() -> None:
    e = pickle.loads(pickle.dumps(TrainingInterrupted(7, "r/last.pt", "SIGTERM")))
    assert isinstance(e, TrainingInterrupted) and e.step == 7 and e.path == "r/last.pt"
    assert e.render(flag_spelling) == "SIGTERM at step 7: saved r/last.pt; fix: resume with --resume r/last.pt"


class _Bad(Dataset):
    def __len__(self) -> int:
        return 1

    def __getitem__(self, i: int) -> torch.Tensor:
        raise DataError("img_0.png: truncated", fix="re-export the file or turn on {skip_bad}")


def test_error_from_a_loader_worker_keeps_its_fix_and_option() -> None:
    with pytest.raises(DataError) as info:
        next(iter(DataLoader(_Bad(), num_workers=1)))
    e = info.value
    assert e.what == "img_0.png: truncated" and e.options == ("skip_bad",)
    assert e.render(flag_spelling) == "img_0.png: truncated; fix: re-export the file or turn on --skip-bad"


def test_missing_dependency_names_the_extra() -> None:
    with pytest.raises(MissingDependency) as info:
        optional_import("uvicorn_not_installed_here", "fcnseg serve")
    assert "fcnseg serve needs uvicorn_not_installed_here" in str(info.value)
    e = MissingDependency("uvicorn", "serve", needed_for="fcnseg serve")
    assert str(e) == "fcnseg serve needs uvicorn, which is not installed; fix: pip install 'fcnseg[serve]'"
    assert isinstance(e, ImportError)
