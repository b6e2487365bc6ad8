"""One model behind the API: loading and warm-up, then decode -> batched predict -> encode for each request.

LitServe's split: ``decode`` (bytes -> uint8 image, by :func:`fcnseg.io.read_image`, the project's one image
reader), ``predict`` (the :class:`~fcnseg.serve.batcher.Batcher`), ``encode`` (label PNG, overlay PNG, JSON, or JSON
with each class's COCO run-length mask).
Decoding and encoding run in threads so the event loop only moves bytes; the model runs on the batcher's thread.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import math
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..checkpoint import load_checkpoint
from ..errors import ConfigError
from ..io import DataError, read_image
from ..predict import check_label_range, overlay_image, palette_image
from ..rle import encode_labels
from .batcher import Batcher, BatcherClosed, BatchResult, QueueFull
from .config import ServeConfig
from .errors import ApiError, client_message
from .metrics import Metrics
from .model import Labeler, build_labeler, serve_spec

__all__ = ["Service", "FORMATS", "choose_format"]

log = logging.getLogger(__name__)

FORMATS = ("labels", "overlay", "json", "rle")
WARMUP_SIZE = (360, 480)  # (H, W): a VGA-class frame, so the first real request does not pay for first-call setup
_PNG_LEVEL = 1  # zlib level 1: a few percent larger than level 6 and several times faster (as `fcnseg predict`)


def choose_format(query: str | None, accept: str | None) -> str:
    """The response format: ``?format=`` if given, else from ``Accept``.

    ``Accept``: ``application/json`` -> json; ``image/png``, ``image/*``, ``*/*`` or no header -> labels, in
    the client's order of preference (q-values). The overlay is asked for with ``?format=overlay``, the COCO
    run-length masks (JSON) with ``?format=rle``.
    Raises :class:`ApiError` 400 for an unknown ``format``, 406 for an ``Accept`` that allows none of these.
    """
    if query is not None:
        if query not in FORMATS:
            raise ApiError(400, f"unknown format {query!r}: choose {', '.join(FORMATS[:-1])} or {FORMATS[-1]}")
        return query
    if not accept:
        return "labels"
    ranked: list[tuple[float, int, str]] = []
    for i, part in enumerate(accept.split(",")):
        media, *params = (p.strip() for p in part.split(";"))
        q = 1.0
        for p in params:
            if p.startswith("q="):
                try:
                    q = float(p[2:])
                except ValueError:
                    q = 0.0
        if q > 0:
            ranked.append((-q, i, media.lower()))
    for _, _, media in sorted(ranked):
        if media == "application/json":
            return "json"
        if media in ("image/png", "image/*", "*/*"):
            return "labels"
    raise ApiError(406, f"cannot answer Accept: {accept}; this endpoint returns image/png or application/json")


def check_image_type(media: str) -> None:
    """Raise :class:`ApiError` 415 unless ``media`` may hold an image (``image/*``, octet-stream or none)."""
    if media and not media.startswith("image/") and media != "application/octet-stream":
        raise ApiError(415, f"content type {media} is not an image: send image/png, image/jpeg, ... (raw body or "
                       "a multipart field named 'file')")


@dataclass(frozen=True)
class Encoded:
    """A response body with its media type and the timings (ms) for the ``Server-Timing`` header."""

    body: bytes
    media_type: str
    timing_ms: dict[str, float]


def _json_safe(value: Any) -> Any:
    """NaN and infinities (an IU of a class never seen) become null: JSON has no NaN."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def _delayed(labeler: Labeler, seconds: float) -> Labeler:
    def slow(images: torch.Tensor) -> np.ndarray:
        time.sleep(seconds)
        return labeler(images)

    return slow


def inference_threads() -> int:
    """All cores but one: the server's own work (HTTP, PNG decoding and encoding) then never preempts the
    model's threads, which wait for their slowest member. On a 2-core CPU this measured 11.1 images/s at 16
    clients against 9.1 with both cores for the model (benchmarks/RESULTS.md)."""
    return max(1, (os.cpu_count() or 1) - 1)


class Service:
    """The served model and its batcher; ``start()`` loads and warms up in the background (``ready`` then)."""

    def __init__(self, cfg: ServeConfig):
        """Read the checkpoint and check the settings (fast; a refusal raises a one-line family error); no model
        yet."""
        for name in ("max_batch", "queue_size", "max_pixels", "max_bytes"):
            if getattr(cfg, name) < 1:
                raise ConfigError(f"{name} is {getattr(cfg, name)}", fix=f"set {{{name}}} to 1 or more")
        if cfg.timeout_s <= 0 or cfg.max_wait_ms < 0:
            raise ConfigError(f"timeout {cfg.timeout_s:g} s or max_wait_ms {cfg.max_wait_ms:g} is out of range",
                              fix="set {timeout_s} above 0 and {max_wait_ms} to 0 or more")
        self.cfg = cfg
        self.ck = load_checkpoint(cfg.checkpoint)
        self.spec = serve_spec(self.ck, engine=cfg.engine, onnx_file=cfg.onnx or "", precision=cfg.precision,
                               threads=cfg.threads or inference_threads(), device=cfg.device)
        check_label_range(self.ck)
        self.batcher: Batcher | None = None
        self.load_error: str | None = None
        self._ready = threading.Event()
        self._loader = threading.Thread(target=self._load, name="fcnseg-load", daemon=True)
        self.metrics = Metrics(queue_depth=lambda: self.batcher.depth if self.batcher else 0, ready=self.ready)

    def ready(self) -> bool:
        """True once the model is built, warmed up and the batcher runs."""
        return self._ready.is_set()

    def start(self) -> None:
        """Build and warm up the model on a background thread: the server answers ``/healthz`` 503 meanwhile."""
        self._loader.start()

    def _load(self) -> None:
        cfg = self.cfg
        try:
            labeler = build_labeler(self.spec)
            if cfg.test_delay_ms > 0:
                labeler = _delayed(labeler, cfg.test_delay_ms / 1000)
            t0 = time.perf_counter()
            labeler(torch.zeros(1, 3, *WARMUP_SIZE, dtype=torch.uint8))
            log.info("model %s warmed up in %.2f s", self.ck.model_name, time.perf_counter() - t0)
            self.batcher = Batcher(labeler, max_batch=cfg.max_batch, max_wait_s=cfg.max_wait_ms / 1000,
                                   queue_size=cfg.queue_size, on_batch=self.metrics.observe_batch)
            self._ready.set()
        except Exception as e:  # noqa: BLE001 - reported by /healthz and the log; the process stays up to say so
            self.load_error = f"model failed to load: {client_message(e)}"
            log.exception("model failed to load")

    def close(self) -> None:
        """Finish every queued image, then stop the batcher (the HTTP server has stopped taking requests).

        A shutdown during warm-up first waits for the load to end: a process that exits while a thread is
        inside the model aborts instead of exiting cleanly.
        """
        if self._loader.is_alive():
            self._loader.join()
        if self.batcher is not None:
            self.batcher.close()

    def describe(self) -> dict[str, Any]:
        """What ``GET /v1/model`` returns."""
        ck, cfg = self.ck, self.cfg
        return _json_safe({
            "name": ck.model_name, "args": ck.model_args, "classes": ck.classes,
            "palette": [list(map(int, c)) for c in ck.palette], "normalization": ck.normalization.to_dict(),
            "metrics": ck.metrics, "engine": cfg.engine, "precision": cfg.precision, "ready": self.ready(),
            "limits": {"max_pixels": cfg.max_pixels, "max_bytes": cfg.max_bytes, "timeout_s": cfg.timeout_s,
                       "max_batch": cfg.max_batch},
        })

    async def segment(self, data: bytes, fmt: str) -> Encoded:
        """Decode, predict (batched) and encode one image within the per-request time limit.

        Raises :class:`ApiError`: 400 for no bytes, 503 before warm-up or with the queue full (``Retry-After``),
        422 for bytes that are no readable image or exceed the pixel budget, 504 past ``timeout_s``, 500 if
        inference fails.
        """
        if self.batcher is None:
            raise ApiError(503, self.load_error or "model is warming up", {"Retry-After": "1"})
        if not data:
            raise ApiError(400, "empty body: send the image as the body or as a multipart field named 'file'")
        try:
            return await asyncio.wait_for(self._segment(self.batcher, data, fmt), self.cfg.timeout_s)
        except TimeoutError:
            raise ApiError(504, f"request took longer than the server's limit of {self.cfg.timeout_s:g} s") from None

    async def _segment(self, batcher: Batcher, data: bytes, fmt: str) -> Encoded:
        t0 = time.perf_counter()
        try:
            image = await asyncio.to_thread(read_image, data, max_pixels=self.cfg.max_pixels)  # uint8 (3, H, W)
        except DataError as e:  # the fix names the server's options (max_pixels), which a client cannot pass
            raise ApiError(422, client_message(e)) from None
        decode_ms = (time.perf_counter() - t0) * 1000
        try:
            future = batcher.submit(image)
        except (QueueFull, BatcherClosed) as e:
            raise ApiError(503, f"server busy: {e}; retry later", {"Retry-After": "1"}) from None
        try:
            result = await asyncio.wrap_future(future)  # cancelled on time-out: the batcher then skips it
        except Exception as e:  # noqa: BLE001 - the labeler's error, logged by the batcher
            raise ApiError(500, f"inference failed: {client_message(e)}") from None
        timing = {"decode": decode_ms, "queue": result.queued_s * 1000, "inference": result.inference_s * 1000}
        return await asyncio.to_thread(self._encode, image, result, fmt, timing, t0)

    def _encode(self, image: torch.Tensor, result: BatchResult, fmt: str, timing: dict[str, float],
                t_request: float) -> Encoded:
        """The response body; adds ``encode`` and ``total`` (since ``t_request``) to ``timing`` (ms)."""
        t0 = time.perf_counter()
        labels = result.labels  # uint8 (H, W)
        if fmt == "rle":  # the record of `fcnseg predict --format rle`, without "file"
            h, w = labels.shape
            classes = encode_labels(labels, self.ck.classes)
            end = time.perf_counter()
            timing.update(encode=(end - t0) * 1000, total=(end - t_request) * 1000)
            body = {"model": self.ck.model_name, "height": h, "width": w, "classes": classes,
                    "batch_size": result.batch_size, "timing_ms": timing}
            return Encoded(json.dumps(body).encode(), "application/json", timing)
        if fmt == "json":
            h, w = labels.shape
            counts = np.bincount(labels.ravel(), minlength=len(self.ck.classes))
            classes = [{"index": int(c), "name": self.ck.classes[c], "color": list(map(int, self.ck.palette[c])),
                        "pixels": int(counts[c]), "share": float(counts[c]) / (h * w)}
                       for c in np.flatnonzero(counts)]
            end = time.perf_counter()
            timing.update(encode=(end - t0) * 1000, total=(end - t_request) * 1000)
            body = {"model": self.ck.model_name, "width": w, "height": h, "classes": classes,
                    "batch_size": result.batch_size, "timing_ms": timing}
            return Encoded(json.dumps(body).encode(), "application/json", timing)
        if fmt == "overlay":
            rgb = image.permute(1, 2, 0).numpy()  # (H, W, 3)
            im = overlay_image(rgb, labels, self.ck.palette, self.ck.classes)
        else:
            im = palette_image(labels, self.ck.palette)
        buf = io.BytesIO()
        im.save(buf, format="PNG", compress_level=_PNG_LEVEL)
        end = time.perf_counter()
        timing.update(encode=(end - t0) * 1000, total=(end - t_request) * 1000)
        return Encoded(buf.getvalue(), "image/png", timing)
