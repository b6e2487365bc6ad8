"""``fcnseg serve``: the batcher without HTTP, the API through FastAPI's TestClient, and a real process's shutdown."""

from __future__ import annotations

import io
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from fcnseg.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from fcnseg.config import PredictConfig
from fcnseg.errors import CheckpointError, ConfigError
from fcnseg.io import read_image
from fcnseg.models import build
from fcnseg.normalization import IMAGENET
from fcnseg.predict import predict_files
from fcnseg.serve.app import create_app
from fcnseg.serve.batcher import Batcher, BatcherClosed, QueueFull
from fcnseg.serve.config import DELAY_ENV, ServeConfig
from fcnseg.serve.model import load_labeler
from fcnseg.serve.probe import wait_ready as wait_server_ready

from conftest import TINY

CAMVID_CKPT = Path(__file__).parent.parent / "benchmarks" / "camvid" / "fcn8s_efficientnet_lite0_camvid.pt"
PALETTE = [(0, 0, 0), (255, 0, 0), (0, 255, 0)]


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    """An FCN-8s with 1/32 of the channels, 3 classes, random non-zero weights (so labels vary)."""
    torch.manual_seed(0)
    model = build("fcn8s", width=TINY, num_classes=3).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
    ck = Checkpoint("fcn8s", {"width": TINY, "num_classes": 3}, model.state_dict(), ["sky", "road", "car"],
                    PALETTE, IMAGENET, metrics={"mean_iu": 0.5, "class_iu": [0.5, float("nan"), 0.5]})
    return save_checkpoint(ck, tmp_path_factory.mktemp("ck") / "tiny.pt")


@pytest.fixture(scope="module")
def val_images(data_root) -> list[Path]:
    return sorted((data_root / "camvid" / "val").glob("*.png"))


def png_bytes(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def small_png(w: int = 40, h: int = 30) -> bytes:
    rng = np.random.default_rng(0)
    return png_bytes(Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)))


def wait_ready(client: TestClient, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while client.get("/healthz").status_code != 200:
        assert time.monotonic() < end, "the model never became ready"
        time.sleep(0.05)


def serve(ckpt: Path, **kw) -> TestClient:
    """A TestClient over a fresh app (use as a context manager: it runs the lifespan)."""
    kw.setdefault("test_delay_ms", 0.0)
    return TestClient(create_app(ServeConfig(checkpoint=str(ckpt), **kw)))


def metric(text: str, name: str, **labels: str) -> float:
    """The value of sample ``name`` with ``labels`` in Prometheus text; 0 if absent."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


# ---------------------------------------------------------------- batcher, without HTTP


def first_channel(images: torch.Tensor) -> np.ndarray:
    """A stand-in labeler whose labels say which image they came from: the first channel."""
    return images[:, 0].numpy().copy()


def filled(value: int, h: int = 8, w: int = 8) -> torch.Tensor:
    return torch.full((3, h, w), value, dtype=torch.uint8)


def test_concurrent_submissions_run_in_batches():
    sizes: list[int] = []

    def slow(images: torch.Tensor) -> np.ndarray:
        sizes.append(images.shape[0])
        time.sleep(0.05)
        return first_channel(images)

    b = Batcher(slow, max_batch=4, max_wait_s=0.2, queue_size=16)
    with ThreadPoolExecutor(8) as pool:
        futures = list(pool.map(lambda v: b.submit(filled(v)), range(8)))
    results = [f.result(10) for f in futures]
    b.close()
    assert max(sizes) > 1 and sum(sizes) == 8 and max(sizes) <= 4
    for v, r in enumerate(results):
        assert (r.labels == v).all()  # every request gets its own image's labels back
        assert r.batch_size in sizes and r.inference_s > 0


def test_sizes_are_never_mixed_in_a_batch():
    shapes: list[tuple[int, ...]] = []

    def record(images: torch.Tensor) -> np.ndarray:
        shapes.append(tuple(images.shape))
        return first_channel(images)

    b = Batcher(record, max_batch=3, max_wait_s=0.3, queue_size=16)
    sizes = [(8, 8), (12, 16)] * 3  # interleaved arrivals
    futures = [b.submit(filled(i, *hw)) for i, hw in enumerate(sizes)]
    results = [f.result(10) for f in futures]
    b.close()
    assert sorted(shapes) == [(3, 3, 8, 8), (3, 3, 12, 16)]  # two full batches, one size each
    for i, (r, hw) in enumerate(zip(results, sizes, strict=True)):
        assert r.labels.shape == hw and (r.labels == i).all()


def test_full_queue_refuses_then_recovers():
    entered, release = threading.Event(), threading.Event()

    def gated(images: torch.Tensor) -> np.ndarray:
        entered.set()
        release.wait(10)
        return first_channel(images)

    b = Batcher(gated, max_batch=1, max_wait_s=0, queue_size=2)
    running = b.submit(filled(1))
    assert entered.wait(10)  # the first image is in the model: it no longer counts against the queue
    queued = [b.submit(filled(2)), b.submit(filled(3))]
    assert b.depth == 2
    with pytest.raises(QueueFull, match="queue full"):
        b.submit(filled(4))
    release.set()
    assert [int(f.result(10).labels[0, 0]) for f in [running, *queued]] == [1, 2, 3]
    assert (b.submit(filled(5)).result(10).labels == 5).all()  # room again
    b.close()


def test_close_runs_every_queued_image_then_refuses():
    release = threading.Event()

    def gated(images: torch.Tensor) -> np.ndarray:
        release.wait(10)
        return first_channel(images)

    b = Batcher(gated, max_batch=2, max_wait_s=0, queue_size=8)
    futures = [b.submit(filled(v)) for v in range(5)]
    closer = threading.Thread(target=b.close)
    closer.start()
    release.set()
    closer.join(10)
    assert not closer.is_alive()
    assert [int(f.result(0).labels[0, 0]) for f in futures] == list(range(5))
    with pytest.raises(BatcherClosed):
        b.submit(filled(9))


def test_labeler_errors_reach_the_request_and_the_worker_goes_on():
    def picky(images: torch.Tensor) -> np.ndarray:
        if int(images[0, 0, 0, 0]) == 7:
            raise RuntimeError("boom")
        return first_channel(images)

    b = Batcher(picky, max_batch=1, max_wait_s=0)
    with pytest.raises(RuntimeError, match="boom"):
        b.submit(filled(7)).result(10)
    assert (b.submit(filled(3)).result(10).labels == 3).all()
    b.close()


def test_cancelled_request_is_not_computed():
    entered, release = threading.Event(), threading.Event()
    seen: list[int] = []

    def gated(images: torch.Tensor) -> np.ndarray:
        seen.extend(int(v) for v in images[:, 0, 0, 0])
        entered.set()
        release.wait(10)
        return first_channel(images)

    b = Batcher(gated, max_batch=1, max_wait_s=0)
    first = b.submit(filled(1))
    assert entered.wait(10)
    timed_out = b.submit(filled(2))
    assert timed_out.cancel()  # what a request past its time limit does
    release.set()
    first.result(10)
    assert b.submit(filled(3)).result(10) is not None
    b.close()
    assert seen == [1, 3]


def test_batched_labels_equal_fcnseg_predict(val_images, tmp_path):
    # The trained CamVid model: batches of 4 (one size, 480x360) give the label PNGs `fcnseg predict` writes,
    # pixel for pixel (fp32; measured: 0 pixels differ at batch sizes 1, 2, 3, 4 and 8 on this CPU).
    files = val_images[:4]
    ck = load_checkpoint(CAMVID_CKPT)
    predict_files(ck, PredictConfig(inputs=[str(p) for p in files], out_dir=str(tmp_path), overlay=False, workers=0),
                  progress=False)
    batch_sizes: list[int] = []
    b = Batcher(load_labeler(ck), max_batch=4, max_wait_s=2.0, on_batch=lambda n, s: batch_sizes.append(n))
    futures = [b.submit(read_image(p)) for p in files]
    results = [f.result(60) for f in futures]
    b.close()
    assert batch_sizes == [4]
    for p, r in zip(files, results, strict=True):
        np.testing.assert_array_equal(r.labels, np.asarray(Image.open(tmp_path / p.name)), err_msg=p.name)


# ---------------------------------------------------------------- the API


def test_healthz_is_503_until_the_model_is_warm(tiny_ckpt):
    with serve(tiny_ckpt, test_delay_ms=800) as client:  # the warm-up batch sleeps 0.8 s
        r = client.get("/healthz")
        assert r.status_code == 503 and r.json() == {"status": "warming up"}
        r = client.post("/v1/segment", content=small_png(), headers={"content-type": "image/png"})
        assert r.status_code == 503 and r.headers["retry-after"] == "1" and "warming up" in r.json()["error"]
        assert metric(client.get("/metrics").text, "fcnseg_ready") == 0
        wait_ready(client)
        assert client.get("/healthz").json() == {"status": "ready"}
        assert metric(client.get("/metrics").text, "fcnseg_ready") == 1


def test_segment_formats(val_images):
    # The trained CamVid model, so the labels hold several classes.
    data = val_images[0].read_bytes()
    ck = load_checkpoint(CAMVID_CKPT)
    with serve(CAMVID_CKPT) as client:
        wait_ready(client)
        raw = client.post("/v1/segment", content=data, headers={"content-type": "image/png"})
        assert raw.status_code == 200 and raw.headers["content-type"] == "image/png"
        assert "inference;dur=" in raw.headers["server-timing"]
        labels = Image.open(io.BytesIO(raw.content))
        assert labels.mode == "P" and labels.size == (480, 360)
        assert labels.getpalette()[:33] == [c for rgb in ck.palette for c in rgb]
        lab = np.asarray(labels)
        assert lab.max() < 11 and len(np.unique(lab)) > 3

        upload = client.post("/v1/segment", files={"file": ("a.png", data, "image/png")})
        assert upload.status_code == 200 and upload.content == raw.content  # multipart == raw body

        overlay = client.post("/v1/segment?format=overlay", content=data, headers={"content-type": "image/png"})
        ov = Image.open(io.BytesIO(overlay.content))
        assert overlay.status_code == 200 and ov.mode == "RGB" and ov.size[1] == 360 and ov.size[0] > 480

        j = client.post("/v1/segment", content=data, headers={"content-type": "image/png",
                                                              "accept": "application/json"}).json()
        assert (j["width"], j["height"], j["model"]) == (480, 360, ck.model_name)
        counts = np.bincount(lab.ravel(), minlength=11)
        assert {c["name"]: c["pixels"] for c in j["classes"]} == {
            name: int(n) for name, n in zip(ck.classes, counts, strict=True) if n}
        assert sum(c["share"] for c in j["classes"]) == pytest.approx(1.0)
        assert j["batch_size"] == 1 and j["timing_ms"]["total"] >= j["timing_ms"]["inference"] > 0

        # Accept decides when ?format= is absent; ?format= wins over Accept.
        png = client.post("/v1/segment", content=data, headers={"content-type": "image/png",
                                                                "accept": "text/html;q=0.9, image/png"})
        assert png.content == raw.content
        forced = client.post("/v1/segment?format=json", content=data,
                             headers={"content-type": "image/png", "accept": "image/png"})
        assert forced.headers["content-type"] == "application/json"
        r = client.post("/v1/segment", content=data, headers={"content-type": "image/png", "accept": "text/html"})
        assert r.status_code == 406 and "application/json" in r.json()["error"]
        r = client.post("/v1/segment?format=jpeg", content=data, headers={"content-type": "image/png"})
        assert r.status_code == 400 and "labels, overlay, json or rle" in r.json()["error"]


def test_model_endpoint(tiny_ckpt):
    with serve(tiny_ckpt) as client:
        m = client.get("/v1/model").json()
    assert m["name"] == "fcn8s" and m["classes"] == ["sky", "road", "car"]
    assert m["palette"] == [list(c) for c in PALETTE]
    assert m["normalization"]["name"] == "imagenet" and m["normalization"]["std"] == list(IMAGENET.std)
    assert m["metrics"]["mean_iu"] == 0.5 and m["metrics"]["class_iu"] == [0.5, None, 0.5]  # NaN -> null


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` RGB pixels and that holds no pixel data."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


BAD_INPUTS = [
    ("bad bytes", b"this is not an image", "image/png", 422, "not an image file"),
    ("truncated", small_png()[:120], "image/png", 422, "uploaded image"),
    ("empty", b"", "image/png", 400, "empty body"),
    ("claims 100000x100000", _png_header_only(100_000, 100_000), "image/png", 422, "over the budget of 1,000,000"),
    ("compressed bomb", png_bytes(Image.new("L", (3000, 3000))), "image/png", 422, "over the budget of 1,000,000"),
    ("text", b"hello", "text/plain", 415, "text/plain is not an image"),
    ("json", b"{}", "application/json", 415, "is not an image"),
    ("form-encoded", b"a=b", "application/x-www-form-urlencoded", 415, "is not an image"),
]


@pytest.mark.parametrize("case, body, ctype, status, words", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_answered(tiny_ckpt, case, body, ctype, status, words):
    with serve(tiny_ckpt, max_pixels=1_000_000) as client:
        wait_ready(client)
        r = client.post("/v1/segment", content=body, headers={"content-type": ctype})
        assert r.status_code == status, (case, r.text)
        assert words in r.json()["error"], r.json()
        assert "--" not in r.json()["error"] and "max_pixels" not in r.json()["error"]  # a client can't set those
        assert client.post("/v1/segment", content=small_png(), headers={"content-type": "image/png"}) \
            .status_code == 200  # the server is still fine


def test_size_limit_and_upload_shape(tiny_ckpt):
    with serve(tiny_ckpt, max_bytes=2000) as client:
        wait_ready(client)
        big = small_png(200, 200)
        assert len(big) > 2000
        r = client.post("/v1/segment", content=big, headers={"content-type": "image/png"})
        assert r.status_code == 413 and "over the server's limit of 2,000" in r.json()["error"]

        def chunks():  # no Content-Length: the limit is enforced while reading
            for i in range(0, len(big), 500):
                yield big[i:i + 500]

        r = client.post("/v1/segment", content=chunks(), headers={"content-type": "image/png"})
        assert r.status_code == 413 and "over the server's limit" in r.json()["error"]
        r = client.post("/v1/segment", files={"file": ("a.txt", b"hello", "text/plain")})
        assert r.status_code == 415
        r = client.post("/v1/segment", files={"image": ("a.png", small_png(8, 8), "image/png")})
        assert r.status_code == 400 and "field named 'file'" in r.json()["error"]
        r = client.get("/nowhere")
        assert r.status_code == 404 and "error" in r.json()
        text = client.get("/metrics").text
    assert metric(text, "fcnseg_requests_total", route="/v1/segment", status="413") == 2
    assert metric(text, "fcnseg_requests_total", route="other", status="404") == 1


def test_timeout_is_504(tiny_ckpt):
    with serve(tiny_ckpt, test_delay_ms=300, timeout_s=0.1) as client:
        wait_ready(client)
        r = client.post("/v1/segment", content=small_png(), headers={"content-type": "image/png"})
        assert r.status_code == 504 and "server's limit of 0.1 s" in r.json()["error"]


def test_full_queue_is_503_with_retry_after(tiny_ckpt):
    with serve(tiny_ckpt, test_delay_ms=400, max_batch=1, queue_size=1) as client:
        wait_ready(client)
        with ThreadPoolExecutor(4) as pool:
            codes = list(pool.map(lambda _: client.post("/v1/segment", content=small_png(),
                                                        headers={"content-type": "image/png"}), range(4)))
        busy = [r for r in codes if r.status_code == 503]
        assert sorted(r.status_code for r in codes).count(200) >= 2 and busy  # one in the model, one queued
        assert all(r.headers["retry-after"] == "1" and "queue full" in r.json()["error"] for r in busy)


def test_metrics(tiny_ckpt):
    with serve(tiny_ckpt, max_batch=4, max_wait_ms=200) as client:
        wait_ready(client)
        with ThreadPoolExecutor(4) as pool:
            codes = list(pool.map(lambda _: client.post("/v1/segment", content=small_png(),
                                                        headers={"content-type": "image/png"}).status_code,
                                  range(4)))
        assert codes == [200] * 4
        r = client.get("/metrics")
    assert r.headers["content-type"].startswith("text/plain; version=")  # the Prometheus text format
    text = r.text
    assert metric(text, "fcnseg_requests_total", route="/v1/segment", status="200") == 4
    assert metric(text, "fcnseg_request_duration_seconds_count", route="/v1/segment") == 4
    assert metric(text, "fcnseg_batch_size_sum") == 4  # every image went through the model once
    assert metric(text, "fcnseg_batch_size_count") < 4  # ... in fewer calls than images
    assert "fcnseg_queue_depth 0.0" in text and "fcnseg_inference_duration_seconds_bucket" in text


def test_page_and_assets_are_served(tiny_ckpt):
    with serve(tiny_ckpt) as client:
        page = client.get("/")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        for asset in ("/static/app.js", "/static/style.css"):
            assert asset in page.text and client.get(asset).status_code == 200
        assert "http" not in page.text.replace("http-equiv", "")  # no CDN: every asset from the package


# ---------------------------------------------------------------- a real process


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sigterm_drains_requests_then_exits_0(tiny_ckpt, val_images):
    port = free_port()
    env = {**os.environ, DELAY_ENV: "1500", "OMP_NUM_THREADS": "1"}  # every batch sleeps 1.5 s
    proc = subprocess.Popen([sys.executable, "-m", "fcnseg.cli", "serve", "--checkpoint", str(tiny_ckpt),
                             "--port", str(port), "--max-batch", "1"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_server_ready(url, timeout=60, process=proc)
        data = val_images[0].read_bytes()
        with ThreadPoolExecutor(2) as pool:  # two requests, batches of one: one in the model, one queued
            pending = [pool.submit(httpx.post, f"{url}/v1/segment", content=data,
                                   headers={"content-type": "image/png"}, timeout=30) for _ in range(2)]
            time.sleep(0.5)
            proc.send_signal(signal.SIGTERM)
            responses = [f.result() for f in pending]
        assert [r.status_code for r in responses] == [200, 200]
        assert all(Image.open(io.BytesIO(r.content)).size == (480, 360) for r in responses)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    log = proc.stdout.read()
    assert "Shutting down" in log and "Finished server process" in log


def test_onnxruntime_engine_and_bad_engine_settings(tiny_ckpt, tmp_path, val_images):
    pytest.importorskip("onnxruntime")
    from fcnseg.export import export_model

    onnx_file = export_model(tiny_ckpt, tmp_path / "tiny.onnx")
    image = read_image(val_images[0])[:, :96, :128]
    ck = load_checkpoint(tiny_ckpt)
    ort_labels = load_labeler(ck, engine="onnxruntime", onnx_file=str(onnx_file))(image[None])
    np.testing.assert_array_equal(ort_labels, load_labeler(ck)(image[None]))
    with serve(tiny_ckpt, engine="onnxruntime", onnx=str(onnx_file)) as client:
        wait_ready(client)
        r = client.post("/v1/segment", content=val_images[0].read_bytes(), headers={"content-type": "image/png"})
        assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).size == (480, 360)
        assert client.get("/v1/model").json()["engine"] == "onnxruntime"
    # The scorer's refusals (tests/test_scorer.py), raised when the app is made, before any model is built.
    for kw, error in [({"engine": "onnxruntime"}, ConfigError), ({"engine": "tensorrt"}, ConfigError),
                      ({"engine": "onnxruntime", "onnx": str(tmp_path / "no.onnx")}, CheckpointError),
                      ({"onnx": str(onnx_file)}, ConfigError), ({"max_batch": 0}, ConfigError)]:
        with pytest.raises(error) as refused:
            create_app(ServeConfig(checkpoint=str(tiny_ckpt), **kw))
        assert "\n" not in str(refused.value) and " --" not in str(refused.value)  # one line, no flag spelling
    with pytest.raises(ValueError, match="not an fcnseg checkpoint|could not be read"):
        create_app(ServeConfig(checkpoint=str(onnx_file)))


def test_a_missing_serve_extra_is_one_line_naming_it(tiny_ckpt, monkeypatch, capsys):
    from fcnseg.cli import main

    monkeypatch.setitem(sys.modules, "fastapi", None)  # as after `pip install fcnseg` without the extra
    monkeypatch.delitem(sys.modules, "fcnseg.serve.app")  # imported afresh by the command
    assert main(["serve", "--checkpoint", str(tiny_ckpt)]) == 2
    assert capsys.readouterr().err.strip() == ("fcnseg serve: error: fcnseg serve needs fastapi, which is not "
                                               "installed; fix: pip install 'fcnseg[serve]'")
