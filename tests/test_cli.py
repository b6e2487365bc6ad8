"""fcnseg.cli: parsers generated from the command dataclasses, --config precedence, flag spellings, extras."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fcnseg.cli import COMMANDS, build_parser, flag_spelling, main, options_of, train_config
from fcnseg.config import EvalConfig, PredictConfig
from fcnseg.data import DATASETS
from fcnseg.options import cli_fields, flag_of
from fcnseg.serve.config import ServeConfig


def _subparsers() -> dict:
    parser = build_parser()
    return parser._subparsers._group_actions[0].choices


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_field_has_a_flag_with_help(command):
    cmd = COMMANDS[command]
    actions = {a.dest: a for a in _subparsers()[command]._actions}
    for cls in (cmd.options, *cmd.extras):
        for f in cli_fields(cls):
            action = actions.get(f.name)
            assert action is not None, f"{command}: no flag for {cls.__name__}.{f.name}"
            assert action.help and action.help.strip(), f"{command} {flag_of(f)}: no help"
            assert action.option_strings == [] or flag_of(f) in action.option_strings


def test_a_literal_choice_is_enforced_by_argparse(capsys):
    for argv in (["eval", "--checkpoint", "a.pt", "--precision", "fp16"], ["train", "--loss", "avg"],
                 ["serve", "--checkpoint", "a.pt", "--engine", "tensorrt"]):
        with pytest.raises(SystemExit) as e:
            build_parser().parse_args(argv)
        assert e.value.code == 2
        assert "invalid choice" in capsys.readouterr().err


def test_existing_flag_spellings_keep_their_meaning():
    p = build_parser()
    cfg = options_of(PredictConfig, p.parse_args(["predict", "--checkpoint", "a.pt", "x.png", "y", "-o", "out",
                                                  "--no-overlay", "--onnx", "m.onnx", "--skip-bad"]))
    assert (cfg.inputs, cfg.out_dir, cfg.overlay, cfg.onnx_file, cfg.skip_bad) == (["x.png", "y"], "out", False,
                                                                                    "m.onnx", True)
    cfg = options_of(EvalConfig, p.parse_args(["eval", "--checkpoint", "a.pt", "--onnx", "m.onnx", "--data", "d",
                                               "--dataset-arg", "binary=true", "--scales", "0.75,1", "--flip"]))
    assert (cfg.onnx_file, cfg.data_root, cfg.dataset_args, cfg.scales, cfg.flip) == (
        "m.onnx", "d", {"binary": True}, (0.75, 1.0), True)
    cfg = options_of(ServeConfig, p.parse_args(["serve", "--checkpoint", "a.pt", "--timeout", "5", "--onnx", "m"]))
    assert (cfg.timeout_s, cfg.onnx, cfg.port) == (5.0, "m", 8000)
    a = p.parse_args(["train", "--out", "r", "--data", "d", "--model-arg", "width=0.25", "--pretrained",
                      "--dataset-arg", "binary=true", "--no-hflip", "--quiet", "--dry-run"])
    cfg = train_config(a)
    assert (cfg.out_dir, cfg.data_root, cfg.hflip, a.quiet, a.dry_run) == ("r", "d", False, True, True)
    assert cfg.model_args == {"width": 0.25, "pretrained": True} and cfg.dataset_args == {"binary": True}
    with pytest.raises(SystemExit):
        p.parse_args(["train", "--model-arg", "width"])  # KEY=VALUE is checked by argparse


def test_config_file_for_eval_predict_and_train_flags_win(tmp_path):
    p = build_parser()
    f = tmp_path / "eval.yaml"
    f.write_text("checkpoint: a.pt\nwindow: 32\nflip: true\nprecision: fp32\n")
    cfg = options_of(EvalConfig, p.parse_args(["eval", "--config", str(f), "--window", "64"]))
    assert (cfg.checkpoint, cfg.window, cfg.flip, cfg.precision, cfg.workers) == ("a.pt", 64, True, "fp32", 2)
    f = tmp_path / "predict.json"
    f.write_text(json.dumps({"checkpoint": "a.pt", "inputs": ["x.png"], "out_dir": "o", "overlay": False}))
    cfg = options_of(PredictConfig, p.parse_args(["predict", "--config", str(f), "-o", "o2"]))
    assert (cfg.inputs, cfg.out_dir, cfg.overlay) == (["x.png"], "o2", False)
    cfg = options_of(PredictConfig, p.parse_args(["predict", "--config", str(f), "z.png", "--overlay"]))
    assert (cfg.inputs, cfg.out_dir, cfg.overlay) == (["z.png"], "o", True)
    f = tmp_path / "train.yaml"
    f.write_text("recipe: paper\nbatch_size: 4\nlr: 0.05\n")
    cfg = train_config(p.parse_args(["train", "--config", str(f), "--lr", "0.1"]))
    assert (cfg.recipe, cfg.batch_size, cfg.lr, cfg.loss) == ("paper", 4, 0.1, "sum")


def test_errors_name_flags(tmp_path, capsys):
    assert main(["eval"]) == 2
    assert capsys.readouterr().err.strip() == "fcnseg eval: error: checkpoint is required; fix: give --checkpoint"
    f = tmp_path / "c.yaml"
    f.write_text("windw: 3\n")
    assert main(["eval", "--config", str(f), "--checkpoint", "a.pt"]) == 2
    err = capsys.readouterr().err
    assert "unknown option windw" in err and "fix: correct the names in --config" in err
    assert main(["train", "--batch-size", "0", "--dry-run"]) == 2
    assert "fix: set --batch-size to 1 or more" in capsys.readouterr().err
    assert main(["convert", "caffe", str(tmp_path / "none.caffemodel"), "-o", "x.pt", "--model", "fcn8s"]) == 2
    assert capsys.readouterr().err.strip().endswith("none.caffemodel: no such file; fix: check SOURCE")


def test_flag_spelling_comes_from_the_parsers():
    assert flag_spelling("out_dir") == "--out"
    assert flag_spelling("onnx_file") == "--onnx"
    assert flag_spelling("timeout_s") == "--timeout"
    assert flag_spelling("data_root") == "--data"
    assert (flag_spelling("model_args"), flag_spelling("dataset_args")) == ("--model-arg", "--dataset-arg")
    assert flag_spelling("skip_bad") == "--skip-bad"
    assert flag_spelling("config") == "--config"
    assert flag_spelling("not_an_option") == "--not-an-option"  # the fallback
    assert flag_spelling("checkpoint") == "--checkpoint"
    assert flag_spelling("checkpoint", "export") == "CHECKPOINT"  # export's is positional
    assert flag_spelling("out", "export") == "--out" and flag_spelling("source", "convert") == "SOURCE"


def test_dataset_help_lists_every_family(capsys):
    for command in ("train", "eval"):
        with pytest.raises(SystemExit):
            build_parser().parse_args([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "dataset family: " + ", ".join(DATASETS) in text


@pytest.mark.parametrize("module, argv, extra", [
    ("uvicorn", ["serve", "--checkpoint", "missing.pt"], "serve"),
    ("onnx", ["export", "missing.pt", "-o", "m.onnx"], "export"),
])
def test_a_missing_extra_is_one_line_naming_it(tmp_path, module, argv, extra):
    shim = tmp_path / "shim" / module
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text(f"raise ModuleNotFoundError(\"No module named {module!r}\", name={module!r})\n")
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "shim"), src])}
    r = subprocess.run([sys.executable, "-m", "fcnseg", *argv], capture_output=True, text=True, env=env,
                       cwd=tmp_path, timeout=300)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [
        f"fcnseg {argv[0]}: error: fcnseg {argv[0]} needs {module}, which is not installed; "
        f"fix: pip install 'fcnseg[{extra}]'"]
