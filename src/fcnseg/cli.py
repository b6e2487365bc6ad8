"""``fcnseg train | eval | predict | export | convert | serve | hha | models``: argparse over the library.

Each command's options are one dataclass (:mod:`fcnseg.config`, :class:`fcnseg.serve.config.ServeConfig`);
its flags, their help, choices and defaults are generated from the fields (:mod:`fcnseg.options`).
``--config FILE`` (YAML or JSON mapping of field names) works for train, eval, predict, export and serve:
defaults < file < flags (train: < recipe < file < flags).

Errors reach the user as one line; ``--debug`` shows the traceback instead. Only fcnseg's own errors
(:mod:`fcnseg.errors`) are refusals: their fix names options by field, spelled here as this command's flags.
Exit codes: 0 done, 2 refused (bad input, output or options), 1 a failure while working (prediction, a
process of a multi-process run, a diverged loss, out of memory) or a bug ("unexpected ...: rerun with
--debug"), 130 interrupted (SIGINT/SIGTERM; training saved ``last.pt`` first).
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .config import ConvertConfig, EvalConfig, ExportConfig, HhaConfig, ModelsConfig, PredictConfig, TrainConfig
from .errors import ConfigError, DataError, OutputError, optional_import
from .options import add_fields, namespace_values, opt, resolve
from .serve.config import ServeConfig


@dataclass
class ConfigFile:
    """``--config FILE``, for commands with many options."""

    config: str = opt("", "YAML or JSON file of option names (the fields behind the flags) and values; flags "
                      "override it")


@dataclass
class Progress:
    """``--quiet``, for commands that show progress."""

    quiet: bool = opt(False, "no progress output", negatable=False)


@dataclass
class TrainRun:
    """Flags of one ``fcnseg train`` invocation that are not saved with the run."""

    pretrained: bool = opt(False, "shortcut for --model-arg pretrained=true", negatable=False)
    dry_run: bool = opt(False, "check the data, the flags and the output folder, build the model, then stop "
                        "without writing anything", negatable=False)


@dataclass(frozen=True)
class Command:
    """One subcommand: its options dataclass, the invocation-only flags beside it, and what runs it."""

    options: type
    run: Callable[[argparse.Namespace], int]
    help: str
    description: str = ""
    extras: tuple[type, ...] = ()


def options_of(cls: type, a: argparse.Namespace) -> Any:
    """The ``cls`` options the parsed flags ``a`` describe, over ``--config`` (when the command has it)."""
    return resolve(cls, getattr(a, "config", None) or None, namespace_values(cls, a))


def train_config(a: argparse.Namespace) -> TrainConfig:
    """The TrainConfig that ``fcnseg train`` flags ``a`` describe (resolved as the command does)."""
    from .config import make_config

    overrides: dict[str, Any] = {f.name: None for f in fields(TrainConfig)}
    overrides.update(namespace_values(TrainConfig, a))
    overrides.pop("recipe")
    model_args = dict(overrides.get("model_args") or {})
    if a.pretrained:
        model_args["pretrained"] = True
    overrides["model_args"] = model_args or None
    if a.resume:  # the run's own config is the base: flags change only what they name
        from .checkpoint import load_checkpoint

        saved = load_checkpoint(a.resume).config or {}
        names = {f.name for f in fields(TrainConfig)}
        per_invocation = ("recipe", "resume", "overwrite", "stop_at", "init_from")
        base = {k: v for k, v in saved.items() if k in names and k not in per_invocation}
        for k, v in overrides.items():
            if v is None:
                continue
            base[k] = {**base.get(k, {}), **v} if k in ("model_args", "dataset_args") else v
        if not a.out_dir:
            base["out_dir"] = str(Path(a.resume).parent)
        return make_config(a.recipe or saved.get("recipe"), a.config, **base)
    return make_config(a.recipe, a.config, **overrides)


def _train(a: argparse.Namespace) -> int:
    from .distributed import close_distributed
    from .train import run_train

    best = run_train(train_config(a), progress=not a.quiet, dry_run=bool(a.dry_run))
    close_distributed()  # after a finished run only: a failed one may leave a collective behind
    if a.dry_run:
        print(f"dry run passed: data checked, {best.parent} can be written; nothing was written")
    elif best.is_file():
        print(f"best checkpoint: {best}")
    return 0


def _eval(a: argparse.Namespace) -> int:
    from .evaluate import run_eval

    run_eval(options_of(EvalConfig, a), progress=not a.quiet)
    return 0


def _predict(a: argparse.Namespace) -> int:
    from .distributed import close_distributed, is_main
    from .predict import run_predict

    cfg: PredictConfig = options_of(PredictConfig, a)
    r = run_predict(cfg, progress=not a.quiet)
    if is_main():  # one summary of every process's counts
        skipped = f", {r['skipped']} skipped (unreadable)" if r["skipped"] else ""
        resumed = f", {r['resumed']} done before" if r["resumed"] else ""
        procs = f" on {r['processes']} processes" if r["processes"] > 1 else ""
        print(f"{r['images']} images in {r['seconds']:.1f} s ({r['images_per_s']:.2f} images/s){procs}{skipped}"
              f"{resumed} -> {cfg.out_dir}")
    close_distributed()  # after a finished run only: a failed one may leave a collective behind
    return 0


def _export(a: argparse.Namespace) -> int:
    cfg: ExportConfig = options_of(ExportConfig, a)
    suffix = Path(cfg.out).suffix.lower()
    suffix_fmt = {".onnx": "onnx", ".pt": "torchscript", ".ts": "torchscript"}.get(suffix)
    fmt = (suffix_fmt or "onnx") if cfg.format == "auto" else cfg.format
    if suffix_fmt and suffix_fmt != fmt:
        raise ConfigError(f"{cfg.out}: a {suffix} file for format {fmt}",
                          fix="name {out} .onnx for onnx, .pt or .ts for torchscript, or change {format}")
    if fmt == "onnx":
        optional_import("onnx", needed_for="fcnseg export")
    calibration = None
    if cfg.int8:
        optional_import("onnxruntime", needed_for="fcnseg export --int8")
        from .predict import collect_inputs

        calibration = collect_inputs(cfg.int8)[: cfg.calibration_images]
    from .export import export_model

    path = export_model(cfg.checkpoint, cfg.out, fmt=fmt, opset=cfg.opset, overwrite=cfg.overwrite,
                        int8_calibration=calibration)
    print(f"wrote {path}")
    return 0


def _convert(a: argparse.Namespace) -> int:
    from . import convert as conv

    cfg: ConvertConfig = options_of(ConvertConfig, a)
    if not Path(cfg.source).is_file():
        raise DataError(f"{cfg.source}: no such file", fix="check {source}", path=cfg.source)
    if Path(cfg.out).exists() and not cfg.overwrite:
        raise OutputError(f"{cfg.out} exists", fix="choose another {out} or set {overwrite}", path=cfg.out)
    classes = None
    if cfg.classes and not Path(cfg.classes).is_file():
        raise DataError(f"{cfg.classes}: no such file", fix="check {classes}", path=cfg.classes)
    if cfg.classes:
        classes = [c.strip() for c in Path(cfg.classes).read_text().splitlines() if c.strip()]
    convert = conv.convert_caffemodel if cfg.format == "caffe" else conv.convert_torchvision_vgg16
    kw: dict[str, Any] = {"classes": classes, "model_args": cfg.model_args}
    num_classes = cfg.num_classes or (len(classes) if classes else None)
    if num_classes is not None:
        kw["num_classes"] = num_classes
    path = convert(cfg.source, cfg.out, model=cfg.model, **kw)
    print(f"wrote {path}")
    return 0


def _hha(a: argparse.Namespace) -> int:
    from dataclasses import replace

    from .hha import NYUD_CAMERA, encode_depth_files

    cfg: HhaConfig = options_of(HhaConfig, a)
    given = {k: getattr(cfg, k) for k in ("fx", "fy", "cx", "cy") if getattr(cfg, k) is not None}
    written = encode_depth_files(cfg.depth, cfg.out, replace(NYUD_CAMERA, **given), depth_scale=cfg.depth_scale,
                                 overwrite=cfg.overwrite)
    print(f"wrote {len(written)} HHA images to {cfg.out}")
    return 0


def _models(a: argparse.Namespace) -> int:
    from .models import list_models
    from .models.zoo import models_table

    opts = options_of(ModelsConfig, a)
    print("\n".join(list_models()) if opts.names else models_table(timed=opts.time))
    return 0


def _serve(a: argparse.Namespace) -> int:
    import os
    import signal

    cfg: ServeConfig = options_of(ServeConfig, a)
    uvicorn = optional_import("uvicorn", needed_for="fcnseg serve")
    optional_import("fastapi", needed_for="fcnseg serve")
    if cfg.workers < 1:
        raise ConfigError(f"workers must be at least 1, not {cfg.workers}", fix="set {workers} to 1 or more")
    from .serve.app import create_app
    from .serve.config import CONFIG_ENV

    app = create_app(cfg)  # reads the checkpoint and checks the settings: a bad flag fails here, not in a worker

    def stop(signum: int, frame: object) -> None:
        # uvicorn handles SIGTERM itself (drains, then shuts down) and re-raises it once done; this handler
        # turns that re-raise into a clean exit 0, and stops the process if SIGTERM comes before uvicorn starts.
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    common = dict(host=cfg.host, port=cfg.port, timeout_graceful_shutdown=int(cfg.timeout_s) + 5)
    if cfg.workers == 1:
        uvicorn.run(app, **common)
    else:  # worker processes build their own app from the settings
        os.environ[CONFIG_ENV] = cfg.to_json()
        uvicorn.run("fcnseg.serve.app:app_from_env", factory=True, workers=cfg.workers, **common)
    return 0


COMMANDS: dict[str, Command] = {
    "train": Command(TrainConfig, _train, "train a model", "Train an FCN. Flags override --config (YAML/JSON), "
                     "which overrides the --recipe preset, which overrides the defaults.",
                     (ConfigFile, Progress, TrainRun)),
    "eval": Command(EvalConfig, _eval, "the paper's four metrics of a checkpoint on a split",
                    "Pixel accuracy, mean accuracy, mean IU and frequency-weighted IU (arXiv:1411.4038, section 5) "
                    "over a whole split at the labels' resolution. Defaults: the split, dataset and folder the "
                    "checkpoint was validated on.", (ConfigFile, Progress)),
    "predict": Command(PredictConfig, _predict, "segment images: palette label PNGs and colour overlays",
                       "Write <stem>.png (palette PNG of class indices) and <stem>_overlay.png for every image. "
                       "Any format Pillow reads; EXIF orientation applied; images over --tile-pixels are "
                       "predicted in tiles, so memory stays bounded.", (ConfigFile, Progress)),
    "export": Command(ExportConfig, _export, "export a checkpoint to ONNX or TorchScript (dynamic H, W)",
                      extras=(ConfigFile,)),
    "convert": Command(ConvertConfig, _convert, "import a .caffemodel or torchvision VGG16 .pth as an fcnseg "
                       "checkpoint", "Write a self-describing fcnseg checkpoint from weights made elsewhere: a Caffe "
                       ".caffemodel (read without Caffe; e.g. the reference fcn8s-heavy-pascal.caffemodel) or "
                       "torchvision's vgg16-397923af.pth (fc6/fc7 convolutionalised)."),
    "models": Command(ModelsConfig, _models, "the registered models, and the paper's results with their commands"),
    "serve": Command(ServeConfig, _serve, "serve a checkpoint over HTTP: JSON/PNG API, metrics and a web page",
                     "Serve one model: POST /v1/segment, GET /v1/model, /healthz, /metrics and the page at /. "
                     "Concurrent requests are batched (same-size images together).", (ConfigFile,)),
    "hha": Command(HhaConfig, _hha, "encode depth maps as HHA images (Gupta et al., ECCV 2014)",
                   "Write <out>/<stem>.png, the HHA image (horizontal disparity, height above the lowest point, "
                   "angle with gravity) of each 16-bit depth PNG, as the paper's NYUDv2 nets read them "
                   "(fcnseg.hha). Intrinsics: NYUDv2's Kinect unless --fx/--fy/--cx/--cy are given."),
}


def build_parser() -> argparse.ArgumentParser:
    """The ``fcnseg`` parser: one subcommand per :data:`COMMANDS` entry, its flags generated from its dataclasses."""
    from . import __version__

    parser = argparse.ArgumentParser(prog="fcnseg", description="Fully Convolutional Networks for Semantic "
                                     "Segmentation (Long, Shelhamer & Darrell, arXiv:1411.4038)")
    parser.add_argument("--version", action="version", version=f"fcnseg {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks of errors")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, cmd in COMMANDS.items():
        p = sub.add_parser(name, help=cmd.help, description=cmd.description or cmd.help)
        add_fields(p, cmd.options, optional_positionals=ConfigFile in cmd.extras)
        for extra in cmd.extras:
            add_fields(p, extra)
        # also after the command, where errors tell users to add them
        p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging")
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show Python tracebacks of errors")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; errors are printed as one line (``--debug``: raised) and turned into exit codes."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    from .errors import FcnsegError, TrainingInterrupted

    def fail(message: str, code: int) -> int:
        # One write of the whole line: under torchrun every rank prints its refusal to the same pipe, and print()'s
        # separate write of the newline let two ranks' lines run together.
        sys.stderr.write(f"fcnseg {args.command}: {message}\n")
        sys.stderr.flush()
        return code

    try:
        return COMMANDS[args.command].run(args)
    except FcnsegError as e:
        if args.debug and not isinstance(e, TrainingInterrupted):
            raise
        kind = "interrupted" if isinstance(e, TrainingInterrupted) else "error"
        return fail(f"{kind}: {_one_line(e.render(functools.partial(flag_spelling, command=args.command)))}",
                    e.exit_code)
    except KeyboardInterrupt:
        if args.debug:
            raise
        return fail("interrupted", 130)
    except MemoryError:
        if args.debug:
            raise
        return fail("error: out of memory; fix: lower --tile-pixels or --max-pixels (predict, eval, serve), "
                    "--batch-size or --crop-size (train), or free memory", 1)
    except Exception as e:  # noqa: BLE001 - not fcnseg's refusal: a bug, shown in one line unless --debug
        if args.debug:
            raise
        return fail(f"unexpected {type(e).__name__}: {_one_line(e)}; fix: rerun with --debug for the traceback "
                    f"and report it", 1)


@functools.cache
def _flags(command: str | None = None) -> dict[str, str]:
    """Option field name -> the flag the generated parser of ``command`` gives it (None: of every command, the
    first command's where several have the field)."""
    spelled: dict[str, str] = {}
    subparsers = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for name, sub in subparsers.items():
        if command not in (None, name):
            continue
        for arg in sub._actions:
            if arg.dest in spelled or arg.dest in ("help", "verbose", "debug"):
                continue
            longs = [s for s in arg.option_strings if s.startswith("--") and not s.startswith("--no-")]
            spelled[arg.dest] = longs[0] if longs else (arg.metavar or arg.dest).upper()
    return spelled


def flag_spelling(field: str, command: str | None = None) -> str:
    """An option's field name as the flag a user types: ``skip_bad`` -> ``--skip-bad``, ``out_dir`` -> ``--out``.

    Looked up in the generated parser of ``command`` (a positional argument: its name in capitals), then in
    every command's; a name no command has is written ``--`` + the name with dashes.
    """
    if command in COMMANDS and field in _flags(command):
        return _flags(command)[field]
    return _flags().get(field, "--" + field.replace("_", "-"))


def _one_line(e: BaseException | str) -> str:
    """The exception's message as one line: a DataLoader worker's wrapped traceback is cut to its message."""
    from .errors import clean_error_message

    if isinstance(e, str):
        return " ".join(e.split()) if "\n" in e else e
    text = clean_error_message(str(e), type(e).__name__) or type(e).__name__
    if isinstance(e, KeyError) and text.startswith(("'", '"')):
        text = text[1:-1]
    return " ".join(text.split("\n")[0].split()) if "\n" in text else text


if __name__ == "__main__":
    sys.exit(main())
