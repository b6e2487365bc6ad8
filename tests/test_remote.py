"""Inputs by URL (:mod:`fcnseg.remote`): a folder served over HTTP on 127.0.0.1 is listed like a local folder
and predicted to the same labels; resume, bad files and missing back ends over URLs."""

from __future__ import annotations

import json
import logging
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fcnseg import remote
from fcnseg.checkpoint import load_checkpoint
from fcnseg.cli import main
from fcnseg.config import PredictConfig
from fcnseg.errors import DataError, MissingDependency
from fcnseg.manifest import read_manifest
from fcnseg.predict import collect_inputs, collect_keyed_inputs, output_stems, predict_files
from test_predict_scale import CAMVID_CKPT, camvid, free_port, labels_of, tiny_checkpoint

from conftest import serve_folder

pytest.importorskip("aiohttp")  # fsspec's HTTP file system (the `remote` extra, in `dev`)


@pytest.fixture
def served(tmp_path) -> Path:
    """A folder of 3 random 40x48 PNGs, one in a subfolder, a text file and a hidden file."""
    rng = np.random.default_rng(1)
    root = tmp_path / "www"
    (root / "tiles" / "row1").mkdir(parents=True)
    for name in ("tiles/a.png", "tiles/b.png", "tiles/row1/a.png"):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(root / name)
    (root / "tiles" / "notes.txt").write_text("not an image")
    (root / "tiles" / ".hidden.png").write_bytes(b"")
    return root


def test_what_is_a_url():
    assert remote.is_url("https://host/a.png") and remote.is_url("s3://bucket/key") and remote.is_url("file:///x")
    assert not remote.is_url("C:/data/a.png") and not remote.is_url("C:\\data") and not remote.is_url("data/a.png")
    assert remote.url_stem("https://h/a/b%20c.png?sig=1") == "b c"
    assert output_stems(["https://h/x/a.png", "https://h/y/a.png", "local/a.png"]) == ["a", "a_1", "a_2"]


def test_http_folder_is_listed_like_the_local_folder(served, caplog):
    with serve_folder(served) as base, caplog.at_level(logging.WARNING, "fcnseg.predict"):
        got = collect_keyed_inputs([base + "tiles/"])
        one = collect_keyed_inputs([base + "tiles/b.png"])
    local = collect_keyed_inputs([served / "tiles"])
    assert [k for _, k in got] == [k for _, k in local] == ["a.png", "b.png", "row1/a.png"]
    assert [f for f, _ in got] == [base + "tiles/" + k for _, k in local]
    assert one == [(base + "tiles/b.png", "b.png")]
    assert any("skipping 1 files that are not images" in r.getMessage() for r in caplog.records)  # notes.txt


def test_file_url_is_the_local_folder(served):
    got = collect_keyed_inputs([(served / "tiles").as_uri()])
    assert [k for _, k in got] == ["a.png", "b.png", "row1/a.png"]
    assert got[0][0] == (served / "tiles" / "a.png").as_uri()


def test_predict_over_https_writes_what_the_local_folder_gives(data_root, tmp_path):
    # CamVid val images served on 127.0.0.1, read by two loader workers (forked: fsspec's HTTP client after fork).
    www = tmp_path / "www" / "val"
    www.mkdir(parents=True)
    for p in camvid(data_root, 3):
        shutil.copy(p, www / p.name)
    common = ["--checkpoint", str(CAMVID_CKPT), "--format", "png,rle", "--no-overlay", "--workers", "2",
              "--device", "cpu", "--quiet"]
    assert main(["predict", str(www), "-o", str(tmp_path / "local"), *common]) == 0
    with serve_folder(tmp_path / "www") as base:
        assert main(["predict", base + "val/", "-o", str(tmp_path / "url"), *common]) == 0
    local, url = labels_of(tmp_path / "local"), labels_of(tmp_path / "url")
    assert sorted(local) == sorted(url) and len(local) == 3
    for name in local:
        np.testing.assert_array_equal(url[name], local[name], err_msg=name)
    records = {name: [json.loads(line) for line in (tmp_path / name / "predictions.jsonl").open()]
               for name in ("local", "url")}
    assert [r["file"] for r in records["url"]] == [base + "val/" + p.name for p in sorted(www.iterdir())]
    for a, b in zip(records["local"], records["url"], strict=True):
        assert {**a, "file": ""} == {**b, "file": ""}
    assert set(read_manifest(tmp_path / "url" / "manifest.jsonl")) == {r["file"] for r in records["url"]}


def test_resume_over_urls_does_only_the_rest(served, tmp_path):
    ck_path = tiny_checkpoint(tmp_path / "ck.pt", 0)
    ck = load_checkpoint(ck_path)
    out = tmp_path / "out"
    with serve_folder(served) as base:
        cfg = PredictConfig(checkpoint=str(ck_path), inputs=[base + "tiles/a.png"], out_dir=str(out),
                            overlay=False, workers=0, device="cpu")
        first = predict_files(ck, cfg, progress=False)
        again = predict_files(ck, replace(cfg, inputs=[base + "tiles/"], resume=True), progress=False)
    assert (first["images"], first["resumed"]) == (1, 0)
    assert (again["images"], again["resumed"]) == (2, 1)  # a.png was done; b.png and row1/a.png were not
    assert sorted(p.name for p in out.glob("*.png")) == ["a.png", "a_1.png", "b.png"]


def test_a_broken_url_is_skipped_or_refused_in_one_line(served, tmp_path, capsys):
    (served / "tiles" / "broken.png").write_bytes(b"not an image")
    ck_path = tiny_checkpoint(tmp_path / "ck.pt", 0)
    args = ["predict", "--checkpoint", str(ck_path), "--workers", "0", "--no-overlay", "--quiet"]
    with serve_folder(served) as base:
        code = main([*args, base + "tiles/", "-o", str(tmp_path / "refused")])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1, err
        assert base + "tiles/broken.png" in err and err.endswith("--skip-bad to skip such images"), err
        assert main([*args, base + "tiles/", "-o", str(tmp_path / "skipped"), "--skip-bad"]) == 0
    manifest = read_manifest(tmp_path / "skipped" / "manifest.jsonl")
    assert manifest[base + "tiles/broken.png"]["status"] == "bad"
    assert sum(r["status"] == "done" for r in manifest.values()) == 3


def test_an_unreachable_url_is_one_line_before_any_work(tmp_path, capsys):
    url = f"http://127.0.0.1:{free_port()}/tiles/"  # nothing listens there
    code = main(["predict", "--checkpoint", str(tiny_checkpoint(tmp_path / "ck.pt", 0)), url,
                 "-o", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and url in err and "cannot be listed" in err, err
    assert not (tmp_path / "o").exists()


def test_a_missing_back_end_names_what_to_install(monkeypatch):
    registry = sys.modules["fsspec.registry"]._registry  # fsspec's cache of loaded classes (fsspec.registry is a view)
    monkeypatch.setitem(sys.modules, "s3fs", None)  # as if not installed
    monkeypatch.delitem(registry, "s3", raising=False)
    with pytest.raises(MissingDependency, match=r"s3:// inputs needs s3fs.*pip install s3fs"):
        collect_keyed_inputs(["s3://bucket/tiles/"])
    for name in ("aiohttp", "fsspec.implementations.http"):
        monkeypatch.setitem(sys.modules, name, None)
    for proto in ("http", "https"):
        monkeypatch.delitem(registry, proto, raising=False)
    with pytest.raises(MissingDependency, match=r"pip install 'fcnseg\[remote\]'"):
        collect_keyed_inputs(["https://example.org/tiles/"])
    with pytest.raises(DataError, match="Protocol not known: nosuch"):
        collect_keyed_inputs(["nosuch://x/"])


def test_calibration_images_must_be_local():
    with pytest.raises(DataError, match="a URL where local image files are needed"):
        collect_inputs(["https://example.org/tiles/"])
