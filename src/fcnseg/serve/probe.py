"""Readiness probing for a running ``fcnseg serve``: what a deploy script, a load test or a test waits on."""

from __future__ import annotations

import subprocess
import time
import urllib.error
import urllib.request

__all__ = ["wait_ready"]


def wait_ready(url: str, *, timeout: float = 120.0, process: subprocess.Popen | None = None,
               interval: float = 0.1) -> None:
    """Return once ``GET {url}/healthz`` answers 200 (model loaded and warmed up).

    Raises ``TimeoutError`` after ``timeout`` seconds, and ``RuntimeError`` at once if ``process`` (the
    server, when we started it) has exited meanwhile.
    """
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server exited with code {process.returncode} before it was ready")
        try:
            with urllib.request.urlopen(f"{url.rstrip('/')}/healthz", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):  # not listening yet, or 503 while warming up
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url}/healthz not ready within {timeout:g} s")
        time.sleep(interval)
