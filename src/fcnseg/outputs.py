"""Output paths that never lose work: checked before any work, written atomically and durably.

* :func:`check_output_dir` / :func:`check_output_file` run before a command computes anything: the folder
  can be created and written to (not read-only, not under a file), an existing output is kept unless
  ``overwrite``. Nothing is deleted here.
* :func:`atomic_write` writes a temporary file in the same folder, flushes and fsyncs it, gives it mode
  0644 and renames it over the target (then fsyncs the folder): a kill or a full disk at any moment leaves
  either the old file or the new one, never a torn one.
* :func:`output_error` turns ``ENOSPC``, ``EROFS``, ``EACCES``, ``ENOTDIR``... into an :class:`OutputError`
  that names the path and, as the fix, the option (config field, e.g. ``out_dir``) that chose it.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

from .errors import OutputError

__all__ = ["OutputError", "check_output_dir", "check_output_file", "atomic_write", "output_error",
           "remove_stale_temp_files", "TEMP_SUFFIX"]

TEMP_SUFFIX = ".tmp"
FILE_MODE = 0o644

_OS_ERRORS: dict[int, tuple[str, str]] = {
    errno.ENOSPC: ("no space left on the device", "free disk space or choose another {%s}"),
    errno.EDQUOT: ("no space left on the device", "free disk space or choose another {%s}"),
    errno.EROFS: ("the file system is read-only", "choose another {%s}"),
    errno.EACCES: ("permission denied", "choose a folder you can write to with {%s}"),
    errno.EPERM: ("permission denied", "choose a folder you can write to with {%s}"),
    errno.ENOTDIR: ("a parent of this path is a file, not a folder", "choose another {%s}"),
    errno.EISDIR: ("is a folder, expected a file", "name a file with {%s}"),
    errno.EEXIST: ("a file of that name is in the way of a folder", "choose another {%s}"),
}
"""What an ``OSError`` of a write means, and its fix (``%s``: the option's field name), by errno."""


def output_error(e: OSError, path: str | os.PathLike[str], option: str = "out_dir") -> OutputError:
    """The :class:`OutputError` for an ``OSError`` met while writing ``path``, whose fix names ``option``.

    ``option`` is the config field that chose the path (``out_dir``, ``out``, ``onnx_file``): the CLI shows it
    as the flag (``--out``), Python as ```out_dir```.
    """
    what, fix = _OS_ERRORS.get(e.errno or 0, (f"cannot write ({e.strerror or e})", "choose another {%s}"))
    return OutputError(f"{path}: {what}", fix=fix % option, path=path)


def _first_existing_parent(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _probe_writable(folder: Path, path: Path, option: str) -> None:
    """Create and delete a small file in ``folder``: the only test that a write will work (permissions,
    read-only mounts, ACLs and root's privileges all answer it)."""
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".fcnseg-probe-", suffix=TEMP_SUFFIX)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise output_error(e, path, option) from e


def check_output_dir(path: str | os.PathLike[str], *, option: str = "out_dir", overwrite: bool = False,
                     allow_existing: bool = False, create: bool = False) -> Path:
    """Check that the folder ``path`` can hold this command's outputs; create it only if ``create``.

    Refuses a path that is a file or lies under a file, a folder that cannot be written, and a non-empty
    folder unless ``overwrite`` or ``allow_existing`` (resume), with an :class:`OutputError` whose fix names
    ``option`` (the config field of the path) and ``overwrite``. Deletes nothing.
    """
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: is a file, not a folder", fix=f"choose another {{{option}}}", path=out)
    parent = _first_existing_parent(out)
    if not parent.is_dir():
        raise OutputError(f"{out}: {parent} is a file, not a folder", fix=f"choose another {{{option}}}", path=out)
    if out.is_dir() and any(out.iterdir()) and not (overwrite or allow_existing):
        raise OutputError(f"{out}: exists and is not empty", path=out,
                          fix=f"pass {{overwrite}} to replace its contents, or choose another {{{option}}}")
    _probe_writable(parent, out, option)
    if create:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise output_error(e, out, option) from e
    return out


def check_output_file(path: str | os.PathLike[str], *, option: str = "out", overwrite: bool = False) -> Path:
    """Check that the file ``path`` can be written (its folder may not exist yet). Deletes nothing.

    Refusals are :class:`OutputError` whose fix names ``option`` (the config field of the path).
    """
    out = Path(path)
    if out.is_dir():
        raise OutputError(f"{out}: is a folder, expected a file", fix=f"name a file with {{{option}}}", path=out)
    if out.exists() and not overwrite:
        raise OutputError(f"{out}: exists", path=out,
                          fix=f"pass {{overwrite}} to replace it, or choose another {{{option}}}")
    parent = _first_existing_parent(out.parent)
    if not parent.is_dir():
        raise OutputError(f"{out}: {parent} is a file, not a folder", fix=f"choose another {{{option}}}", path=out)
    _probe_writable(parent, out, option)
    return out


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None], *,
                 option: str = "out_dir", fsync: bool = True) -> Path:
    """Write ``path`` through ``write(file)`` atomically and durably (temp file, fsync, chmod 0644, rename,
    fsync of the folder). On any error the target is untouched, the temp file removed, and an ``OSError``
    becomes an :class:`OutputError` naming the path, whose fix names ``option`` (the config field that chose
    the path). ``fsync=False`` keeps the atomic rename but skips the syncs (outputs that can be made again,
    written by the thousand)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    except OSError as e:
        raise output_error(e, path, option) from e
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)  # mkstemp makes 0600: outputs are for others to read too
        os.replace(tmp, path)
        if fsync:
            _fsync_dir(path.parent)
    except OSError as e:
        raise output_error(e, path, option) from e
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _fsync_dir(folder: Path) -> None:
    # The rename is durable only once the folder's entry is on disk.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot fsync a folder; the rename itself is still atomic
    finally:
        os.close(fd)


def remove_stale_temp_files(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete ``.<name>.*.tmp`` files that a killed run left in ``folder``; returns what was removed."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for p in folder.glob(f".*{TEMP_SUFFIX}"):
        if p.is_file():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def free_bytes(path: str | os.PathLike[str]) -> int:
    """Free space on the file system that holds ``path`` (or its first existing parent)."""
    return shutil.disk_usage(_first_existing_parent(Path(path))).free
