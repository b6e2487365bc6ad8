"""Two small ASGI middlewares: the request-size limit (413) and request metrics.

Plain ASGI rather than Starlette's ``BaseHTTPMiddleware``: no extra task per request, and the body limit is
enforced while the body streams in, so an oversized upload is refused without being held in memory.
"""

from __future__ import annotations

import time
from collections.abc import Callable

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
        await self.app(scope, _LimitedReceive(receive, self.max_bytes, self._message), send)


class RequestMetrics:
    """Count every HTTP response by route and status and time it (the outermost middleware)."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()

        send_status = _StatusSend(send)
        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.observe_request(scope["path"], send_status.status, time.perf_counter() - start)


class _LimitedReceive:
    """``receive`` that counts the body bytes and raises :class:`ApiError` 413 once they pass ``max_bytes``."""

    def __init__(self, receive: Receive, max_bytes: int, message: Callable[[str], str]):
        self.receive, self.max_bytes, self.message, self.seen = receive, max_bytes, message, 0

    async def __call__(self) -> Message:
        message = await self.receive()
        if message["type"] == "http.request":
            self.seen += len(message.get("body", b""))
            if self.seen > self.max_bytes:
                raise ApiError(413, self.message(f"over {self.seen:,}"))
        return message


class _StatusSend:
    """``send`` that remembers the response's status (500 until one starts: an escaped exception is a 500)."""

    def __init__(self, send: Send):
        self.send, self.status = send, 500

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        await self.send(message)
