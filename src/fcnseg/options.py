"""Command options as typed dataclasses, and the argparse parsers generated from them.

Every command's options are one dataclass whose fields carry their help (the one-line reason for the
default) and, where the flag is not ``--`` + the field name with dashes, their flag, as field metadata::

    precision: Precision = shared("precision")          # an option several commands share, declared once
    window: int = opt(0, "sliding-window side in pixels (0 = whole images)")
    out_dir: str = opt("", "output folder", flag="--out", short="-o")

Choices are ``Literal[...]`` types: argparse's ``choices`` and the checks of a config file's values
(:func:`check_choices`) both come from them, so allowed values are written once. ``--config FILE`` (YAML or
JSON mapping of field names) sits between the defaults and the flags: defaults < file < flags
(:func:`resolve`).

This module sits low in the house: it imports nothing of fcnseg but :mod:`fcnseg.errors`.
"""

from __future__ import annotations

import argparse
import functools
import json
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import MISSING, Field, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from .errors import ConfigError

Precision = Literal["auto", "fp32", "bf16"]
Engine = Literal["torch", "onnxruntime"]
CheckData = Literal["headers", "labels", "full", "off"]


def opt(default: Any = MISSING, help: str = "", *, flag: str | None = None, short: str | None = None,
        metavar: str | None = None, positional: bool = False, required: bool = False, cli: bool = True,
        default_factory: Callable[[], Any] | Any = MISSING, parse: Callable[[str], Any] | None = None,
        negatable: bool = True) -> Any:
    """A dataclass field with its command-line description in ``metadata``.

    Args:
        default: the default (lists and dicts: pass ``default_factory`` instead).
        help: one line: what the option does and why its default is what it is. ``{datasets}`` is replaced
            by the registered dataset families and ``{dataset_keys}`` by each family's extra arguments.
        flag: the long flag when it is not ``--`` + the field name with dashes (``out_dir`` -> ``--out``).
        short: a short flag too (``-o``).
        positional: a positional argument (``fcnseg predict IMAGES...``) instead of a flag.
        required: must be given (by a flag, or by ``--config``); checked after merging, so the file can give it.
        cli: False for a field that has no flag (e.g. a test-only setting).
        parse: turns the flag's text into the value (``"0.75,1"`` -> ``(0.75, 1.0)``).
        negatable: a bool gets ``--no-x`` beside ``--x`` (False: only ``--x``).
    """
    meta = {"help": help, "flag": flag, "short": short, "metavar": metavar, "positional": positional,
            "required": required, "cli": cli, "parse": parse, "negatable": negatable}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


def key_values(text: str) -> tuple[str, Any]:
    """``"k=v"`` -> ``("k", v)``, the value parsed as JSON where it is one (``true``, ``3``, ``[1, 2]``)."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE")
    k, v = text.split("=", 1)
    try:
        return k, json.loads(v)
    except json.JSONDecodeError:
        return k, v


def scales(text: str) -> tuple[float, ...]:
    """``"0.75,1,1.25"`` -> ``(0.75, 1.0, 1.25)``; positive numbers only."""
    try:
        values = tuple(float(s) for s in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers, e.g. 0.75,1,1.25") \
            from None
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: scales must be positive numbers, e.g. 0.75,1,1.25")
    return values


# Options several commands share: declared once here, used as ``name: Type = shared("name")``. A command may
# change the default (``shared("max_pixels", 8_000_000)``) where its reason differs; the help stays one text.
SHARED: dict[str, dict[str, Any]] = {
    "checkpoint": dict(default="", required=True, help="fcnseg checkpoint (.pt): model, classes, palette and "
                       "normalisation come from it"),
    "device": dict(default="", help="cpu, cuda, cuda:1; empty = cuda if available, else cpu"),
    "workers": dict(default=2, help="data-loading (image-decoding) processes; 0 = decode in the main process"),
    "precision": dict(default="auto", help="auto: bf16 where the device computes it natively (AVX512-BF16/AMX "
                      "CPUs, bf16 GPUs), else fp32; bf16 elsewhere is emulated and much slower (a warning says so)"),
    "engine": dict(default="torch", help="torch: the checkpoint's weights; onnxruntime: the exported onnx_file "
                   "(made by `fcnseg export`, e.g. int8)"),
    "onnx_file": dict(default="", flag="--onnx", help="ONNX file for engine onnxruntime (made by `fcnseg export`)"),
    "skip_bad": dict(default=False, help="skip unreadable or inconsistent inputs (logged, counted) instead of "
                     "stopping"),
    "max_pixels": dict(default=50_000_000, help="largest image read (width x height); larger files are refused"),
    "overwrite": dict(default=False, help="replace existing outputs (else an existing output is refused before "
                      "any work)"),
    "check_data": dict(default="headers", help="validate the data before any work: headers (sizes), labels "
                       "(decode masks), full (decode everything), off"),
    "dataset": dict(default="", help="dataset family: {datasets}"),
    "data_root": dict(default="", flag="--data", help="dataset folder"),
    "dataset_args": dict(default_factory=dict, flag="--dataset-arg", metavar="KEY=VALUE",
                         help="extra dataset argument KEY=VALUE (repeatable), e.g. --dataset-arg binary=true; "
                         "keys per dataset: {dataset_keys}"),
    "model_args": dict(default_factory=dict, flag="--model-arg", metavar="KEY=VALUE",
                       help="extra model factory argument KEY=VALUE (repeatable), e.g. --model-arg pretrained=true"),
    "flip": dict(default=False, help="average with the mirrored prediction"),
    "window": dict(default=0, help="sliding-window side in pixels, predictions averaged (0 = whole images)"),
    "shift_and_stitch": dict(default=1, metavar="F", help="F times denser scores by shift-and-stitch (paper section "
                             "3.2): F x F passes, F a product of the net's last strides (2, 4, ...); 1 = plain "
                             "inference; torch engine, FCN models"),
}


_KEEP = object()


def shared(name: str, default: Any = _KEEP, *, note: str = "", **changes: Any) -> Any:
    """The field of the shared option ``name`` (see :data:`SHARED`), with its default optionally changed and
    ``note`` (what the command's default means) added to the help."""
    spec = {**SHARED[name], **changes}
    if note:
        spec["help"] = f"{spec['help']}; {note}"
    if default is not _KEEP:  # MISSING: no default (the dataclass needs a value)
        spec.pop("default_factory", None)
        spec["default"] = default
    return opt(**spec)


def field_type(cls: type, name: str) -> Any:
    """The resolved annotation of field ``name`` of dataclass ``cls`` (string annotations evaluated)."""
    return _hints(cls)[name]


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _strip_optional(tp: Any) -> Any:
    if get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def choices_of(cls: type, name: str) -> tuple[Any, ...] | None:
    """The allowed values of field ``name`` when its type is a ``Literal[...]`` (or one or None), else None."""
    tp = _strip_optional(field_type(cls, name))
    return get_args(tp) if get_origin(tp) is Literal else None


def check_choices(cfg: Any) -> None:
    """Raise :class:`ConfigError` for the first field whose value is not one its ``Literal`` type allows."""
    for f in fields(cfg):
        allowed = choices_of(type(cfg), f.name)
        value = getattr(cfg, f.name)
        if allowed is not None and value not in allowed and value is not None:
            raise ConfigError(f"{f.name} must be one of {', '.join(map(str, allowed))}, not {value!r}",
                              fix=f"choose one of {', '.join(map(str, allowed))} for {{{f.name}}}")


def flag_of(f: Field) -> str:
    """The long flag of field ``f``: its metadata's ``flag``, else ``--`` + the name with dashes; a positional
    argument's name in capitals."""
    if f.metadata.get("positional"):
        return f.name.upper()
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def cli_fields(cls: type) -> list[Field]:
    """The fields of ``cls`` that have a command-line flag or argument."""
    return [f for f in fields(cls) if f.metadata.get("cli", True)]


def _help_values() -> dict[str, str]:
    import inspect

    from .data import DATASETS

    parts = []
    for name, cls in DATASETS.items():
        keys = [k for k in inspect.signature(cls).parameters if k not in ("root", "split", "transforms")]
        parts.append(f"{name}: {', '.join(keys) if keys else '(none)'}")
    keys = "; ".join(parts) + (" (folder: threshold=N for lossy JPEG masks, resize=image|mask|error for masks "
                               "of another size, holdout=0.1 to hold images out for val, binary=true for 0/255 "
                               "masks)")
    return {"{datasets}": ", ".join(DATASETS), "{dataset_keys}": keys}


def _help(f: Field, default: Any, values: dict[str, str]) -> str:
    text = f.metadata.get("help") or f.name.replace("_", " ")
    for k, v in values.items():
        text = text.replace(k, v)
    if f.metadata.get("required"):
        text += " (required)"
    elif not (default is None or default is MISSING or default is False or default in ("", (), [], {})) \
            and "default" not in text:
        shown = f"{default:,}" if type(default) is int and default >= 10_000 else \
            ",".join(map(str, default)) if isinstance(default, tuple) else str(default)
        if f"{shown} = " not in text:  # "(0 = all)" says it already
            text += f" (default: {shown})"
    return text.replace("%", "%%")  # argparse %-formats help


class _KeyValues(argparse.Action):
    """``--model-arg k=v`` (repeatable) collects into one dict."""

    def __call__(self, parser, namespace, values, option_string=None):  # type: ignore[no-untyped-def]
        got = dict(getattr(namespace, self.dest, None) or {})
        k, v = values
        got[k] = v
        setattr(namespace, self.dest, got)


def add_fields(p: argparse.ArgumentParser, cls: type, *, optional_positionals: bool = False) -> None:
    """Add one flag (or positional argument) per field of ``cls`` to ``p``; every default is None (unset).

    The value types, choices (``Literal``), repetition (``dict`` fields: ``KEY=VALUE`` repeated; ``list``
    and ``tuple`` fields: one or more values, numbers where the items are ``int`` or ``float``) and on/off
    switches (``bool``: ``--x`` / ``--no-x``) follow each field's annotation. ``optional_positionals``:
    positional arguments may be left out (``--config`` can give them).
    """
    values = _help_values() if any("{" in (f.metadata.get("help") or "") for f in fields(cls)) else {}
    for f in cli_fields(cls):
        m = f.metadata
        default = f.default if f.default is not MISSING else \
            (f.default_factory() if f.default_factory is not MISSING else MISSING)
        tp = _strip_optional(field_type(cls, f.name))
        origin = get_origin(tp)
        kw: dict[str, Any] = {"help": _help(f, default, values)}
        if not m.get("positional") and origin is not Literal:  # choices show as {a,b}
            kw["metavar"] = m.get("metavar") or flag_of(f).lstrip("-").upper().replace("-", "_")
        if origin is Literal:
            kw["choices"] = get_args(tp)
        if m.get("parse"):
            kw["type"] = m["parse"]
        elif tp is bool:
            kw.pop("metavar", None)
            kw["action"] = argparse.BooleanOptionalAction if m.get("negatable", True) else "store_true"
        elif origin is dict:
            kw.update(action=_KeyValues, type=key_values)
        elif origin in (list, tuple):
            kw.update(nargs=("*" if optional_positionals else "+") if m.get("positional") else "+")
            item = get_args(tp)[0] if get_args(tp) else str  # tuple[int, ...] -> int: `--boundary 1 2`
            if item in (int, float):
                kw["type"] = item
        elif tp in (int, float):
            kw["type"] = tp
        if m.get("positional"):
            if optional_positionals and "nargs" not in kw:
                kw["nargs"] = "?"
            p.add_argument(f.name, default=None, **kw)
        else:
            names = [n for n in (m.get("short"), flag_of(f)) if n]
            p.add_argument(*names, dest=f.name, default=None, **kw)


def read_mapping(path: str | Path) -> dict[str, Any]:
    """The mapping of option names to values in a YAML (``.yaml``/``.yml``) or JSON file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist", fix="check the path given to {config}",
                          path=path)
    text = path.read_text()
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text)
    except Exception as e:  # noqa: BLE001 - yaml and json raise their own types; the user needs the line
        raise ConfigError(f"config file {path}: not valid {path.suffix.lstrip('.') or 'JSON'}: {e}",
                          fix="correct the file given to {config}", path=path) from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of option names to values",
                          fix="write the file given to {config} as `name: value` lines", path=path)
    return data


def check_known(cls: type, keys: Iterable[str], where: str) -> None:
    """Refuse keys that are no field of ``cls``, so a typo never silently falls back to a default."""
    names = [f.name for f in fields(cls)]
    unknown = sorted(set(keys) - set(names))
    if unknown:
        raise ConfigError(f"{where}: unknown option {', '.join(unknown)}; known: {', '.join(names)}",
                          fix="correct the names in {config}")


def merge(values: dict[str, Any], layer: dict[str, Any]) -> dict[str, Any]:
    """``values`` updated by ``layer``; None in ``layer`` is unset; dict options merge key by key."""
    out = dict(values)
    for k, v in layer.items():
        if v is None:
            continue
        out[k] = {**(out.get(k) or {}), **v} if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _coerce(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """A config file's lists where a field is a tuple become tuples (JSON and YAML have no tuples)."""
    out = dict(values)
    for k, v in values.items():
        if isinstance(v, list) and get_origin(_strip_optional(field_type(cls, k))) is tuple:
            out[k] = tuple(v)
    return out


def resolve(cls: type, file: str | Path | None = None, flags: dict[str, Any] | None = None) -> Any:
    """``cls`` from its defaults, then ``file`` (YAML/JSON mapping of field names), then ``flags``.

    ``flags`` of None are unset; dict options merge key by key. Unknown names, a missing required option and
    a value outside its ``Literal`` choices are :class:`ConfigError` naming the option.
    """
    assert is_dataclass(cls)
    from_file = read_mapping(file) if file else {}
    check_known(cls, from_file, f"config file {file}")
    values = merge(merge({}, from_file), {k: v for k, v in (flags or {}).items() if v not in ([], ())})
    values = _coerce(cls, values)
    for f in fields(cls):
        needed = f.metadata.get("required") or (f.default is MISSING and f.default_factory is MISSING)
        if needed and values.get(f.name) in (None, "", [], ()):
            raise ConfigError(f"{f.name} is required", fix=f"give {{{f.name}}}")
    cfg = cls(**values)
    check_choices(cfg)
    return cfg


def namespace_values(cls: type, ns: argparse.Namespace) -> dict[str, Any]:
    """The values of ``cls``'s fields that ``ns`` (parsed flags) sets; unset flags are left out."""
    out = {}
    for f in cli_fields(cls):
        v = getattr(ns, f.name, None)
        if v is not None and v != []:
            out[f.name] = tuple(v) if isinstance(v, list) and \
                get_origin(_strip_optional(field_type(cls, f.name))) is tuple else v
    return out
