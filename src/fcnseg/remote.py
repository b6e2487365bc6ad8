"""Inputs named by URL (``https://host/tiles/``, ``s3://bucket/tiles/``, ``file:///data/tiles``): listed and read
through fsspec, so ``fcnseg predict`` takes them in all three modes (one process, ``torchrun``, ``--ray``).

A URL is a string with a scheme of two letters or more before ``://`` (``C:/`` is a path). A URL that ends in a
folder is listed recursively, as a local folder is (image suffixes only; the others reported in one line); one
that names a file is that file. Each image is then read whole into memory (:func:`read_bytes`) and decoded by
:mod:`fcnseg.io`, the one image reader, under the URL's name, so an error names the URL.

fsspec (a dependency of torch) reads ``file://`` and ``memory://`` itself; ``http(s)://`` needs aiohttp
(``pip install 'fcnseg[remote]'``), ``s3://`` s3fs, ``gs://`` gcsfs, ``az://`` adlfs: a missing one is a
:class:`~fcnseg.errors.MissingDependency` that names it. Credentials come from each library's own settings
(environment, config files), never from fcnseg's options.
"""

from __future__ import annotations

import io
import posixpath
import re
from typing import Any
from urllib.parse import unquote, urlsplit

from .errors import DataError, MissingDependency
from .io import IMAGE_EXTENSIONS

__all__ = ["is_url", "list_images", "read_bytes", "named_stream", "url_stem", "PACKAGES"]

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")

PACKAGES = {"http": ("aiohttp", "remote"), "https": ("aiohttp", "remote"), "s3": ("s3fs", ""),
            "s3a": ("s3fs", ""), "gs": ("gcsfs", ""), "gcs": ("gcsfs", ""), "az": ("adlfs", ""),
            "abfs": ("adlfs", ""), "abfss": ("adlfs", ""), "hf": ("huggingface_hub", ""),
            "sftp": ("paramiko", ""), "ssh": ("paramiko", "")}
"""The package (and fcnseg extra, if any) that fsspec needs for each scheme it does not read itself."""


def is_url(name: object) -> bool:
    """True for ``scheme://...`` (a scheme of two characters or more: ``C:\\`` stays a path)."""
    return isinstance(name, str) and bool(_URL.match(name))


def scheme(url: str) -> str:
    return url.split("://", 1)[0].lower()


def filesystem(url: str) -> tuple[Any, str]:
    """fsspec's file system for ``url`` and the path within it; a missing package is a MissingDependency."""
    import fsspec

    try:
        return fsspec.core.url_to_fs(url)
    except ImportError as e:
        package, extra = PACKAGES.get(scheme(url), (getattr(e, "name", None) or "", ""))
        raise MissingDependency(package or f"an fsspec back end for {scheme(url)}://", extra,
                                needed_for=f"reading {scheme(url)}:// inputs") from e
    except ValueError as e:  # fsspec: "Protocol not known: ..."
        raise DataError(f"input {url}: {e}", fix="pass a local path, or a URL that fsspec reads (https://, "
                        "s3://, gs://, file://...) as {inputs}") from e


def _is_image(path: str) -> bool:
    base = posixpath.basename(path.rstrip("/"))
    return posixpath.splitext(base)[1].lower() in IMAGE_EXTENSIONS and not base.startswith(".")


def list_images(url: str) -> tuple[list[tuple[str, str]], list[str]]:
    """``([(image URL, key)], [other files' URLs])`` under ``url``: every image below a folder (key: its path
    under the folder, POSIX; other files are returned, not taken), or the one file named, whatever its suffix
    (key: its name). A URL that names nothing readable is a
    :class:`~fcnseg.errors.DataError` naming it."""
    fs, root = filesystem(url)
    try:
        folder = fs.isdir(root)
        if folder:
            found = sorted(p for p in fs.find(root) if not posixpath.basename(p).startswith("."))
        elif fs.isfile(root):
            found = [root]
        else:
            raise FileNotFoundError(url)
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - the back ends raise their own types (aiohttp, botocore...)
        raise DataError(f"input {url} cannot be listed: {_short(e)}", path=url,
                        fix="check the URL and its credentials, or pass local paths as {inputs}") from e
    if not folder:  # a file named directly is taken whatever its suffix, as a local one is
        return [(_full(fs, root), posixpath.basename(root))], []
    prefix = root.rstrip("/") + "/"
    keyed = [(_full(fs, p), p[len(prefix):] if p.startswith(prefix) else posixpath.basename(p)) for p in found]
    return [(u, k) for u, k in keyed if _is_image(u)], [u for u, _ in keyed if not _is_image(u)]


def _full(fs: Any, path: str) -> str:
    """The URL of a path that fsspec listed (http's listings are URLs already)."""
    return path if is_url(path) else fs.unstrip_protocol(path)


def read_bytes(url: str) -> bytes:
    """The whole file at ``url``; an unreadable one is a DataError naming it (``skip_bad`` skips it)."""
    fs, path = filesystem(url)
    try:
        with fs.open(path, "rb") as f:
            return f.read()
    except Exception as e:  # noqa: BLE001 - the back ends raise their own types
        raise DataError(f"{url}: cannot be read: {_short(e)}", path=url,
                        fix="check the URL and its credentials, or remove it from {inputs}") from e


def named_stream(data: bytes, name: str) -> io.BytesIO:
    """``data`` as a binary stream whose ``name`` is ``name``: :mod:`fcnseg.io`'s errors name the URL."""
    stream = io.BytesIO(data)
    stream.name = name
    return stream


def url_stem(url: str) -> str:
    """The file name without suffix of the path of ``url`` (``https://h/a/b%20c.png?x=1`` -> ``b c``)."""
    base = posixpath.basename(unquote(urlsplit(url).path).rstrip("/"))
    return posixpath.splitext(base)[0] or "image"


def _short(e: BaseException) -> str:
    if isinstance(e, FileNotFoundError):
        return "not found"
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 300 else text[:297] + "..."
