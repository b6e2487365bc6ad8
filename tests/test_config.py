"""The command dataclasses (fcnseg.config, fcnseg.options): precedence, choices from Literal types, messages."""

from __future__ import annotations

import json
from dataclasses import fields

import pytest

from fcnseg.config import (
    RECIPES,
    ConvertConfig,
    EvalConfig,
    ExportConfig,
    HhaConfig,
    ModelsConfig,
    PredictConfig,
    TrainConfig,
    make_config,
)
from fcnseg.errors import ConfigError
from fcnseg.options import SHARED, check_choices, choices_of, resolve
from fcnseg.precision import PRECISIONS
from fcnseg.serve.config import ServeConfig

ALL = [TrainConfig, EvalConfig, PredictConfig, ExportConfig, ConvertConfig, HhaConfig, ModelsConfig, ServeConfig]


def test_make_config_precedence_defaults_recipe_file_overrides(tmp_path):
    assert make_config().batch_size == TrainConfig().batch_size == RECIPES["modern"]["batch_size"]
    assert make_config("paper").batch_size == 1  # the recipe over the default
    f = tmp_path / "c.yaml"
    f.write_text("recipe: paper\nbatch_size: 3\nlr: 0.5\nmodel_args: {width: 0.5}\n")
    cfg = make_config(None, f)
    assert (cfg.recipe, cfg.batch_size, cfg.lr, cfg.loss) == ("paper", 3, 0.5, "sum")  # file over the recipe
    cfg = make_config(None, f, batch_size=2, lr=None, model_args={"pretrained": True})
    assert (cfg.batch_size, cfg.lr) == (2, 0.5)  # overrides over the file; None is unset
    assert cfg.model_args == {"width": 0.5, "pretrained": True}  # merged key by key
    assert make_config("modern", f).recipe == "modern"  # the argument over the file's recipe


@pytest.mark.parametrize("kw, option, words", [
    (dict(loss="avg"), "loss", "sum, mean"),
    (dict(precision="fp16"), "precision", "auto, fp32, bf16"),
    (dict(check_data="some"), "check_data", "headers, labels, full, off"),
    (dict(batch_norm="fold"), "batch_norm", "auto, train, frozen"),
    (dict(batch_size=0), "batch_size", "at least 1"),
    (dict(stop_at=5, max_steps=2), "stop_at", "max_steps"),
    (dict(ema_decay=1.0), "ema_decay", "[0, 1)"),
    (dict(scale_min=2.0, scale_max=1.0), "scale_min", "scale_min <= scale_max"),
])
def test_validation_names_the_option(kw, option, words):
    with pytest.raises(ConfigError) as e:
        make_config(**kw)
    assert e.value.option == option and words in str(e.value)
    assert f"`{option}`" in str(e.value)  # Python spells the option as its field


def test_unknown_keys_and_recipes_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="bogus"):
        make_config(bogus=1)
    with pytest.raises(ConfigError, match="unknown recipe 'fast'") as e:
        make_config("fast")
    assert e.value.option == "recipe"
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"batch_sise": 4}))
    with pytest.raises(ConfigError, match="batch_sise") as e:
        make_config(None, f)
    assert e.value.option == "config"
    f.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="mapping"):
        make_config(None, f)
    bad = tmp_path / "c.yaml"
    bad.write_text("a: [1\n")
    with pytest.raises(ConfigError, match="not valid yaml"):
        make_config(None, bad)
    with pytest.raises(ConfigError, match="does not exist"):
        make_config(None, tmp_path / "missing.yaml")


def test_legacy_amp_keys_still_read(tmp_path):
    f = tmp_path / "old.json"
    f.write_text(json.dumps({"amp_cpu": True}))
    assert make_config(None, f).precision == "bf16"
    f.write_text(json.dumps({"amp": False}))
    assert make_config(None, f).precision == "fp32"


def test_choices_are_written_once_as_literal_types():
    assert choices_of(TrainConfig, "precision") == PRECISIONS
    for cls in (EvalConfig, PredictConfig, ServeConfig):
        assert choices_of(cls, "precision") == PRECISIONS and choices_of(cls, "engine") == ("torch", "onnxruntime")
    assert set(choices_of(TrainConfig, "recipe")) == set(RECIPES)
    assert choices_of(TrainConfig, "lr") is None
    cfg = EvalConfig(checkpoint="x.pt", engine="tensorrt")
    with pytest.raises(ConfigError, match="engine must be one of torch, onnxruntime, not 'tensorrt'") as e:
        check_choices(cfg)
    assert e.value.option == "engine"


def test_every_field_has_help_and_shared_options_are_one_text():
    for cls in ALL:
        for f in fields(cls):
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help"
    for name in ("device", "precision", "engine", "skip_bad", "workers"):
        helps = {f.metadata["help"] for cls in (EvalConfig, PredictConfig) for f in fields(cls) if f.name == name}
        assert helps == {SHARED[name]["help"]}, name


def test_resolve_defaults_file_flags(tmp_path):
    f = tmp_path / "eval.yaml"
    f.write_text("checkpoint: a.pt\nwindow: 32\nscales: [0.75, 1]\ndataset_args: {binary: true}\n")
    cfg = resolve(EvalConfig, f, {"window": 64, "flip": None, "dataset_args": {"classes": 2}})
    assert (cfg.checkpoint, cfg.window, cfg.flip, cfg.workers) == ("a.pt", 64, False, 2)
    assert cfg.scales == (0.75, 1.0)  # YAML's list becomes the field's tuple
    assert cfg.dataset_args == {"binary": True, "classes": 2}
    with pytest.raises(ConfigError, match="checkpoint is required") as e:
        resolve(EvalConfig, None, {})
    assert e.value.option == "checkpoint"
    with pytest.raises(ConfigError, match="out_dir is required"):
        resolve(PredictConfig, None, {"checkpoint": "a.pt", "inputs": ["x.png"]})
    with pytest.raises(ConfigError, match="windw"):
        f.write_text("windw: 3\n")
        resolve(EvalConfig, f, {"checkpoint": "a.pt"})


def test_serve_config_resolves_and_round_trips_through_json():
    cfg = resolve(ServeConfig, None, {"checkpoint": "m.pt", "port": 9000, "timeout_s": 5.0})
    assert (cfg.port, cfg.host, cfg.timeout_s, cfg.max_pixels) == (9000, "127.0.0.1", 5.0, 8_000_000)
    assert ServeConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ConfigError, match="checkpoint is required"):
        resolve(ServeConfig, None, {})
