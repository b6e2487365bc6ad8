"""Append-only JSON-lines logs that a kill at any moment leaves readable: ``predict``'s manifest and RLE parts.

* :class:`AppendLog` opens a file with ``O_APPEND`` and writes each record as one line in one ``write``, so
  lines of concurrent writers (threads, processes) never interleave; it fsyncs every ``sync_every`` lines or
  ``sync_s`` seconds and on close. A file whose last line was torn by a kill gets a newline first, so the
  next line starts clean.
* :func:`read_jsonl` yields the records of such a file and skips a torn or malformed line (counted in the
  log), never failing on one.
* :func:`file_sha256` hashes a file in chunks (a checkpoint of hundreds of MB in bounded memory).

The manifest of ``fcnseg predict`` (``manifest.jsonl`` in the output folder) holds one line per input finished
or found bad, written after that input's outputs are in place::

    {"file": "data/a.png", "status": "done", "model": "<sha256>"}
    {"file": "data/b.png", "status": "bad", "model": "<sha256>", "error": "data/b.png: not an image"}

``model`` is :func:`model_fingerprint`: the checkpoint file's sha256, and the ONNX file's when that engine
scores. Read back with :func:`read_manifest`, the last line of a file wins.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .outputs import output_error

__all__ = ["AppendLog", "read_jsonl", "file_sha256", "model_fingerprint", "read_manifest", "MANIFEST"]

log = logging.getLogger(__name__)

MANIFEST = "manifest.jsonl"
"""The manifest's name in ``predict``'s output folder."""

_CHUNK = 1 << 20


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of the file's bytes, read 1 MiB at a time."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def model_fingerprint(checkpoint: str | os.PathLike[str], onnx_file: str | os.PathLike[str] | None = None) -> str:
    """What made a prediction: the checkpoint's sha256, joined by ``+`` to the ONNX file's when that scores."""
    digest = file_sha256(checkpoint)
    return f"{digest}+{file_sha256(onnx_file)}" if onnx_file else digest


class AppendLog:
    """One JSON record a line, appended atomically (``O_APPEND``, one ``write`` a line), fsynced at intervals.

    Thread-safe. The file is opened (created) at the first line, so a run that finishes nothing leaves none.
    ``option`` is the config field of the folder, named by an :class:`~fcnseg.errors.OutputError` when a write
    fails (full disk, read-only). Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, path: str | os.PathLike[str], *, option: str = "out_dir", sync_every: int = 100,
                 sync_s: float = 5.0):
        self.path, self.option, self.sync_every, self.sync_s = Path(path), option, sync_every, sync_s
        self._lock = threading.Lock()
        self._unsynced, self._last_sync = 0, time.monotonic()
        self._fd = -1

    def _open(self) -> None:
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        if _ends_torn(self.path):  # a kill tore the last line: end it, so the next line parses
            os.write(self._fd, b"\n")

    def append(self, record: dict[str, Any]) -> None:
        """Write ``record`` as one line (one ``write`` call; lines under ``PIPE_BUF``, 4 KiB, are also atomic
        on pipes and most network file systems)."""
        data = (json.dumps(record, separators=(", ", ": ")) + "\n").encode()
        with self._lock:
            try:
                if self._fd < 0:
                    self._open()
                written = os.write(self._fd, data)
                while written < len(data):  # only on a failing disk: the rest follows, and raises if it fails
                    written += os.write(self._fd, data[written:])
                self._unsynced += 1
                if self._unsynced >= self.sync_every or time.monotonic() - self._last_sync >= self.sync_s:
                    self._sync()
            except OSError as e:
                raise output_error(e, self.path, self.option) from e

    def _sync(self) -> None:
        os.fsync(self._fd)
        self._unsynced, self._last_sync = 0, time.monotonic()

    def close(self) -> None:
        """fsync and close (idempotent)."""
        with self._lock:
            if self._fd < 0:
                return
            try:
                self._sync()
            except OSError as e:
                raise output_error(e, self.path, self.option) from e
            finally:
                os.close(self._fd)
                self._fd = -1

    def __enter__(self) -> AppendLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _ends_torn(path: Path) -> bool:
    """True when ``path`` is non-empty and its last byte is not a newline."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() == 0:
                return False
            f.seek(-1, os.SEEK_END)
            return f.read(1) != b"\n"
    except FileNotFoundError:
        return False


def read_jsonl(path: str | os.PathLike[str], *, with_offsets: bool = False) -> Iterator[Any]:
    """The records (JSON objects) of a JSON-lines file, in order; a torn or malformed line is skipped (counted
    in one log line). ``with_offsets``: ``(record, byte offset, byte length)`` so a caller can copy the raw line.
    A missing file has no records."""
    path = Path(path)
    if not path.is_file():
        return
    bad, offset = 0, 0
    with open(path, "rb") as f:
        for line in f:
            start, offset = offset, offset + len(line)
            try:
                record = json.loads(line) if line.endswith(b"\n") else None  # no newline: torn by a kill
            except ValueError:
                record = None
            if not isinstance(record, dict):
                bad += line.strip() != b""
                continue
            yield (record, start, len(line)) if with_offsets else record
    if bad:
        log.warning("%s: skipped %d torn or malformed lines (left by a killed run)", path, bad)


def read_manifest(path: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """``{file: its last record}`` of a manifest (see the module docstring); torn lines are skipped."""
    return {r["file"]: r for r in read_jsonl(path) if isinstance(r.get("file"), str)}
