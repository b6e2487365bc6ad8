"""The HTTP routes (thin): ``POST /v1/segment``, ``GET /v1/model``, ``/healthz``, ``/metrics`` and the page.

Every refusal is ``{"error": "<one line>"}`` with its status: 400 malformed request, 413 body over
``max_bytes``, 415 not an image type, 422 bytes that are no readable image or over ``max_pixels``,
503 warming up or queue full (``Retry-After``), 504 past ``timeout_s`` (:class:`~fcnseg.serve.config.ServeConfig`).
The line names what was wrong with the request and never a server option: a client cannot set those
(:func:`fcnseg.serve.errors.client_message`).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.resources import files
from pathlib import Path
from typing import Any

from ..errors import optional_import
from .config import CONFIG_ENV, ServeConfig

try:
    from fastapi import APIRouter, FastAPI, Query, Request
    from fastapi.responses import FileResponse, JSONResponse, Response
    from fastapi.staticfiles import StaticFiles
    from starlette.datastructures import UploadFile
    from starlette.exceptions import HTTPException

    from .errors import ApiError
    from .metrics import CONTENT_TYPE_LATEST
    from .middleware import BodyLimit, RequestMetrics
    from .service import Service, check_image_type, choose_format
except ModuleNotFoundError as e:  # the `serve` extra is missing: one line naming it, not a traceback
    optional_import(e.name or "fastapi", needed_for="fcnseg serve")
    raise

__all__ = ["create_app", "app_from_env"]

STATIC = Path(str(files("fcnseg.serve") / "static"))

router = APIRouter()


def _refusal(why: str) -> dict[str, Any]:
    return {"description": why, "content": {"application/json": {"example": {"error": "<one line>"}}}}


# What the OpenAPI schema (and so the HTTP reference) says each refusal is; app.py's module docstring is the rule.
_SEGMENT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "the label PNG (`labels`), the overlay PNG (`overlay`), JSON (`json`) or JSON with each "
                         "class's COCO run-length mask (`rle`)",
          "content": {"image/png": {}, "application/json": {}}},
    400: _refusal("malformed request (a multipart body without a field named `file`)"),
    413: _refusal("body larger than the server's byte limit"),
    415: _refusal("not an image content type"),
    422: _refusal("bytes that are no readable image, or an image over the server's pixel budget"),
    503: _refusal("warming up, or the queue is full (`Retry-After` says when to retry)"),
    504: _refusal("the image was not segmented within the server's time-out"),
}


def _service(request: Request) -> Service:
    return request.app.state.service


@router.get("/", include_in_schema=False)
async def page() -> FileResponse:
    return FileResponse(STATIC / "index.html")


@router.get("/healthz", responses={503: _refusal("not ready yet (`Retry-After`), or loading failed")})
async def healthz(request: Request) -> JSONResponse:
    """200 once the model is loaded and warmed up; 503 before (or if loading failed, with the error)."""
    service = _service(request)
    if service.ready():
        return JSONResponse({"status": "ready"})
    if service.load_error:
        return JSONResponse({"error": service.load_error}, status_code=503)
    return JSONResponse({"status": "warming up"}, status_code=503, headers={"Retry-After": "1"})


@router.get("/metrics", response_class=Response,
            responses={200: {"description": "Prometheus text exposition format", "content": {"text/plain": {}}}})
async def metrics(request: Request) -> Response:
    """Prometheus text format: requests by route and status, latency, batch sizes, queue depth."""
    return Response(_service(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/model")
async def model(request: Request) -> JSONResponse:
    """Name, classes, palette, normalisation and the checkpoint's validation metrics."""
    return JSONResponse(_service(request).describe())


# The body is read by hand (raw bytes or one multipart file), so the schema is declared here.
_SEGMENT_BODY = {"required": True, "description": "one image: raw bytes with an image content type, or multipart "
                 "form data with the image in the field `file`",
                 "content": {"image/*": {"schema": {"type": "string", "format": "binary"}},
                             "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties":
                                                                {"file": {"type": "string", "format": "binary"}}}}}}


@router.post("/v1/segment", responses=_SEGMENT_RESPONSES, openapi_extra={"requestBody": _SEGMENT_BODY})
async def segment(request: Request, fmt: str | None = Query(None, alias="format",
                                                            description="labels, overlay, json or rle")) -> Response:
    """Segment one image: a raw body (``Content-Type: image/...``) or a multipart field ``file``.

    Returns the palette label PNG at the image's size (``labels``, the default), the overlay PNG with a legend
    (``overlay``), JSON with the classes present, their pixel counts and shares (``json``), or JSON with each
    class present's pixels and COCO run-length mask (``rle``: ``{"model", "height", "width", "classes": [{"id",
    "name", "pixels", "rle": {"size": [H, W], "counts"}}], ...}``, pycocotools' compressed counts); chosen by
    ``?format=`` or else by ``Accept``. PNG answers carry the timings in ``Server-Timing``.
    """
    service = _service(request)
    fmt = choose_format(fmt, request.headers.get("accept"))
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media == "multipart/form-data":
        form = await request.form(max_files=1, max_fields=8)
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise ApiError(400, "multipart body has no file field named 'file'")
        check_image_type((upload.content_type or "").split(";")[0].strip().lower())
        data = await upload.read()
    else:
        check_image_type(media)
        data = await request.body()
    out = await service.segment(data, fmt)
    timing = ", ".join(f"{k};dur={v:.1f}" for k, v in out.timing_ms.items())
    return Response(out.body, media_type=out.media_type, headers={"Server-Timing": timing})


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)


def create_app(cfg: ServeConfig) -> FastAPI:
    """The ASGI app serving ``cfg.checkpoint``. Reads the checkpoint now (errors raise here, one line); the
    model is built and warmed up when the server starts (lifespan), and the batcher drains at shutdown."""
    service = Service(cfg)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.start()
        yield
        # uvicorn has stopped accepting and finished the in-flight requests; run whatever is still queued.
        await asyncio.to_thread(service.close)

    app = FastAPI(title="fcnseg", summary=f"Semantic segmentation with {service.ck.model_name}",
                  lifespan=lifespan)
    app.state.service = service
    app.add_middleware(BodyLimit, max_bytes=cfg.max_bytes)
    app.add_middleware(RequestMetrics, metrics=service.metrics)  # added last: outermost, sees every status
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def app_from_env() -> FastAPI:
    """Factory for uvicorn's worker processes (``fcnseg serve --workers N``): settings from ``$FCNSEG_SERVE_CONFIG``."""
    return create_app(ServeConfig.from_json(os.environ[CONFIG_ENV]))
