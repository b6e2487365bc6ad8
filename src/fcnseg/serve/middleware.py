"""Two small ASGI middlewares: the request-size limit (413) and request metrics.

Plain ASGI rather than Starlette's ``BaseHTTPMiddleware``: no extra task per request, and the body limit is
enforced while the body streams in, so an oversized upload is refused without being held in memory.
"""

from __future__ import annotations

import time

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import ApiError
from .metrics import Metrics


class BodyLimit:
    """Refuse request bodies over ``max_bytes`` with 413: at once from ``Content-Length``, else while reading
    (a chunked upload raises :class:`ApiError` 413 from ``receive`` when it passes the limit)."""

    def __init__(self, app: ASGIApp, *, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    def _message(self, size: str) -> str:
        return f"request body is {size} bytes, over the server's limit of {self.max_bytes:,}"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            response = JSONResponse({"error": self._message(f"{int(length):,}")}, status_code=413)
            await response(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise ApiError(413, self._message(f"over {seen:,}"))
            return message

        await self.app(scope, limited, send)


class RequestMetrics:
    """Count every HTTP response by route and status and time it (the outermost middleware)."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500  # an exception that escapes every handler becomes a 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.observe_request(scope["path"], status, time.perf_counter() - start)
