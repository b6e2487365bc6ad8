"""``fcnseg train | eval | predict | export | convert | models``: argparse over the library functions.

Errors reach the user as one line that names the file or flag and says the fix; ``--debug`` shows the
traceback instead. Exit codes: 0 done, 2 refused (bad input, output or arguments), 1 an unexpected failure,
130 interrupted (SIGINT/SIGTERM; training saved ``last.pt`` first).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

from .config import TrainConfig
from .io import DEFAULT_MAX_PIXELS
from .precision import PRECISIONS
from .predict import DEFAULT_TILE_PIXELS

# Train flags are generated from TrainConfig, so the dataclass stays the one source of defaults.
_FLAG_HELP = {
    "data_root": "dataset folder (default: $FCNSEG_DATA/<dataset>)",
    "model_args": "extra model factory argument KEY=VALUE (repeatable), e.g. --model-arg pretrained=true",
    "init_from": "checkpoint to initialise from by layer name (staged 32s -> 16s -> 8s)",
}


def _field_reasons() -> dict[str, str]:
    """Each TrainConfig field's one-line reason: the comment beside it in config.py (one source of truth)."""
    import inspect
    import re

    try:
        source = inspect.getsource(TrainConfig)
    except (OSError, TypeError):  # no source (e.g. a zipped install): flags keep their defaults only
        return {}
    pattern = re.compile(r"^    (\w+): [^#\n]*#(.*)$", re.M)
    return {m.group(1): m.group(2).strip() for m in pattern.finditer(source)}


def _parse_value(v: str) -> Any:
    try:
        return json.loads(v)
    except json.JSONDecodeError:
        return v


_CHOICES = {"check_data": ["headers", "labels", "full", "off"], "precision": list(PRECISIONS),
            "cache": ["auto", "on", "off"], "class_weights": ["none", "median_freq"],
            "batch_norm": ["auto", "train", "frozen"]}


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model", description="Train an FCN. Flags override --config "
                       "(YAML/JSON), which overrides the --recipe preset, which overrides the defaults.")
    p.add_argument("--config", help="YAML or JSON file of TrainConfig keys")
    p.add_argument("--out", dest="out_dir", help="run folder (checkpoints, log.jsonl, tensorboard/, config.json)")
    p.add_argument("--data", dest="data_root", help=_FLAG_HELP["data_root"])
    reasons = _field_reasons()
    for f in fields(TrainConfig):
        if f.name in ("out_dir", "data_root"):
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not MISSING else None
        hint = reasons.get(f.name, "") + (f" (default: {default!r})" if default not in (None, "") else "")
        hint = _FLAG_HELP.get(f.name, hint.strip())
        if f.name == "model_args":
            p.add_argument("--model-arg", dest="model_args", action="append", metavar="KEY=VALUE", help=hint)
        elif f.name == "dataset_args":
            p.add_argument("--dataset-arg", dest="dataset_args", action="append", metavar="KEY=VALUE",
                           help="extra dataset argument KEY=VALUE (repeatable), e.g. --dataset-arg binary=true; "
                           "keys per dataset: " + _dataset_arg_help())
        elif f.name in _CHOICES:
            p.add_argument(flag, choices=_CHOICES[f.name], default=None, help=hint)
        elif f.type in ("bool", bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=hint)
        else:
            typ = {"int": int, "float": float}.get(str(f.type), str)
            p.add_argument(flag, type=typ, default=None, help=hint)
    p.add_argument("--pretrained", action="store_true", help="shortcut for --model-arg pretrained=true")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--dry-run", action="store_true", help="check the data, the flags and the output folder, build "
                   "the model, then stop without writing anything")


def _dataset_arg_help() -> str:
    """``folder: images, masks, ...; voc: year; ...`` from the dataset classes' signatures."""
    import inspect

    from .data import DATASETS

    parts = []
    for name, cls in DATASETS.items():
        keys = [k for k in inspect.signature(cls).parameters if k not in ("root", "split", "transforms")]
        parts.append(f"{name}: {', '.join(keys) if keys else '(none)'}")
    return "; ".join(parts) + (" (folder: threshold=N for lossy JPEG masks, resize=image|mask|error for masks "
                               "of another size, holdout=0.1 to hold images out for val, binary=true for 0/255 "
                               "masks)")


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="the paper's four metrics of a checkpoint on a split",
                       description="Pixel accuracy, mean accuracy, mean IU and frequency-weighted IU (arXiv:1411.4038, "
                       "section 5) over a whole split at the labels' resolution. Defaults: the split, dataset and "
                       "folder the checkpoint was validated on.")
    p.add_argument("--checkpoint", required=True, help="fcnseg checkpoint (.pt); gives the classes and, for "
                   "--engine torch, the weights")
    p.add_argument("--dataset", help="voc, sbd, camvid, folder (default: the checkpoint's validation set)")
    p.add_argument("--data", dest="data_root", help="dataset folder (default: the checkpoint's validation folder)")
    p.add_argument("--split", default=None, help="split to score (default: the checkpoint's validation split)")
    p.add_argument("--dataset-arg", dest="dataset_args", action="append", metavar="KEY=VALUE",
                   help="extra dataset argument (repeatable); keys per dataset: " + _dataset_arg_help())
    p.add_argument("--out", help="JSON file for the metrics and the confusion matrix (checked before any work)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--engine", choices=["torch", "onnxruntime"], default="torch",
                   help="torch: the checkpoint's weights; onnxruntime: the exported --onnx file (e.g. int8)")
    p.add_argument("--onnx", help="ONNX file for --engine onnxruntime (made by `fcnseg export`)")
    p.add_argument("--flip", action="store_true", help="average with the mirrored prediction (torch engine)")
    p.add_argument("--scales", type=_scales, default=(1.0,), metavar="S,S,...", help="multi-scale test-time "
                   "augmentation: average the predictions at these resize factors, e.g. 0.75,1,1.25 (torch engine)")
    _add_precision(p)
    p.add_argument("--window", type=int, default=0, help="sliding-window side in pixels (0 = whole images)")
    p.add_argument("--device", default="", help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--workers", type=int, default=2, help="data-loading processes")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable or inconsistent samples (counted) "
                   "instead of stopping")
    p.add_argument("--check-data", choices=["headers", "labels", "full", "off"], default="headers",
                   help="validate the split before scoring (default: headers)")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="largest image read (width x "
                   f"height; default {DEFAULT_MAX_PIXELS:,})")
    p.add_argument("--max-images", type=int, default=0, help="evaluate only the first N images (0 = all)")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def _scales(text: str) -> tuple[float, ...]:
    try:
        scales = tuple(float(s) for s in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers, e.g. 0.75,1,1.25") \
            from None
    if not scales or min(scales) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: scales must be positive numbers, e.g. 0.75,1,1.25")
    return scales


def _add_precision(p: argparse.ArgumentParser) -> None:
    p.add_argument("--precision", choices=PRECISIONS, default="auto", help="auto (default): bf16 where the "
                   "device computes it natively (AVX512-BF16/AMX CPUs, bf16 GPUs), else fp32; bf16 elsewhere is "
                   "emulated and much slower (a warning says so)")


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="segment images: palette label PNGs and colour overlays",
                       description="Write <stem>.png (palette PNG of class indices) and <stem>_overlay.png for every "
                       "image. Any format Pillow reads; EXIF orientation applied; images over --tile-pixels are "
                       "predicted in tiles, so memory stays bounded.")
    p.add_argument("--checkpoint", required=True, help="fcnseg checkpoint (.pt)")
    p.add_argument("inputs", nargs="+", help="image files or folders (searched recursively)")
    p.add_argument("-o", "--out", required=True, help="output folder (checked before any work)")
    p.add_argument("--no-overlay", action="store_true", help="write only the label PNGs")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty output folder")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable images (counted at the end) instead "
                   "of stopping")
    p.add_argument("--flip", action="store_true", help="average with the mirrored prediction")
    p.add_argument("--window", type=int, default=0, help="sliding-window side in pixels, averaged (0 = off)")
    p.add_argument("--tile-pixels", type=int, default=DEFAULT_TILE_PIXELS, help="images with more pixels are "
                   f"predicted in tiles of about this many (bounds memory; default {DEFAULT_TILE_PIXELS:,})")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="largest image read (width x "
                   f"height; default {DEFAULT_MAX_PIXELS:,}); larger files are refused")
    p.add_argument("--device", default="", help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--workers", type=int, default=2, help="image-decoding processes")
    p.add_argument("--engine", choices=["torch", "onnxruntime"], default="torch",
                   help="torch: the checkpoint's weights; onnxruntime: the exported --onnx file")
    p.add_argument("--onnx", help="ONNX file for --engine onnxruntime")
    _add_precision(p)
    p.add_argument("--quiet", action="store_true", help="no progress output")


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a checkpoint to ONNX or TorchScript (dynamic H, W)")
    p.add_argument("checkpoint", help="fcnseg checkpoint (.pt)")
    p.add_argument("-o", "--out", required=True, help="output file (.onnx or .pt)")
    p.add_argument("--format", choices=["onnx", "torchscript"], default=None,
                   help="default: from the suffix of OUT (.onnx -> onnx, .pt/.ts -> torchscript)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset version")
    p.add_argument("--int8", metavar="IMAGES", nargs="+", default=None,
                   help="quantise the ONNX graph to int8 (ONNX Runtime, static), calibrating on these image "
                   "files or folders (e.g. training images)")
    p.add_argument("--calibration-images", type=int, default=32, help="at most this many images for --int8")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")


def _add_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="import a .caffemodel or torchvision VGG16 .pth as an fcnseg checkpoint",
                       description="Write a self-describing fcnseg checkpoint from weights made elsewhere: "
                       "a Caffe .caffemodel (read without Caffe; e.g. the reference fcn8s-heavy-pascal."
                       "caffemodel) or torchvision's vgg16-397923af.pth (fc6/fc7 convolutionalised).")
    p.add_argument("format", choices=["caffe", "torchvision"], help="what SOURCE is")
    p.add_argument("source", help=".caffemodel or .pth file")
    p.add_argument("-o", "--out", required=True, help="checkpoint to write (.pt)")
    p.add_argument("--model", required=True, help="registry name the weights become, e.g. fcn8s, fcn32s")
    p.add_argument("--num-classes", type=int, default=None,
                   help="default: score_fr's outputs in the file, or 21 (PASCAL VOC)")
    p.add_argument("--classes", default=None, help="text file of class names, one per line")
    p.add_argument("--model-arg", dest="model_args", action="append", metavar="KEY=VALUE",
                   help="extra factory argument (repeatable), e.g. learnable_upsampling=true")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")


def _add_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="the registered models, and the paper's results with their commands")
    p.add_argument("--names", action="store_true", help="only the registered names, one a line")


def _add_hha(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("hha", help="encode depth maps as HHA images (Gupta et al., ECCV 2014)",
                       description="Write <out>/<stem>.png, the HHA image (horizontal disparity, height above the "
                       "lowest point, angle with gravity) of each 16-bit depth PNG, as the paper's NYUDv2 nets read "
                       "them (fcnseg.hha). Intrinsics: NYUDv2's Kinect unless --fx/--fy/--cx/--cy are given.")
    p.add_argument("depth", nargs="+", help="depth PNGs (16-bit, --depth-scale units a metre)")
    p.add_argument("-o", "--out", required=True, help="output folder")
    p.add_argument("--depth-scale", type=float, default=1000.0, help="depth units a metre (default: 1000, mm)")
    for k in ("fx", "fy", "cx", "cy"):
        p.add_argument(f"--{k}", type=float, default=None, help=f"camera {k} in pixels (default: NYUDv2's)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")


def _hha(a: argparse.Namespace) -> int:
    from dataclasses import replace

    from .hha import NYUD_CAMERA, encode_depth_files

    given = {k: getattr(a, k) for k in ("fx", "fy", "cx", "cy") if getattr(a, k) is not None}
    written = encode_depth_files(a.depth, a.out, replace(NYUD_CAMERA, **given), depth_scale=a.depth_scale,
                                 overwrite=a.overwrite)
    print(f"wrote {len(written)} HHA images to {a.out}")
    return 0


def _add_serve(sub: argparse._SubParsersAction) -> None:
    from .serve.config import ServeConfig

    d = ServeConfig(checkpoint="")
    p = sub.add_parser("serve", help="serve a checkpoint over HTTP: JSON/PNG API, metrics and a web page",
                       description="Serve one model: POST /v1/segment, GET /v1/model, /healthz, /metrics and "
                       "the page at /. Concurrent requests are batched (same-size images together).")
    p.add_argument("--checkpoint", required=True, help="fcnseg checkpoint to serve")
    p.add_argument("--engine", choices=["torch", "onnxruntime"], default=d.engine, help="inference engine")
    p.add_argument("--onnx", help="ONNX file for --engine onnxruntime (made by `fcnseg export`)")
    _add_precision(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default: 8000)")
    p.add_argument("--max-batch", type=int, default=d.max_batch,
                   help=f"most images run together in one model call (default: {d.max_batch})")
    p.add_argument("--max-wait-ms", type=float, default=d.max_wait_ms,
                   help=f"longest a batch waits for more images (default: {d.max_wait_ms:g})")
    p.add_argument("--queue-size", type=int, default=d.queue_size,
                   help=f"most images waiting; beyond it 503 + Retry-After (default: {d.queue_size})")
    p.add_argument("--max-pixels", type=int, default=d.max_pixels,
                   help=f"largest image (width x height) accepted, else 422 (default: {d.max_pixels:,})")
    p.add_argument("--max-bytes", type=int, default=d.max_bytes,
                   help=f"largest request body, else 413 (default: {d.max_bytes:,})")
    p.add_argument("--timeout", type=float, default=d.timeout_s,
                   help=f"seconds per request, decode to response, else 504 (default: {d.timeout_s:g})")
    p.add_argument("--threads", type=int, default=d.threads,
                   help="intra-op threads for inference (default: 0 = all cores but one, which decodes and "
                   "encodes images and answers HTTP)")
    p.add_argument("--workers", type=int, default=1,
                   help="uvicorn worker processes, each with its own model copy and batcher (default: 1)")
    p.add_argument("--device", default=d.device, help="cpu, cuda, cuda:1 for --engine torch (default: cuda if "
                   "available, else cpu)")


def _serve(a: argparse.Namespace) -> int:
    import os
    import signal

    import uvicorn

    from .serve.app import create_app
    from .serve.config import CONFIG_ENV, ServeConfig

    cfg = ServeConfig(checkpoint=a.checkpoint, engine=a.engine, onnx=a.onnx, precision=a.precision,
                      max_batch=a.max_batch, max_wait_ms=a.max_wait_ms, queue_size=a.queue_size,
                      max_pixels=a.max_pixels, max_bytes=a.max_bytes, timeout_s=a.timeout, threads=a.threads,
                      device=a.device)
    if a.workers < 1:
        raise ValueError("--workers must be >= 1")
    app = create_app(cfg)  # reads the checkpoint and checks the settings: a bad flag fails here, not in a worker

    def stop(signum: int, frame: object) -> None:
        # uvicorn handles SIGTERM itself (drains, then shuts down) and re-raises it once done; this handler
        # turns that re-raise into a clean exit 0, and stops the process if SIGTERM comes before uvicorn starts.
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    common = dict(host=a.host, port=a.port, timeout_graceful_shutdown=int(cfg.timeout_s) + 5)
    if a.workers == 1:
        uvicorn.run(app, **common)
    else:  # worker processes build their own app from the settings
        os.environ[CONFIG_ENV] = cfg.to_json()
        uvicorn.run("fcnseg.serve.app:app_from_env", factory=True, workers=a.workers, **common)
    return 0


def _key_values(items: list[str] | None, flag: str = "--model-arg") -> dict[str, Any]:
    """``["k=v", ...]`` -> ``{k: v}``, values parsed as JSON where they are (``true``, ``3``, ``[1, 2]``)."""
    model_args: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"{flag} {item!r}: expected KEY=VALUE")
        k, v = item.split("=", 1)
        model_args[k] = _parse_value(v)
    return model_args


def train_config(a: argparse.Namespace) -> TrainConfig:
    """The TrainConfig that ``fcnseg train`` flags ``a`` describe (resolved as the command does)."""
    from .config import make_config

    overrides = {f.name: getattr(a, f.name, None) for f in fields(TrainConfig) if f.name not in ("recipe",)}
    model_args = _key_values(a.model_args)
    if a.pretrained:
        model_args["pretrained"] = True
    overrides["model_args"] = model_args or None
    overrides["dataset_args"] = _key_values(a.dataset_args, "--dataset-arg") or None
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
    from .train import run_train

    best = run_train(train_config(a), progress=not a.quiet, dry_run=a.dry_run)
    if a.dry_run:
        print(f"dry run passed: data checked, {best.parent} can be written; nothing was written")
    elif best.is_file():
        print(f"best checkpoint: {best}")
    return 0


def _eval(a: argparse.Namespace) -> int:
    from .config import EvalConfig
    from .evaluate import run_eval

    run_eval(EvalConfig(checkpoint=a.checkpoint, dataset=a.dataset or "", data_root=a.data_root or "",
                        split=a.split or "", out=a.out or "", overwrite=a.overwrite, flip=a.flip,
                        scales=tuple(a.scales), window=a.window, device=a.device, workers=a.workers,
                        skip_bad=a.skip_bad, max_images=a.max_images, engine=a.engine, onnx_file=a.onnx or "",
                        max_pixels=a.max_pixels, check_data=a.check_data, precision=a.precision,
                        dataset_args=_key_values(a.dataset_args, "--dataset-arg")), progress=not a.quiet)
    return 0


def _predict(a: argparse.Namespace) -> int:
    from .config import PredictConfig
    from .predict import run_predict

    r = run_predict(PredictConfig(checkpoint=a.checkpoint, inputs=list(a.inputs), out_dir=a.out,
                                  overlay=not a.no_overlay, overwrite=a.overwrite, flip=a.flip, window=a.window,
                                  device=a.device, workers=a.workers, engine=a.engine, onnx_file=a.onnx or "",
                                  precision=a.precision, skip_bad=a.skip_bad, max_pixels=a.max_pixels,
                                  tile_pixels=a.tile_pixels), progress=not a.quiet)
    skipped = f", {r['skipped']} skipped (unreadable)" if r["skipped"] else ""
    print(f"{r['images']} images in {r['seconds']:.1f} s ({r['images_per_s']:.2f} images/s){skipped} -> {a.out}")
    return 0


def _export(a: argparse.Namespace) -> int:
    from .export import export_model

    calibration = None
    if a.int8:
        from .predict import collect_inputs

        calibration = collect_inputs(a.int8)[: a.calibration_images]
    suffix_fmt = {".onnx": "onnx", ".pt": "torchscript", ".ts": "torchscript"}.get(Path(a.out).suffix.lower())
    fmt = a.format or suffix_fmt or "onnx"
    if suffix_fmt and suffix_fmt != fmt:
        raise ValueError(f"-o {a.out}: a {Path(a.out).suffix} file for --format {fmt}; use .onnx for onnx and "
                         ".pt or .ts for torchscript")
    path = export_model(a.checkpoint, a.out, fmt=fmt, opset=a.opset, overwrite=a.overwrite,
                        int8_calibration=calibration)
    print(f"wrote {path}")
    return 0


def _convert(a: argparse.Namespace) -> int:
    from .convert import convert_caffemodel, convert_torchvision_vgg16

    if not Path(a.source).is_file():
        raise FileNotFoundError(f"{a.source}: no such file")
    if Path(a.out).exists() and not a.overwrite:
        raise FileExistsError(f"{a.out} exists: pass --overwrite to replace it")
    classes = None
    if a.classes:
        classes = [c.strip() for c in Path(a.classes).read_text().splitlines() if c.strip()]
    convert = convert_caffemodel if a.format == "caffe" else convert_torchvision_vgg16
    kw: dict[str, Any] = {"classes": classes, "model_args": _key_values(a.model_args)}
    num_classes = a.num_classes or (len(classes) if classes else None)
    if num_classes is not None:
        kw["num_classes"] = num_classes
    path = convert(a.source, a.out, model=a.model, **kw)
    print(f"wrote {path}")
    return 0


def _models(a: argparse.Namespace) -> int:
    from .models import list_models
    from .models.zoo import models_table

    print("\n".join(list_models()) if a.names else models_table())
    return 0


COMMANDS = {"train": (_add_train, _train), "eval": (_add_eval, _eval), "predict": (_add_predict, _predict),
            "export": (_add_export, _export), "convert": (_add_convert, _convert),
            "models": (_add_models, _models), "serve": (_add_serve, _serve), "hha": (_add_hha, _hha)}


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="fcnseg", description="Fully Convolutional Networks for Semantic "
                                     "Segmentation (Long, Shelhamer & Darrell, arXiv:1411.4038)")
    parser.add_argument("--version", action="version", version=f"fcnseg {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks of errors")
    sub = parser.add_subparsers(dest="command", required=True)
    for add, _ in COMMANDS.values():
        add(sub)
    for p in sub.choices.values():  # also after the command, where errors tell users to add them
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
        print(f"fcnseg {args.command}: {message}", file=sys.stderr)
        return code

    try:
        return COMMANDS[args.command][1](args)
    except FcnsegError as e:
        if args.debug and not isinstance(e, TrainingInterrupted):
            raise
        kind = "interrupted" if isinstance(e, TrainingInterrupted) else "error"
        return fail(f"{kind}: {_one_line(e.render(flag_spelling))}", e.exit_code)
    except KeyboardInterrupt:
        if args.debug:
            raise
        return fail("interrupted", 130)
    except MemoryError:
        if args.debug:
            raise
        return fail("error: out of memory; fix: lower --tile-pixels or --max-pixels (predict, eval, serve), "
                    "--batch-size or --crop-size (train), or free memory", 1)
    except (ValueError, FileNotFoundError, FileExistsError, KeyError, NotADirectoryError, PermissionError) as e:
        if args.debug:
            raise
        return fail(f"error: {_one_line(e)}", 2)
    except OSError as e:
        if args.debug:
            raise
        from .outputs import describe_os_error

        return fail(f"error: {describe_os_error(e, e.filename or '?', 'path') if e.errno else _one_line(e)}", 2)
    except Exception as e:  # noqa: BLE001 - the promise is one line, never a traceback, unless --debug
        if args.debug:
            raise
        from .distributed import DistributedError
        from .predict import PredictionError

        if isinstance(e, DistributedError | PredictionError | FloatingPointError):
            return fail(f"error: {_one_line(e)}", 1)
        return fail(f"unexpected {type(e).__name__}: {_one_line(e)}; fix: rerun with --debug for the traceback "
                    f"and report it", 1)


FLAG_NAMES = {"out_dir": "--out", "data_root": "--data", "model_args": "--model-arg", "dataset_args": "--dataset-arg",
              "onnx_file": "--onnx", "timeout_s": "--timeout"}
"""Option field names whose flag is not ``--`` + the name with dashes."""


def flag_spelling(field: str) -> str:
    """An option's field name as the flag a user types: ``skip_bad`` -> ``--skip-bad``."""
    return FLAG_NAMES.get(field, "--" + field.replace("_", "-"))


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
