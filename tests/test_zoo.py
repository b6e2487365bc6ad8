"""``fcnseg models``: every registered model, and the paper's results beside commands that parse as written."""

from __future__ import annotations

import shlex

import pytest

from fcnseg.cli import build_parser, main, train_config
from fcnseg.data import DATASETS
from fcnseg.models import list_models
from fcnseg.models.zoo import NOT_RUN, PAPER_RESULTS, describe


def test_every_row_names_a_model_and_its_numbers():
    models = set(list_models())
    for r in PAPER_RESULTS:
        assert r.model in models, r
        assert r.mean_iu is not None and 0 < r.mean_iu < 100
        assert all(v is None or 0 < v < 100 for v in (r.pixel_acc, r.mean_acc, r.fw_iu))
    rows = {(r.model, r.source): r for r in PAPER_RESULTS}
    nyud = rows[("fcn16s_rgb_hha", "CVPR 2015 Table 4, FCN-16s RGB-HHA")]
    assert (nyud.pixel_acc, nyud.mean_acc, nyud.mean_iu, nyud.fw_iu) == (65.4, 46.1, 34.0, 49.5)
    assert nyud.status == NOT_RUN and nyud.metrics() == "65.4 / 46.1 / 34.0 / 49.5"


@pytest.mark.parametrize("row", [r for r in PAPER_RESULTS if r.command.startswith("fcnseg train")],
                         ids=lambda r: f"{r.model}-{r.dataset}")
def test_train_commands_parse_as_written(row):
    args = build_parser().parse_args(shlex.split(row.command)[1:])
    cfg = train_config(args)
    assert cfg.model == row.model and cfg.recipe == "paper"
    assert cfg.dataset in DATASETS
    if cfg.dataset == "nyud":  # the input, the normalisation and the net agree on the channels
        channels = {"rgb": 3, "hha": 3, "rgbd": 4, "rgb_hha": 6}[cfg.dataset_args["modality"]]
        from fcnseg.normalization import get_normalization

        assert len(get_normalization(cfg.normalization).mean) == channels


def test_models_command_prints_the_table(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in list_models():
        assert name in out
    assert describe("fcn32s_rgbd") in out
    assert "NYUDv2 test (654), RGB-D: 61.5 / 42.4 / 30.5 / 45.5" in out
    assert "PASCAL-Context val (5105), 59 classes: 67.5 / 52.3 / 39.1 / 53.0" in out
    assert out.count(NOT_RUN) == len(PAPER_RESULTS)
    assert main(["models", "--names"]) == 0
    assert capsys.readouterr().out.split() == list_models()


def test_readme_gives_the_same_commands_and_numbers():
    from conftest import REPO

    readme = " ".join((REPO / "README.md").read_text().split())
    for r in PAPER_RESULTS:
        if r.dataset.startswith(("NYUDv2", "PASCAL-Context")):  # the README's "paper's other experiments"
            tail = r.command[r.command.index("--dataset-arg modality") if "modality" in r.command
                             else r.command.index("--model"):]
            assert f"| {r.metrics()} | `{tail}` |" in readme, r
