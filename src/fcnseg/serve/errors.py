"""The one error type of the service: an HTTP status and a one-line message, answered as ``{"error": ...}``;
and how fcnseg's family errors are told to a client (:func:`client_message`)."""

from __future__ import annotations

from ..errors import FcnsegError, python_spelling


class ApiError(Exception):
    """A refusal to send to the client: ``status``, a one-line ``message`` naming the problem, extra headers."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def client_message(e: BaseException) -> str:
    """What an HTTP client is told of ``e``: a family error's one line without its fix (the fix names the
    server's options, such as ``max_pixels``, which a client cannot pass), anything else as ``Type: message``."""
    if isinstance(e, FcnsegError):
        return e.render(python_spelling, with_fix=False)
    return f"{type(e).__name__}: {e}"
