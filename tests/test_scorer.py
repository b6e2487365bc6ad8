"""The one scorer (fcnseg.scorer): PyTorch and ONNX Runtime agree on the committed CamVid model and a real
image; each refusal of an engine setting has one wording, raised by one check, whichever command asks."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from fcnseg.checkpoint import Checkpoint, load_checkpoint, save_checkpoint, task_extra
from fcnseg.cli import flag_spelling, main
from fcnseg.config import EvalConfig, PredictConfig
from fcnseg.errors import CheckpointError, ConfigError, MissingDependency
from fcnseg.evaluate import run_eval
from fcnseg.io import read_image
from fcnseg.models import build
from fcnseg.normalization import IMAGENET
from fcnseg.predict import run_predict
from fcnseg.scorer import ScorerSpec, make_scorer
from fcnseg.serve.config import ServeConfig
from fcnseg.serve.service import Service

from conftest import REPO, TINY

CAMVID = REPO / "benchmarks" / "camvid" / "fcn8s_efficientnet_lite0_camvid.pt"


@pytest.fixture(scope="module")
def camvid_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("onnxruntime")
    from fcnseg.export import export_model

    return export_model(CAMVID, tmp_path_factory.mktemp("onnx") / "lite0.onnx")


def test_torch_and_onnxruntime_label_a_camvid_image_alike(camvid_onnx: Path, data_root: Path) -> None:
    ck = load_checkpoint(CAMVID)
    image = read_image(sorted((data_root / "camvid" / "val").glob("*.png"))[0])[None]  # uint8 (1, 3, 360, 480)
    by_torch = make_scorer(ck, device="cpu", precision="fp32")
    by_ort = make_scorer(ck, engine="onnxruntime", onnx_file=str(camvid_onnx))
    assert (by_torch.engine, by_ort.engine, by_ort.device.type) == ("torch", "onnxruntime", "cpu")
    a, b = by_torch(image), by_ort(image)
    assert a.shape == b.shape == (1, 11, 360, 480) and a.dtype == b.dtype == torch.float32
    torch.testing.assert_close(b, a.cpu(), rtol=0, atol=1e-3)  # measured: at most 4.2e-5 apart
    labels = by_torch.labels(image)
    assert torch.equal(by_ort.labels(image), labels.cpu())  # measured: 0 of 172,800 pixels differ
    assert len(labels.unique()) >= 5  # a street scene: road, sky, buildings, cars, ... (not one class)


def test_one_evaluation_loop_scores_both_engines_alike(camvid_onnx: Path, data_root: Path) -> None:
    cfg = EvalConfig(str(CAMVID), data_root=str(data_root / "camvid"), split="val", max_images=2, workers=0,
                     device="cpu", precision="fp32")
    by_torch = run_eval(cfg, progress=False)
    by_ort = run_eval(replace(cfg, engine="onnxruntime", onnx_file=str(camvid_onnx), precision="auto"),
                      progress=False)
    assert by_torch.pixels == by_ort.pixels > 0.95 * 2 * 360 * 480  # two 480x360 images, void pixels not scored
    assert by_ort.mean_iu == pytest.approx(by_torch.mean_iu, abs=1e-6) and 0.3 < by_torch.pixel_acc <= 1


# ---------------------------------------------------------------------------------------------- refusals


def _tiny(tmp_path: Path) -> Checkpoint:
    model = build("fcn8s", width=TINY, num_classes=3)
    ck = Checkpoint("fcn8s", {"width": TINY, "num_classes": 3}, model.state_dict(), ["a", "b", "c"],
                    [(0, 0, 0), (255, 0, 0), (0, 255, 0)], IMAGENET)
    save_checkpoint(ck, tmp_path / "tiny.pt")
    return ck


def _two_tasks() -> Checkpoint:  # SIFT Flow's shape: semantic and geometric heads (never built here)
    tasks = {"sem": (["a", "b"], [(0, 0, 0), (9, 9, 9)]), "geo": (["sky", "ground"], [(0, 0, 9), (9, 0, 0)])}
    return Checkpoint("fcn16s_siftflow", {"width": TINY, "num_classes": 2, "geo_classes": 2}, {}, ["a", "b"],
                      [(0, 0, 0), (9, 9, 9)], IMAGENET, extra=task_extra(tasks))


ONNX = "{tmp}/m.onnx"  # an existing file (its bytes are not read before build)
REFUSALS = [  # settings, error, the one line in Python's spelling
    ({"engine": "tensorrt"}, ConfigError, "unknown engine 'tensorrt'; fix: set `engine` to torch or onnxruntime"),
    ({"precision": "fp16"}, ConfigError, "unknown precision 'fp16'; fix: set `precision` to auto, fp32 or bf16"),
    ({"window": -5}, ConfigError, "window -5 is negative; fix: set `window` to 0 (whole images) or a side"),
    ({"onnx_file": ONNX}, ConfigError, f"ONNX file {ONNX} given to engine torch, which runs the checkpoint; "
     "fix: set `engine` to onnxruntime to run it, or leave `onnx_file` out"),
    ({"engine": "onnxruntime"}, ConfigError, "engine onnxruntime needs an ONNX file (made by `fcnseg export`); "
     "fix: pass the file as `onnx_file`"),
    ({"engine": "onnxruntime", "onnx_file": ONNX, "flip": True, "precision": "bf16"}, ConfigError,
     "engine onnxruntime runs the ONNX file as exported: its own precision (fp32, or int8 from `fcnseg export`), "
     "no test-time augmentation; fix: `flip` and `precision` are for `engine` torch: leave them out or set "
     "`engine` to torch"),
    ({"engine": "onnxruntime", "onnx_file": "{tmp}/none.onnx"}, CheckpointError,
     "ONNX file {tmp}/none.onnx does not exist; fix: pass the file `fcnseg export` wrote as `onnx_file`"),
    ({"engine": "onnxruntime", "onnx_file": ONNX, "two_tasks": True}, CheckpointError,
     "fcn16s_siftflow has 2 heads (sem, geo): engine onnxruntime takes single-task models only; fix: predict or "
     "evaluate it with `fcnseg predict` or `fcnseg eval` and `engine` torch, which handle every task"),
    ({"single_task_for": "the service", "two_tasks": True}, CheckpointError,
     "fcn16s_siftflow has 2 heads (sem, geo): the service takes single-task models only; fix: predict or "
     "evaluate it with `fcnseg predict` or `fcnseg eval` and `engine` torch, which handle every task"),
]


@pytest.mark.parametrize("settings, error, message", REFUSALS, ids=[str(r[0]) for r in REFUSALS])
def test_each_refusal_has_one_wording(tmp_path: Path, settings: dict, error: type, message: str) -> None:
    (tmp_path / "m.onnx").write_bytes(b"not read before build")
    settings = {k: v.format(tmp=tmp_path) if isinstance(v, str) else v for k, v in settings.items()}
    ck = _two_tasks() if settings.pop("two_tasks", False) else _tiny(tmp_path)
    with pytest.raises(error) as refused:
        ScorerSpec(ck, **settings)
    assert str(refused.value) == message.format(tmp=tmp_path)
    assert "--" not in str(refused.value)  # options by field name; the CLI spells them as flags
    assert all(o in {f.name for f in ScorerSpec.__dataclass_fields__.values()} for o in refused.value.options)


def test_eval_predict_and_serve_refuse_with_the_scorers_words(tmp_path: Path) -> None:
    _tiny(tmp_path)
    ckpt, words = str(tmp_path / "tiny.pt"), "engine onnxruntime needs an ONNX file (made by `fcnseg export`)"
    calls = [lambda: run_eval(EvalConfig(ckpt, engine="onnxruntime", dataset="camvid"), progress=False),
             lambda: run_predict(PredictConfig(ckpt, ["x.png"], str(tmp_path / "out"), engine="onnxruntime"),
                                 progress=False),
             lambda: Service(ServeConfig(checkpoint=ckpt, engine="onnxruntime"))]
    for call in calls:
        with pytest.raises(ConfigError) as refused:
            call()
        assert refused.value.render(flag_spelling) == f"{words}; fix: pass the file as --onnx"
    assert not (tmp_path / "out").exists()  # refused before any work


def test_an_unreadable_or_mismatched_onnx_file_is_refused_when_loaded(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from fcnseg.export import export_model

    ck = _tiny(tmp_path)
    (tmp_path / "text.onnx").write_text("not a graph")
    with pytest.raises(CheckpointError, match=r"text.onnx: ONNX Runtime cannot load it .*; fix: export it again"):
        make_scorer(ck, engine="onnxruntime", onnx_file=str(tmp_path / "text.onnx"))
    five = Checkpoint("fcn32s", {"width": TINY, "num_classes": 5}, build("fcn32s", width=TINY, num_classes=5)
                      .state_dict(), list("abcde"), [(i, i, i) for i in range(5)], IMAGENET)
    onnx_file = export_model(five, tmp_path / "five.onnx")
    with pytest.raises(CheckpointError, match="five.onnx scores 5 classes; the checkpoint fcn8s has 3"):
        make_scorer(ck, engine="onnxruntime", onnx_file=str(onnx_file))


def test_a_missing_onnxruntime_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    ck = _tiny(tmp_path)
    (tmp_path / "m.onnx").write_bytes(b"x")
    for module in ("onnxruntime", "onnx"):
        monkeypatch.setitem(sys.modules, module, None)  # as after `pip install fcnseg` without the extra
    with pytest.raises(MissingDependency) as missing:
        ScorerSpec(ck, engine="onnxruntime", onnx_file=str(tmp_path / "m.onnx"))
    assert str(missing.value) == ("engine onnxruntime needs onnxruntime, which is not installed; "
                                  "fix: pip install 'fcnseg[export]'")
    assert main(["export", str(tmp_path / "tiny.pt"), "-o", str(tmp_path / "t.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("fcnseg export: error: fcnseg export needs onnx, which is not installed; "
                   "fix: pip install 'fcnseg[export]'"), err
    assert not (tmp_path / "t.onnx").exists()
