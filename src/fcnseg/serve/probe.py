"""Readiness probing for a running ``fcnseg serve``: what a deploy script, a load test or a test waits on."""

from __future__ import annotations

import subprocess
import time
import urllib.error
import urllib.request

from ..errors import FcnsegError

__all__ = ["ServerNotReady", "wait_ready"]


class ServerNotReady(FcnsegError, RuntimeError):
    """A server did not become ready: it exited first, or ``/healthz`` did not answer 200 in time."""

    exit_code = 1


def wait_ready(url: str, *, timeout: float = 120.0, process: subprocess.Popen | None = None,
               interval: float = 0.1) -> None:
    """Return once ``GET {url}/healthz`` answers 200 (model loaded and warmed up).

    Raises :class:`ServerNotReady` after ``timeout`` seconds, or at once if ``process`` (the server, when we
    started it) has exited meanwhile.
    """
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise ServerNotReady(f"the server exited with code {process.returncode} before it was ready",
                                 fix="read the server's log for the reason")
        try:
            with urllib.request.urlopen(f"{url.rstrip('/')}/healthz", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):  # not listening yet, or 503 while warming up
            pass
        if time.monotonic() > deadline:
            raise ServerNotReady(f"{url}/healthz not ready within {timeout:g} s",
                                 fix="wait longer, or read the server's log (GET /healthz names a load error)")
        time.sleep(interval)
