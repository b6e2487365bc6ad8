"""``fcnseg models``: every registered model, and the paper's results (experiments/paper.toml, the one source)
beside commands that parse as written; the documentation's tables say the same as the file."""

from __future__ import annotations

import re
import shlex

import pytest

from fcnseg.cli import build_parser, main, train_config
from fcnseg.data import DATASETS
from fcnseg.errors import DataError
from fcnseg.models import list_models
from fcnseg.models.zoo import PAPER_RECORDS, describe, load_paper_results, models_table

from conftest import REPO

RESULTS = load_paper_results()
NOT_RUN = "not run here: needs the dataset"


def test_records_are_the_repositorys_file():
    assert PAPER_RECORDS == REPO / "experiments" / "paper.toml"  # outside src/, found from a checkout


def test_every_row_names_a_model_and_its_numbers():
    models = set(list_models())
    assert len(RESULTS) == 17
    for r in RESULTS:
        assert r.model in models, r
        assert r.mean_iu is not None and 0 < r.mean_iu < 100
        assert all(v is None or 0 < v < 100 for v in (r.pixel_acc, r.mean_acc, r.fw_iu))
        assert r.command.endswith(r.args) and "  " not in r.command and "\\" not in r.command
    rows = {(r.model, r.source): r for r in RESULTS}
    nyud = rows[("fcn16s_rgb_hha", "CVPR 2015 Table 4, FCN-16s RGB-HHA")]
    assert (nyud.pixel_acc, nyud.mean_acc, nyud.mean_iu, nyud.fw_iu) == (65.4, 46.1, 34.0, 49.5)
    assert nyud.status == NOT_RUN and nyud.metrics() == "65.4 / 46.1 / 34.0 / 49.5"
    assert nyud.command.startswith("fcnseg train --recipe paper --dataset nyud --data data/nyud ")
    voc = rows[("fcn8s", "PAMI 2016 abstract, FCN-8s")]
    assert (voc.dataset, voc.metrics(), voc.args) == ("PASCAL VOC 2012 test", "- / - / 67.2 / -", "")


@pytest.mark.parametrize("row", [r for r in RESULTS if r.command.startswith("fcnseg train")],
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
    assert out.count(NOT_RUN) == len(RESULTS)
    assert all(f"$ {r.command}\n" in out + "\n" for r in RESULTS)
    assert main(["models", "--names"]) == 0
    assert capsys.readouterr().out.split() == list_models()


def test_without_the_records_the_models_are_listed_and_the_gap_named(tmp_path):
    missing = tmp_path / "paper.toml"
    out = models_table(missing)
    assert describe("fcn8s") in out and "not installed here" in out and str(missing) in out
    assert out.count("\n") == len(list_models()) + 3  # header, blank, models, blank, the one line
    with pytest.raises(DataError, match="paper.toml not found") as e:
        load_paper_results(missing)
    assert e.value.path == str(missing)


def test_a_malformed_record_is_named(tmp_path):
    bad = tmp_path / "paper.toml"
    bad.write_text('status = "x"\n[[experiment]]\nname = "E"\n[[experiment.result]]\nmodel = "fcn8s"\n'
                   'source = "s"\nmean_iou = 1.0\n')
    with pytest.raises(DataError, match=r"paper.toml: experiment 'E', result 'fcn8s': unknown key 'mean_iou', "
                                        r"no 'mean_iu', no 'dataset'"):
        load_paper_results(bad)
    bad.write_text('[[experiment]]\nname = "E"\ndataset = "d"\ncomand = "x"\n[[experiment.result]]\nmodel = "m"\n'
                   'source = "s"\nmean_iu = 1.0\n')
    with pytest.raises(DataError, match="unknown experiment key 'comand'"):
        load_paper_results(bad)
    bad.write_text("status = \n")
    with pytest.raises(DataError, match="paper.toml is not valid TOML"):
        load_paper_results(bad)


PAGES = [REPO / "docs" / "tutorials" / "paper-experiments.md", REPO / "docs" / "tutorials" / "siftflow.md"]
"""The documentation pages that carry the paper's tables."""


def _tables_text() -> str:
    """Those pages up to their model zoo (a table of fcnseg's own, not the paper's), one text."""
    return "\n".join(p.read_text().split("## The model zoo")[0] for p in PAGES)


def test_docs_give_the_same_commands_and_numbers():
    text = _tables_text()
    folded = " ".join(text.replace("\\\n", " ").split())
    labelled = [r for r in RESULTS if r.label]
    assert {r.experiment for r in labelled} == {"NYUDv2", "PASCAL-Context", "SIFT Flow"}
    for r in labelled:
        if r.args != r.command:  # a table of the rows' own arguments after the experiment's shared command
            shared = r.command.removesuffix(r.args).strip()
            assert f"Every line: `{shared}` followed by" in folded, r.experiment
            assert f"| {r.label} | {r.metrics()} | `{r.args}` |" in folded, r
        else:  # SIFT Flow: the command in a block, the numbers in a table of their own
            assert r.command in folded, r
            assert f"| {r.label} | {r.metrics().replace(' / ', ' | ')} |" in folded, r
    # Every row of those tables is a record of the file.
    assert len(re.findall(r"^\| FCN-", text, re.M)) == len(labelled)
