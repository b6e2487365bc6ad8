"""The one error type of the service: an HTTP status and a one-line message, answered as ``{"error": ...}``."""

from __future__ import annotations


class ApiError(Exception):
    """A refusal to send to the client: ``status``, a one-line ``message`` naming the problem, extra headers."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}
