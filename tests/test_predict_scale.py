"""``fcnseg predict`` at scale: COCO RLE output, torchrun shards, ``--resume`` after a real SIGKILL, bad files
in the manifest, and ``format=rle`` in the service."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fcnseg.checkpoint import Checkpoint, load_checkpoint, save_checkpoint, task_extra
from fcnseg.cli import main
from fcnseg.config import PredictConfig
from fcnseg.manifest import AppendLog, read_jsonl, read_manifest
from fcnseg.models import build
from fcnseg.normalization import IMAGENET
from fcnseg.predict import output_stems, predict_files, shard_of
from fcnseg.rle import counts_string, decode_counts, encode_labels, encode_mask, mask_counts

from conftest import TINY, serve_folder

mask_util = pytest.importorskip("pycocotools.mask")
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools on numpy 2

REPO = Path(__file__).resolve().parents[1]
CAMVID_CKPT = REPO / "benchmarks" / "camvid" / "fcn8s_efficientnet_lite0_camvid.pt"
PALETTE = [(0, 0, 0), (255, 0, 0), (0, 255, 0)]


def tiny_checkpoint(path: Path, seed: int) -> Path:
    """An FCN-8s with 1/32 of the channels, 3 classes, random weights (``seed``) so that labels vary."""
    torch.manual_seed(seed)
    model = build("fcn8s", width=TINY, num_classes=3).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
    ck = Checkpoint("fcn8s", {"width": TINY, "num_classes": 3}, model.state_dict(), ["sky", "road", "car"],
                    PALETTE, IMAGENET)
    return save_checkpoint(ck, path)


@pytest.fixture(scope="module")
def tiny_ckpts(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("ck")
    return tiny_checkpoint(folder / "a.pt", 0), tiny_checkpoint(folder / "b.pt", 1)


@pytest.fixture
def small_images(tmp_path) -> Path:
    """12 random 48x40 RGB PNGs, two of them in a subfolder (one with a stem that repeats)."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    for i in range(12):
        where = folder / "sub" if i >= 10 else folder
        name = "im00.png" if i == 11 else f"im{i:02d}.png"
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(where / name)
    return folder


def camvid(data_root: Path, n: int) -> list[Path]:
    return sorted((data_root / "camvid" / "val").glob("*.png"))[:n]


def env1() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def labels_of(folder: Path) -> dict[str, np.ndarray]:
    """Every label PNG (not the overlays) in ``folder``, by name."""
    return {p.name: np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png")) if "_overlay" not in p.name}


def decode_record(record: dict) -> np.ndarray:
    """The label map of one ``predictions.jsonl`` record, decoded by pycocotools; checks that the masks tile."""
    h, w = record["height"], record["width"]
    labels, cover = np.zeros((h, w), np.int64), np.zeros((h, w), np.int64)
    for c in record["classes"]:
        assert c["rle"]["size"] == [h, w]
        m = mask_util.decode({"size": [h, w], "counts": c["rle"]["counts"].encode()})
        assert int(m.sum()) == c["pixels"], c["name"]
        labels += m.astype(np.int64) * c["id"]
        cover += m
    assert (cover == 1).all(), "the classes' masks must tile the image"
    return labels


# ---------------------------------------------------------------- the encoder


def test_rle_strings_equal_pycocotools_and_decode_back():
    rng = np.random.default_rng(0)
    masks = [np.zeros((3, 5), np.uint8), np.ones((4, 2), np.uint8), np.eye(7, dtype=np.uint8)]
    masks += [(rng.random(rng.integers(1, 60, 2)) < rng.random()).astype(np.uint8) for _ in range(200)]
    big = np.zeros((1500, 2000), np.uint8)  # runs over 2**20: several 5-bit groups, negative differences
    big[:2, 0], big[700:, 1999] = 1, 1
    for m in [*masks, big]:
        ours = encode_mask(m)
        ref = mask_util.encode(np.asfortranarray(m))
        assert ours["counts"] == ref["counts"].decode() and ours["size"] == list(ref["size"])
        np.testing.assert_array_equal(mask_util.decode({"size": ours["size"], "counts": ours["counts"]}), m)
        np.testing.assert_array_equal(decode_counts(ours["counts"]), mask_counts(m))
    assert counts_string(np.array([], np.int64)) == ""


def test_label_map_classes_tile_the_image():
    labels = np.random.default_rng(1).integers(0, 4, (37, 53)).astype(np.uint8)
    labels[:, :10] = 2  # long runs beside short ones
    entries = encode_labels(labels, ["a", "b", "c", "d"])
    assert [e["name"] for e in entries] == ["a", "b", "c", "d"]
    record = {"height": 37, "width": 53, "classes": entries}
    np.testing.assert_array_equal(decode_record(record), labels)


def test_shards_are_stable_and_names_decided_over_all_inputs():
    keys = [f"folder/{i}.png" for i in range(400)]
    shards = [shard_of(k, 3) for k in keys]
    assert shards == [shard_of(k, 3) for k in keys] and set(shards) == {0, 1, 2}
    assert min(shards.count(r) for r in range(3)) > 100  # about a third each
    assert [shard_of(k, 3) for k in keys[:200]] == shards[:200]  # more files do not move the others
    assert output_stems([Path("a/x.png"), Path("b/x.png"), Path("x_1.png")]) == ["x", "x_1", "x_1_1"]


# ---------------------------------------------------------------- predict --format rle


def test_predict_rle_decodes_to_the_png_labels(data_root, tmp_path):
    files = camvid(data_root, 2)
    ck = load_checkpoint(CAMVID_CKPT)
    out = tmp_path / "out"
    assert main(["predict", "--checkpoint", str(CAMVID_CKPT), *map(str, files), "-o", str(out), "--format",
                 "png,rle", "--no-overlay", "--workers", "0", "--quiet"]) == 0
    records = list(read_jsonl(out / "predictions.jsonl"))
    assert [r["file"] for r in records] == [str(p) for p in files]
    assert not list(out.glob("predictions.rank*"))  # merged, parts removed
    for r, p in zip(records, files, strict=True):
        png = np.asarray(Image.open(out / p.name))
        assert (r["height"], r["width"]) == png.shape and len(r["classes"]) > 3
        assert all(c["name"] == ck.classes[c["id"]] for c in r["classes"])
        np.testing.assert_array_equal(decode_record(r), png, err_msg=p.name)
    manifest = read_manifest(out / "manifest.jsonl")
    assert set(manifest) == {str(p) for p in files} and all(m["status"] == "done" for m in manifest.values())

    rle_only = tmp_path / "rle"
    assert main(["predict", "--checkpoint", str(CAMVID_CKPT), str(files[0]), "-o", str(rle_only), "--format", "rle",
                 "--workers", "0", "--quiet"]) == 0
    assert sorted(p.name for p in rle_only.iterdir()) == ["manifest.jsonl", "predictions.jsonl"]
    assert next(read_jsonl(rle_only / "predictions.jsonl")) == records[0]


def test_a_multi_task_model_gives_each_task_its_masks(small_images, tmp_path):
    torch.manual_seed(0)
    model = build("fcn16s_siftflow", width=TINY, num_classes=4, geo_classes=3).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
    tasks = {"sem": (["a", "b", "c", "d"], [(0, 0, 0), (1, 1, 1), (2, 2, 2), (3, 3, 3)]),
             "geo": (["sky", "horizontal", "vertical"], PALETTE)}
    ck = Checkpoint("fcn16s_siftflow", {"width": TINY, "num_classes": 4, "geo_classes": 3}, model.state_dict(),
                    tasks["sem"][0], tasks["sem"][1], IMAGENET, extra=task_extra(tasks))
    out = tmp_path / "out"
    predict_files(ck, PredictConfig("", [str(small_images / "im01.png")], str(out), format=("png", "rle"),
                                    overlay=False, workers=0), progress=False)
    (record,) = read_jsonl(out / "predictions.jsonl")
    assert "classes" not in record and list(record["tasks"]) == ["sem", "geo"]
    for task, entries in record["tasks"].items():
        one = {**record, "classes": entries}
        np.testing.assert_array_equal(decode_record(one), np.asarray(Image.open(out / f"im01_{task}.png")))
        assert all(e["name"] == tasks[task][0][e["id"]] for e in entries)


def test_unknown_format_is_one_line_naming_the_flag(tiny_ckpts, small_images, tmp_path, capsys):
    code = main(["predict", "--checkpoint", str(tiny_ckpts[0]), str(small_images), "-o", str(tmp_path / "o"),
                 "--format", "png,jpg", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "jpg" in err and "--format" in err
    assert not (tmp_path / "o").exists()  # refused before any work


# ---------------------------------------------------------------- torchrun


def torchrun_predict(args: list[str], timeout: float = 240) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(free_port()), "-m", "fcnseg.cli", "predict", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env1())


def test_torchrun_two_processes_write_what_one_writes(data_root, tmp_path):
    folder = tmp_path / "val"
    folder.mkdir()
    for p in camvid(data_root, 4):
        shutil.copy(p, folder / p.name)
    assert {shard_of(p.name, 2) for p in folder.iterdir()} == {0, 1}  # both processes have work
    common = ["--checkpoint", str(CAMVID_CKPT), "--format", "png,rle", "--no-overlay", "--workers", "0",
              "--device", "cpu", "--quiet"]
    single = tmp_path / "one"
    assert main(["predict", str(folder), "-o", str(single), *common]) == 0
    r = torchrun_predict([str(folder), "-o", str(tmp_path / "two"), *common])
    assert r.returncode == 0, r.stderr[-3000:]
    summary = [line for line in r.stdout.splitlines() if "images in" in line]
    assert len(summary) == 1 and summary[0].startswith("4 images") and "2 processes" in summary[0], r.stdout
    one, two = labels_of(single), labels_of(tmp_path / "two")
    assert sorted(one) == sorted(two) and len(one) == 4
    for name in one:
        np.testing.assert_array_equal(two[name], one[name], err_msg=name)
    assert (tmp_path / "two" / "predictions.jsonl").read_bytes() == (single / "predictions.jsonl").read_bytes()
    lines = list(read_jsonl(tmp_path / "two" / "manifest.jsonl"))
    assert sorted(m["file"] for m in lines) == sorted(str(p) for p in folder.iterdir())  # each once
    assert not list((tmp_path / "two").glob("*.rank*"))  # the processes' parts are merged and removed

    # One input for two processes: the one with nothing to do takes part in the summary all the same.
    r = torchrun_predict([str(next(folder.iterdir())), "-o", str(tmp_path / "lone"), *common])
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(labels_of(tmp_path / "lone")) == 1 and "1 images in" in r.stdout


def test_torchrun_resume_redoes_only_what_is_missing(tiny_ckpts, small_images, tmp_path):
    ckpt = str(tiny_ckpts[0])
    out = tmp_path / "out"
    common = ["--checkpoint", ckpt, str(small_images), "-o", str(out), "--format", "png,rle", "--workers", "0",
              "--device", "cpu", "--quiet"]
    assert main(["predict", *common]) == 0  # one process, then two resume it
    clean = (out / "predictions.jsonl").read_bytes()
    (out / "im04.png").unlink()
    (out / "im07_overlay.png").unlink()
    r = torchrun_predict([*common, "--resume"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "2 images in" in r.stdout and "10 done before" in r.stdout, r.stdout
    assert (out / "predictions.jsonl").read_bytes() == clean and (out / "im04.png").is_file()
    done = [m for m in read_jsonl(out / "manifest.jsonl") if m["status"] == "done"]
    assert len(done) == 14 and len({m["file"] for m in done}) == 12  # 12, then the 2 redone
    assert not list(out.glob("*.rank*"))


# ---------------------------------------------------------------- --resume


def test_resume_after_sigkill_finishes_each_output_once(tiny_ckpts, small_images, tmp_path):
    ckpt = str(tiny_ckpts[0])
    clean = tmp_path / "clean"
    predict_files(load_checkpoint(ckpt), PredictConfig(ckpt, [str(small_images)], str(clean), format=("png", "rle"),
                                                       workers=0), progress=False)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "fcnseg.cli", "predict", "--checkpoint", ckpt, str(small_images), "-o", str(out),
           "--format", "png,rle", "--workers", "0", "--quiet"]
    killed_at = None
    for wanted in (4, 2):  # kill once this many label PNGs exist (a tiny model is fast: retry once, earlier)
        shutil.rmtree(out, ignore_errors=True)
        proc = subprocess.Popen(cmd, env=env1(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            if out.is_dir() and len([p for p in out.glob("im*.png") if "_overlay" not in p.name]) >= wanted:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.002)
        proc.wait(30)
        if proc.returncode == -signal.SIGKILL:
            done = len(read_manifest(out / "manifest.jsonl"))
            if done < 12:
                killed_at = done
                break
    if killed_at is None:
        pytest.skip("the run finished before it could be killed")
    print(f"\nSIGKILL after {killed_at} of 12 inputs in the manifest")
    assert not (out / "predictions.jsonl").exists()  # merged only at the end

    r = subprocess.run([*cmd, "--resume"], env=env1(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "done before" in r.stdout or killed_at == 0, r.stdout
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in clean.iterdir())  # no temp files
    a, b = labels_of(clean), labels_of(out)
    assert sorted(a) == sorted(b) and len(a) == 12
    for name in a:
        np.testing.assert_array_equal(b[name], a[name], err_msg=name)
    records = list(read_jsonl(out / "predictions.jsonl"))
    assert records == list(read_jsonl(clean / "predictions.jsonl"))  # each image once, in input order
    done = [m for m in read_jsonl(out / "manifest.jsonl") if m["status"] == "done"]
    assert sorted(m["file"] for m in done) == sorted(r["file"] for r in records)  # each input done once

    again = predict_files(load_checkpoint(ckpt), PredictConfig(ckpt, [str(small_images)], str(out),
                                                               format=("png", "rle"), workers=0, resume=True),
                          progress=False)
    assert again["images"] == 0 and again["resumed"] == 12  # nothing left


def test_resume_with_another_checkpoint_predicts_again(tiny_ckpts, small_images, tmp_path):
    a, b = map(str, tiny_ckpts)
    out = tmp_path / "out"

    def run(ckpt: str, **kw) -> dict:
        cfg = PredictConfig(ckpt, [str(small_images)], str(out), workers=0, overlay=False, **kw)
        return predict_files(load_checkpoint(ckpt), cfg, progress=False)

    assert run(a)["images"] == 12
    with pytest.raises(Exception, match="not empty"):  # without resume, a non-empty folder is refused as before
        run(a)
    r = run(b, resume=True)
    assert (r["images"], r["resumed"]) == (12, 0)  # all made by another checkpoint: redone
    only_b = tmp_path / "b"
    predict_files(load_checkpoint(b), PredictConfig(b, [str(small_images)], str(only_b), workers=0, overlay=False),
                  progress=False)
    for name, lab in labels_of(only_b).items():
        np.testing.assert_array_equal(labels_of(out)[name], lab, err_msg=name)
    (out / "im03.png").unlink()  # an output lost: that input alone is redone
    r = run(b, resume=True)
    assert (r["images"], r["resumed"]) == (1, 11)
    r = run(b, resume=True, flip=True)  # other settings change labels too
    assert (r["images"], r["resumed"]) == (12, 0)
    r = run(b, overwrite=True)  # overwrite without resume: a new job, a new manifest
    assert r["images"] == 12 and len(list(read_jsonl(out / "manifest.jsonl"))) == 12


def test_bad_files_are_listed_and_a_torn_manifest_line_is_tolerated(tiny_ckpts, small_images, tmp_path):
    ckpt = str(tiny_ckpts[0])
    (small_images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "out"
    cfg = PredictConfig(ckpt, [str(small_images)], str(out), workers=0, overlay=False, skip_bad=True,
                        format=("rle",))
    r = predict_files(load_checkpoint(ckpt), cfg, progress=False)
    assert (r["images"], r["skipped"]) == (12, 1)
    manifest = read_manifest(out / "manifest.jsonl")
    bad = manifest[str(small_images / "broken.png")]
    assert bad["status"] == "bad" and "broken.png" in bad["error"]
    assert len(list(read_jsonl(out / "predictions.jsonl"))) == 12
    with open(out / "manifest.jsonl", "ab") as f:  # what a kill inside a write would leave
        f.write(b'{"file": "' + str(small_images / "im00.png").encode() + b'", "stat')
    r = predict_files(load_checkpoint(ckpt), replace(cfg, resume=True), progress=False)
    assert (r["images"], r["skipped"], r["resumed"]) == (0, 1, 12)  # the bad file is tried again, still bad
    torn, last = (out / "manifest.jsonl").read_bytes().splitlines()[-2:]
    assert torn.endswith(b'"stat') and json.loads(last)["status"] == "bad"  # the torn line was ended first


def test_append_log_writes_whole_lines(tmp_path):
    path = tmp_path / "log.jsonl"
    with AppendLog(path, sync_every=3) as log:
        for i in range(10):
            log.append({"i": i, "text": "x" * i})
    assert [r["i"] for r in read_jsonl(path)] == list(range(10))
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)


# ---------------------------------------------------------------- serve format=rle


def test_serve_rle_decodes_to_the_label_png(data_root):
    from test_serve import serve, wait_ready

    data = camvid(data_root, 1)[0].read_bytes()
    ck = load_checkpoint(CAMVID_CKPT)
    with serve(CAMVID_CKPT) as client:
        wait_ready(client)
        png = client.post("/v1/segment", content=data, headers={"content-type": "image/png"})
        r = client.post("/v1/segment?format=rle", content=data, headers={"content-type": "image/png"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    body = r.json()
    assert (body["model"], body["width"], body["height"]) == (ck.model_name, 480, 360)
    assert body["batch_size"] == 1 and body["timing_ms"]["encode"] > 0
    lab = np.asarray(Image.open(io.BytesIO(png.content)))
    np.testing.assert_array_equal(decode_record(body), lab)
    assert [c["name"] for c in body["classes"]] == [ck.classes[k] for k in np.unique(lab)]


# ---------------------------------------------------------------- --ray local


def test_ray_local_cluster_writes_what_one_process_writes(data_root, tmp_path):
    # A local cluster bound to 127.0.0.1, in a subprocess (Ray's processes end with it), reading a local folder and
    # a folder served over HTTP on 127.0.0.1 through Ray Data; the first actor to finish an image dies once
    # (os._exit), and Ray's restart must leave every output once.
    pytest.importorskip("ray.data")
    pytest.importorskip("aiohttp")
    folder, www = tmp_path / "val", tmp_path / "www" / "val"
    folder.mkdir()
    www.mkdir(parents=True)
    for i, p in enumerate(camvid(data_root, 4)):
        shutil.copy(p, (folder if i < 2 else www) / p.name)
    common = ["--checkpoint", str(CAMVID_CKPT), "--format", "png,rle", "--no-overlay", "--workers", "0",
              "--device", "cpu", "--quiet"]
    single, marker = tmp_path / "one", tmp_path / "died"
    with serve_folder(tmp_path / "www") as base:
        inputs = [str(folder), base + "val/"]
        assert main(["predict", *inputs, "-o", str(single), *common]) == 0
        cmd = [sys.executable, "-m", "fcnseg.cli", "predict", *inputs, "-o", str(tmp_path / "ray"), *common,
               "--ray", "local", "--ray-actors", "2"]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=240,
                           env={**env1(), "RAY_USAGE_STATS_ENABLED": "0", "FCNSEG_TEST_RAY_EXIT_ONCE": str(marker)})
    assert r.returncode == 0, r.stderr[-3000:]
    assert marker.exists()  # an actor did die
    assert "4 images in" in r.stdout, r.stdout
    one, ray_ = labels_of(single), labels_of(tmp_path / "ray")
    assert sorted(one) == sorted(ray_) and len(one) == 4
    for name in one:
        np.testing.assert_array_equal(ray_[name], one[name], err_msg=name)
    assert (tmp_path / "ray" / "predictions.jsonl").read_bytes() == (single / "predictions.jsonl").read_bytes()
    assert sorted(p.name for p in (tmp_path / "ray").iterdir()) == sorted(p.name for p in single.iterdir())
    assert set(read_manifest(tmp_path / "ray" / "manifest.jsonl")) == \
        {str(p) for p in folder.iterdir()} | {base + "val/" + p.name for p in www.iterdir()}


def test_ray_missing_is_one_line_naming_the_extra(tiny_ckpts, small_images, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    code = main(["predict", "--checkpoint", str(tiny_ckpts[0]), str(small_images), "-o", str(tmp_path / "o"),
                 "--ray", "local", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "pip install 'fcnseg[ray]'" in err, err
    assert not (tmp_path / "o").exists()  # refused before any work


def test_ray_options_are_refused_before_any_work(tiny_ckpts, small_images, tmp_path, capsys):
    pytest.importorskip("ray.data")
    base = ["predict", "--checkpoint", str(tiny_ckpts[0]), str(small_images), "-o", str(tmp_path / "o"),
            "--ray", "local", "--quiet"]
    for extra, flag in ((["--ray-object-store-mb", "10"], "--ray-object-store-mb to 80 or more"),
                        (["--ray-actors", "0"], "--ray-actors to 1 or more")):
        code = main([*base, *extra])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and flag in err, err
    assert not (tmp_path / "o").exists()


def test_ray_actor_refusal_is_one_line(tiny_ckpts, small_images, tmp_path):
    pytest.importorskip("ray.data")
    (small_images / "broken.png").write_bytes(b"not an image")
    cmd = [sys.executable, "-m", "fcnseg.cli", "predict", "--checkpoint", str(tiny_ckpts[0]), str(small_images),
           "-o", str(tmp_path / "o"), "--ray", "local", "--ray-actors", "1", "--quiet"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env={**env1(), "RAY_USAGE_STATS_ENABLED": "0"})
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 2 and last.startswith("fcnseg predict: error: ") and "broken.png" in last, r.stderr[-2000:]
    assert last.endswith("--skip-bad to skip such images")


def test_ray_resume_after_sigkill_finishes_each_output_once(data_root, tmp_path):
    # The driver of a `--ray local` job is killed (SIGKILL) once actors have finished a few images; Ray's own
    # processes end with it. `--resume --ray local` must then do only the rest and end as a run never killed.
    pytest.importorskip("ray.data")
    folder = tmp_path / "val"
    folder.mkdir()
    for p in camvid(data_root, 24):
        shutil.copy(p, folder / p.name)
    common = ["--checkpoint", str(CAMVID_CKPT), "--format", "png,rle", "--no-overlay", "--device", "cpu", "--quiet"]
    clean, out = tmp_path / "clean", tmp_path / "out"
    assert main(["predict", str(folder), "-o", str(clean), *common, "--workers", "0"]) == 0
    cmd = [sys.executable, "-m", "fcnseg.cli", "predict", str(folder), "-o", str(out), *common,
           "--ray", "local", "--ray-actors", "2"]
    env = {**env1(), "RAY_USAGE_STATS_ENABLED": "0"}

    def done_in_parts() -> int:
        return sum(r.get("status") == "done" for p in out.glob("manifest.ray-*.jsonl") for r in read_jsonl(p))

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while proc.poll() is None and time.monotonic() < deadline and done_in_parts() < 3:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    killed_at = done_in_parts()
    if proc.returncode != -signal.SIGKILL or killed_at >= 24:
        pytest.skip("the Ray job finished before it could be killed")
    print(f"\nSIGKILL after {killed_at} of 24 inputs done")
    assert not (out / "predictions.jsonl").exists()  # merged only at the end
    time.sleep(3)  # Ray's reaper ends the cluster the killed driver started

    r = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    resumed = int(r.stdout.split(" done before")[0].rsplit(" ", 1)[-1])
    assert resumed >= killed_at, r.stdout  # at least what was done when killed (actors may finish one more)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in clean.iterdir())  # no temp or part files
    a, b = labels_of(clean), labels_of(out)
    assert sorted(a) == sorted(b) and len(a) == 24
    for name in a:
        np.testing.assert_array_equal(b[name], a[name], err_msg=name)
    assert (out / "predictions.jsonl").read_bytes() == (clean / "predictions.jsonl").read_bytes()
    latest = read_manifest(out / "manifest.jsonl")
    assert set(latest) == {str(p) for p in folder.iterdir()} and {m["status"] for m in latest.values()} == {"done"}
