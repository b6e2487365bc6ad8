"""``fcnseg predict``: segment files or folders; palette label PNGs and colour overlays with a legend.

Decoding runs in loader workers and writing in a thread pool, so both overlap the network's compute.
Images are read by :mod:`fcnseg.io` (EXIF orientation, 16-bit, any mode, pixel budget). An image larger
than ``tile_pixels`` is predicted in tiles (:func:`predict_labels_tiled`), so peak memory stays bounded
whatever the photo's size.

At scale (docs/how-to/predict-at-scale.md): ``format`` ``rle`` writes ``predictions.jsonl`` (COCO run-length
masks, :mod:`fcnseg.rle`) instead of or beside the PNGs; under ``torchrun`` each process takes the inputs whose
path hashes to its rank (:func:`shard_of`); every finished or bad input gets a line in ``manifest.jsonl``
(:mod:`fcnseg.manifest`), so ``resume`` after a kill does only the rest; ``ray`` predicts on a Ray cluster
(:mod:`fcnseg.predict_ray`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import posixpath
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import distributed as dist
from torch.utils.data import DataLoader, Dataset

from . import remote
from .checkpoint import Checkpoint, load_checkpoint
from .config import PredictConfig
from .distributed import CHECKS_TIMEOUT_S, collective, init_distributed, on_main
from .errors import CheckpointError, ConfigError, PredictionError
from .io import DataError, is_image_file, read_image
from .manifest import MANIFEST, AppendLog, model_fingerprint, read_jsonl
from .models import head_labels
from .outputs import atomic_write, check_output_dir, remove_stale_temp_files
from .progress import Progress
from .remote import is_url
from .rle import encode_labels
from .scorer import Scorer, ScorerSpec, make_scorer

log = logging.getLogger(__name__)

DEFAULT_TILE_PIXELS = 1024 * 1024
"""Images with more pixels than this are predicted in tiles of about this many pixels (bounded memory)."""

FORMATS = ("png", "rle")
"""What ``predict`` writes: ``png`` label PNGs (and overlays), ``rle`` one ``predictions.jsonl``."""

PREDICTIONS = "predictions.jsonl"
"""The RLE records' file in the output folder (format ``rle``)."""


def collect_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """Local image files named directly or found (recursively) in folders, in a stable order.

    A folder's files are taken when Pillow opens their suffix (:data:`fcnseg.io.IMAGE_EXTENSIONS`); other
    files are reported in one log line, never skipped silently. A URL is refused here (``predict`` takes URLs:
    :func:`collect_keyed_inputs`).
    """
    urls = [str(i) for i in inputs if is_url(str(i))]
    if urls:
        raise DataError(f"{urls[0]}: a URL where local image files are needed", path=urls[0],
                        fix="download the images and pass their folder")
    return [Path(f) for f, _ in collect_keyed_inputs(inputs)]


def collect_keyed_inputs(inputs: Sequence[str | Path]) -> list[tuple[str, str]]:
    """Every input image as ``(name, key)``: image files named directly or found (recursively) in folders, and
    URLs (:mod:`fcnseg.remote`: a folder URL is listed the same way), in a stable order. ``name`` is the local
    path or the URL; the key is its path relative to the folder it was found in (POSIX), or its name when
    named directly. The key, not the full path, chooses a process's share (:func:`shard_of`), so the shares do
    not change where the folder is mounted or when files are added."""
    files: list[tuple[str, str]] = []
    for raw in inputs:
        if is_url(str(raw)):
            found_urls, others_urls = remote.list_images(str(raw))
            _found_in(str(raw), found_urls, others_urls, [posixpath.splitext(u)[1] or posixpath.basename(u)
                                                          for u in others_urls])
            files += found_urls
            continue
        item = Path(raw)
        if item.is_dir():
            entries = sorted(p for p in item.rglob("*") if p.is_file() and not p.name.startswith("."))
            found = [p for p in entries if is_image_file(p)]
            others = [p for p in entries if not is_image_file(p)]
            _found_in(str(item), found, others, [p.suffix or p.name for p in others])
            files += [(str(p), p.relative_to(item).as_posix()) for p in found]
        elif item.is_file():
            files.append((str(item), item.name))
        else:
            raise DataError(f"input {item} does not exist", path=item, fix="pass image files or folders as {inputs}")
    if not files:
        raise DataError("no input images given", fix="pass image files or folders as {inputs}")
    return files


def _found_in(folder: str, found: Sequence[object], others: Sequence[object], suffixes: Sequence[str]) -> None:
    """One log line for a folder's files that are not images; a DataError when it holds no image."""
    if others:
        kinds = sorted(set(suffixes))
        log.warning("%s: skipping %d files that are not images (%s)", folder, len(others),
                    ", ".join(kinds[:6]) + (", ..." if len(kinds) > 6 else ""))
    if not found:
        raise DataError(f"folder {folder} holds no images (e.g. .png, .jpg, .tif, .gif, .webp)", path=folder,
                        fix="pass image files or folders of images as {inputs}")


def read_input(name: str, *, max_pixels: int) -> torch.Tensor:
    """uint8 (3, H, W) RGB tensor of an input: a local path, or a URL read whole (:func:`fcnseg.remote.read_bytes`)
    and decoded under its name, by :func:`fcnseg.io.read_image` in both cases."""
    if is_url(name):
        return read_image(remote.named_stream(remote.read_bytes(name), name), max_pixels=max_pixels)
    return read_image(name, max_pixels=max_pixels)


def shard_of(key: str, world: int) -> int:
    """The rank (of ``world``) that predicts the input of ``key``: sha1 of the key, modulo ``world``. Stable:
    adding or removing files moves no other file to another process."""
    return int.from_bytes(hashlib.sha1(key.encode("utf-8", "surrogateescape")).digest()[:8], "big") % world


def output_stems(files: Sequence[str | Path]) -> list[str]:
    """The output name (stem) of each input: its stem, with ``_1``, ``_2``... where an earlier input (in
    order) has the same stem (the same name in two folders: both kept). Decided over the whole list, so every
    process of a sharded run and every resumed run names each input alike."""
    used: set[str] = set()
    stems = []
    for path in files:
        stem = remote.url_stem(path) if is_url(path) else Path(path).stem
        name, n = stem, 0
        while name in used or f"{name}_overlay" in used:
            n += 1
            name = f"{stem}_{n}"
        used.update((name, f"{name}_overlay"))
        stems.append(name)
    return stems


def check_formats(formats: str | Sequence[str]) -> tuple[str, ...]:
    """``formats`` (``"png,rle"``, ``("png", "rle")``, ``["rle"]``) as a tuple of :data:`FORMATS`, each once;
    anything else is a :class:`~fcnseg.errors.ConfigError` naming the option ``format``."""
    items = [formats] if isinstance(formats, str) else list(formats)
    got = tuple(dict.fromkeys(p.strip() for item in items for p in str(item).split(",") if p.strip()))
    unknown = [f for f in got if f not in FORMATS]
    if unknown or not got:
        raise ConfigError(f"unknown output format {', '.join(unknown) or '(none)'}",
                          fix="choose png, rle or png,rle for {format}")
    return got


def png_names(stem: str, ck: Checkpoint, overlay: bool) -> list[str]:
    """The PNG files ``predict`` writes for one input of output name ``stem``."""
    suffixes = [""] if ck.tasks is None else [f"_{t}" for t in ck.tasks]
    return [f"{stem}{s}{kind}.png" for s in suffixes for kind in ("", "_overlay")[: 2 if overlay else 1]]


def rle_record(file: str, labels: np.ndarray, ck: Checkpoint) -> dict[str, Any]:
    """The ``predictions.jsonl`` record of one image: ``{"file", "height", "width", "classes": [{"id",
    "name", "pixels", "rle": {"size": [H, W], "counts"}}]}`` (COCO's compressed counts, :mod:`fcnseg.rle`);
    a multi-task model's labels (T, H, W) give ``"tasks": {task: [classes...]}`` instead of ``"classes"``."""
    h, w = labels.shape[-2:]
    record: dict[str, Any] = {"file": file, "height": int(h), "width": int(w)}
    if ck.tasks is None:
        record["classes"] = encode_labels(labels, ck.classes)
    else:
        record["tasks"] = {t: encode_labels(labels[i], names) for i, (t, (names, _)) in enumerate(ck.tasks.items())}
    return record


class _Images(Dataset):
    """Decoded images by index; a bad file gives ``(None, i, message)`` when ``skip_bad``, else raises."""

    def __init__(self, files: list[str], max_pixels: int, skip_bad: bool):
        self.files, self.max_pixels, self.skip_bad = files, max_pixels, skip_bad

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor | None, int, str]:
        try:
            return read_input(self.files[i], max_pixels=self.max_pixels), i, ""  # uint8 (3, H, W)
        except DataError as e:
            if not self.skip_bad:
                raise DataError(e.what, path=e.path, fix=(f"{e.fix}, or " if e.fix else "") +
                                "turn on {skip_bad} to skip such images") from e
            return None, i, str(e)


def palette_image(labels: np.ndarray, palette: Sequence[Sequence[int]]) -> Image.Image:
    """uint8 label map -> palette PNG image (values stay the class indices)."""
    im = Image.fromarray(labels.astype(np.uint8), mode="P")
    flat = [c for rgb in palette for c in rgb]
    im.putpalette(flat + [0] * (768 - len(flat)))
    return im


def overlay_image(rgb: np.ndarray, labels: np.ndarray, palette: Sequence[Sequence[int]], classes: list[str],
                  alpha: float = 0.5) -> Image.Image:
    """The image blended with class colours, and a legend of the classes present on the right."""
    pal = np.asarray(palette, dtype=np.uint8)
    blend = Image.blend(Image.fromarray(rgb), Image.fromarray(pal[labels]), alpha)  # in C, on uint8
    h, w = labels.shape
    present = [int(c) for c in np.unique(labels)]
    row = 14
    legend_w = 8 + max((len(classes[c]) for c in present), default=0) * 7 + 20
    canvas = Image.new("RGB", (w + legend_w, max(h, row * len(present) + 8)), (255, 255, 255))
    canvas.paste(blend, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for k, c in enumerate(present):
        y = 4 + k * row
        draw.rectangle([w + 4, y, w + 14, y + 10], fill=tuple(int(v) for v in palette[c]), outline=(0, 0, 0))
        draw.text((w + 18, y - 1), classes[c], fill=(0, 0, 0))
    return canvas


def tile_grid(h: int, w: int, tile_pixels: int) -> tuple[int, int]:
    """``(core, margin)`` of the tiles for an ``h`` x ``w`` image: each tile is a ``core`` square of
    output plus ``margin`` pixels of context on every side, about ``tile_pixels`` pixels in all."""
    side = max(64, int(math.isqrt(max(tile_pixels, 1))))
    margin = side // 8
    return side - 2 * margin, margin


def predict_labels_tiled(scores: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, tile_pixels: int,
                         heads: dict[str, int] | None = None) -> np.ndarray:
    """Labels (H, W) uint8 of a uint8 (3, H, W) image, predicted tile by tile; (T, H, W) for a multi-task
    model's ``heads`` (its scores joined on the class axis, split again by :func:`fcnseg.models.head_labels`).

    Each tile's core square takes its labels from a prediction over the core plus a margin of context
    (1/8 of the tile's side) on each side, so memory is bounded by one tile's activations plus the image and
    its labels (4 bytes a pixel), and seams see context like the inside of the image. ``scores(region)`` maps
    a uint8 (3, h, w) region to class scores (K, h, w).
    """
    _, h, w = image.shape
    core, margin = tile_grid(h, w, tile_pixels)
    labels = np.empty((*([len(heads)] if heads else []), h, w), dtype=np.uint8)
    for y0 in range(0, h, core):
        for x0 in range(0, w, core):
            y1, x1 = min(y0 + core, h), min(x0 + core, w)
            ry0, rx0 = max(0, y0 - margin), max(0, x0 - margin)
            ry1, rx1 = min(h, y1 + margin), min(w, x1 + margin)
            s = scores(image[:, ry0:ry1, rx0:rx1])  # (K, rh, rw)
            core_scores = s[:, y0 - ry0 : y1 - ry0, x0 - rx0 : x1 - rx0]
            labels[..., y0:y1, x0:x1] = head_labels(core_scores, heads, 0).to(torch.uint8).cpu().numpy()
    return labels


def _is_out_of_memory(e: BaseException) -> bool:
    text = str(e).lower()
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in text or "can't allocate memory" in text \
        or "not enough memory" in text


def check_label_range(ck: Checkpoint) -> None:
    """Raise :class:`~fcnseg.errors.CheckpointError` for a model with more than 256 classes (in a task):
    label maps are uint8 and label PNGs hold at most 256 palette entries."""
    for names in ([names for names, _ in ck.tasks.values()] if ck.tasks else [ck.classes]):
        if len(names) > 256:
            raise CheckpointError(f"{ck.model_name} has {len(names)} classes; label PNGs hold at most 256",
                                  fix="predict with a model of at most 256 classes per task")


class Predictor:
    """uint8 class labels of uint8 RGB images from a :class:`~fcnseg.scorer.Scorer`, in bounded memory.

    ``predictor(image)`` takes a uint8 (3, H, W) tensor and returns uint8 labels (H, W);
    :meth:`labels_batch` takes same-size images (N, 3, H, W). A multi-task model's labels are stacked by task,
    in the order of :attr:`heads`: (T, H, W) and (N, T, H, W). Images over ``tile_pixels`` are predicted in
    tiles (:func:`predict_labels_tiled`); out of memory becomes a :class:`PredictionError` naming the option.
    ``scorer`` may also be a checkpoint (file or loaded): then PyTorch scores it (precision auto) on ``device``.
    Raises :class:`~fcnseg.errors.CheckpointError` for a model of more than 256 classes (labels are uint8).
    """

    def __init__(self, scorer: Scorer | Checkpoint | str | Path, *, tile_pixels: int = DEFAULT_TILE_PIXELS,
                 device: str = ""):
        if not isinstance(scorer, Scorer):
            scorer = make_scorer(scorer if isinstance(scorer, Checkpoint) else load_checkpoint(scorer), device=device)
        self.scorer, self.ck, self.device, self.tile_pixels = scorer, scorer.checkpoint, scorer.device, tile_pixels
        self.heads = self.ck.heads  # {task: classes} of a multi-task model, else None
        check_label_range(self.ck)

    def scores(self, images: torch.Tensor) -> torch.Tensor:
        """Class scores (N, K, H, W) float32 of uint8 images (N, 3, H, W), on the scorer's device."""
        return self.scorer(images)

    def labels_batch(self, images: torch.Tensor) -> np.ndarray:
        """uint8 labels (N, H, W) of same-size uint8 images (N, 3, H, W); images over ``tile_pixels`` go one by
        one through the tiled path, so a batch of large photos stays within memory too."""
        if images.shape[-2] * images.shape[-1] > self.tile_pixels:
            return np.stack([self(image) for image in images])
        return self._guard(lambda: head_labels(self.scores(images), self.heads).to(torch.uint8).cpu().numpy(),
                           images.shape)

    def __call__(self, image: torch.Tensor, name: str = "image") -> np.ndarray:
        _, h, w = image.shape
        if h * w <= self.tile_pixels:
            return self._guard(lambda: head_labels(self.scores(image[None]), self.heads)[0].to(torch.uint8).cpu()
                               .numpy(), image.shape, name)
        return self._guard(lambda: predict_labels_tiled(lambda r: self.scores(r[None])[0], image,
                                                        self.tile_pixels, self.heads), image.shape, name)

    def _guard(self, fn: Callable[[], np.ndarray], shape: Sequence[int], name: str = "image") -> np.ndarray:
        try:
            return fn()
        except (RuntimeError, MemoryError) as e:
            if not (isinstance(e, MemoryError) or _is_out_of_memory(e)):
                raise
            h, w = shape[-2], shape[-1]
            raise PredictionError(f"{name} ({w}x{h}): out of memory on {self.device}",
                                  fix=f"lower {{tile_pixels}} (now {self.tile_pixels:,}, e.g. "
                                      f"{self.tile_pixels // 4:,}) or set {{device}} to cpu") from e


def run_predict(cfg: PredictConfig, *, progress: bool = True) -> dict[str, Any]:
    """Predict every input image; write what ``cfg.format`` asks for into ``cfg.out_dir``.

    * ``png`` (default): ``<stem>.png`` (palette labels) and ``<stem>_overlay.png``; for a multi-task model
      (SIFT Flow's) ``<stem>_<task>.png`` and ``<stem>_<task>_overlay.png`` for each task (``_sem``, ``_geo``).
    * ``rle``: ``predictions.jsonl``, one :func:`rle_record` a line in input order, written atomically at the end
      (the records go first to ``predictions.rank<k>.jsonl``, appended as each image is done).

    The output folder is checked before any work (an existing, non-empty one is refused unless ``overwrite``
    or ``resume``). Each file is written atomically, and every input finished or found bad gets a line in
    ``manifest.jsonl`` (:mod:`fcnseg.manifest`) with the hash of the checkpoint. ``resume`` skips the inputs
    whose outputs exist and whose last manifest line says done by the same checkpoint and settings; the rest
    (another checkpoint's, a bad file's, a killed run's) are predicted again. With ``skip_bad`` an
    unreadable image is logged, counted and listed in the manifest instead of stopping the run.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) each process predicts the inputs whose key hashes to its rank
    (:func:`shard_of`) and rank 0 merges the processes' manifests and RLE parts at the end; the files written
    are those of one process. With ``ray`` the same plan is predicted by Ray actors (:mod:`fcnseg.predict_ray`).
    Returns the totals over all processes: ``{"images": written, "skipped": bad,
    "resumed": done before, "seconds": t, "images_per_s": written / t, "processes": n}``.
    :func:`predict_files` does the same for a checkpoint already loaded.
    """
    return predict_files(load_checkpoint(cfg.checkpoint), cfg, progress=progress)


class _Plan(NamedTuple):
    """What a run does, decided once on rank 0 and shared with every process."""

    files: list[str]  # every input, in order: its path as found (the manifest's and the records' "file")
    keys: list[str]  # its key (path under its input folder), which chooses its process
    stems: list[str]  # its output name
    todo: list[int]  # the inputs to predict in this run
    resumed: int  # inputs skipped: done before by this model and settings
    model: str  # :func:`fcnseg.manifest.model_fingerprint` (or of the loaded weights)
    settings: str  # the options besides the model that change labels
    run: int  # this run's number in the manifest (1 + the highest before)


def predict_files(ck: Checkpoint, cfg: PredictConfig, *, progress: bool = True) -> dict[str, Any]:
    """:func:`run_predict` with the checkpoint already loaded; ``cfg.checkpoint``, when it names a file, is only
    hashed for the manifest (else the loaded weights are)."""
    formats = check_formats(cfg.format)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, device = 0, cfg.device
    if world > 1:  # torchrun: shards finish at different times, so the last collective waits long
        rank, world, dev = init_distributed(cfg.device, timeout_s=CHECKS_TIMEOUT_S)
        device = str(dev)
    spec = ScorerSpec(ck, engine=cfg.engine, onnx_file=cfg.onnx_file, precision=cfg.precision, device=device,
                      flip=cfg.flip, window=cfg.window,
                      shift_and_stitch=cfg.shift_and_stitch)  # the engine settings are refused before any work
    if cfg.ray:
        from .predict_ray import check_ray, predict_on_ray

        check_ray(cfg, world)  # before any work: the extra is installed, the options fit
        plan = _make_plan(ck, cfg, formats)
        counts = predict_on_ray(ck, cfg, plan, formats, progress=progress)
        _merge(Path(cfg.out_dir), plan, formats)
        return _summary(counts, plan, cfg.ray_actors)
    plan: _Plan = on_main(lambda: _make_plan(ck, cfg, formats))
    out = Path(cfg.out_dir)
    mine = [i for i in plan.todo if world == 1 or shard_of(plan.keys[i], world) == rank]
    predictor = Predictor(spec.build(), tile_pixels=cfg.tile_pixels)
    loader = DataLoader(_Images([plan.files[i] for i in mine], cfg.max_pixels, cfg.skip_bad), batch_size=1,
                        num_workers=cfg.workers, collate_fn=_first)
    bad = 0
    t0 = time.perf_counter()
    manifest = AppendLog(out / (MANIFEST if world == 1 else f"manifest.rank{rank}.jsonl"))
    parts = AppendLog(out / f"predictions.rank{rank}.jsonl") if "rle" in formats else None
    try:
        with ThreadPoolExecutor(max_workers=2) as pool, \
                Progress(len(mine), "predict", "img", enabled=progress and rank == 0) as bar:
            pending = []
            for image, j, problem in loader:
                i = mine[j]
                bar.update(1)
                if image is None:
                    log.warning("skipping %s", problem)
                    bad += 1
                    manifest.append({"file": plan.files[i], "status": "bad", "model": plan.model,
                                     "settings": plan.settings, "run": plan.run, "error": problem[:1000]})
                    continue
                labels = predictor(image, plan.files[i])
                pending.append(pool.submit(_finish_one, out, i, plan, image.permute(1, 2, 0).numpy(), labels, ck,
                                           cfg.overlay, formats, manifest, parts))
                while len(pending) > 4:  # bound the images held for writing (a folder of 24 MP photos)
                    pending.pop(0).result()
            for f in pending:
                f.result()
    finally:
        manifest.close()
        if parts is not None:
            parts.close()
    dt = time.perf_counter() - t0
    if bad:
        log.warning("skipped %d of %d images that could not be read (skip_bad)", bad, len(mine))
    counts = _gather({"images": len(mine) - bad, "skipped": bad, "seconds": dt})  # every process's
    if rank == 0:
        _merge(out, plan, formats)
    return _summary(counts, plan, world)


def _summary(counts: list[dict[str, Any]], plan: _Plan, processes: int) -> dict[str, Any]:
    """The result of :func:`run_predict` from every process's (or actor's) counts."""
    done, dt = sum(c["images"] for c in counts), max((c["seconds"] for c in counts), default=0.0)
    return {"images": done, "skipped": sum(c["skipped"] for c in counts), "resumed": plan.resumed, "seconds": dt,
            "images_per_s": done / dt if dt > 0 else 0.0, "processes": processes}


def _settings(cfg: PredictConfig) -> str:
    return (f"engine={cfg.engine} precision={cfg.precision} flip={int(cfg.flip)} window={cfg.window} "
            f"shift_and_stitch={cfg.shift_and_stitch}")


def _fingerprint(ck: Checkpoint, cfg: PredictConfig) -> str:
    """sha256 of the checkpoint file (and the ONNX file that scores); of the loaded weights when no file."""
    onnx = cfg.onnx_file if cfg.engine == "onnxruntime" and cfg.onnx_file else None
    if cfg.checkpoint and Path(cfg.checkpoint).is_file():
        return model_fingerprint(cfg.checkpoint, onnx)
    h = hashlib.sha256(ck.model_name.encode())
    for k in sorted(ck.state_dict):
        h.update(k.encode())
        h.update(ck.state_dict[k].detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return f"weights:{h.hexdigest()}" + (f"+{model_fingerprint(onnx)}" if onnx else "")


def _manifests(out: Path) -> list[Path]:
    return [out / MANIFEST, *sorted(out.glob("manifest.*.jsonl"))]  # the processes' (rank<k>) and actors' parts


def _rle_parts(out: Path) -> list[Path]:
    return sorted(out.glob("predictions.*.jsonl"))


def _read_manifests(out: Path) -> dict[str, dict[str, Any]]:
    """``{file: its latest record}`` over ``manifest.jsonl`` and the unmerged parts (``manifest.rank<k>``):
    the record of the highest run wins (within a run, the last)."""
    latest: dict[str, dict[str, Any]] = {}
    for path in _manifests(out):
        for r in read_jsonl(path):
            f = r.get("file")
            if isinstance(f, str) and int(r.get("run", 0)) >= int(latest.get(f, {}).get("run", 0)):
                latest[f] = r
    return latest


def _rle_index(out: Path) -> dict[str, dict[int | None, tuple[Path, int, int]]]:
    """Where each file's RLE records are: ``{file: {run: (path, offset, length)}}``; run None for the merged
    ``predictions.jsonl`` (whose records are those of each file's latest finished run when merged)."""
    index: dict[str, dict[int | None, tuple[Path, int, int]]] = {}
    for path in [out / PREDICTIONS, *_rle_parts(out)]:
        merged = path.name == PREDICTIONS
        for r, offset, length in read_jsonl(path, with_offsets=True):
            if isinstance(r.get("file"), str):
                index.setdefault(r["file"], {})[None if merged else int(r.get("run", 0))] = (path, offset, length)
    return index


def _rle_of(index: dict[str, dict[int | None, tuple[Path, int, int]]], record: dict[str, Any] | None,
            ) -> tuple[Path, int, int] | None:
    """The RLE line of a file whose latest manifest ``record`` is done with format rle, else None."""
    if record is None or record.get("status") != "done" or "rle" not in record.get("formats", ()):
        return None
    runs = index.get(record["file"], {})
    return runs.get(int(record.get("run", 0)), runs.get(None))


def _make_plan(ck: Checkpoint, cfg: PredictConfig, formats: tuple[str, ...]) -> _Plan:
    """Rank 0's checks and decisions before any work: inputs, output folder, model hash, what to skip."""
    keyed = collect_keyed_inputs(cfg.inputs)
    out = check_output_dir(cfg.out_dir, option="out_dir", overwrite=cfg.overwrite, allow_existing=cfg.resume,
                           create=True)
    files, keys = [f for f, _ in keyed], [k for _, k in keyed]
    stems = output_stems(files)
    model, settings = _fingerprint(ck, cfg), _settings(cfg)
    if not cfg.resume:  # a new job: the bookkeeping of an earlier one (overwrite) would mislead a resume
        for path in [*_manifests(out), *_rle_parts(out), out / PREDICTIONS]:
            if "rle" in formats or path.name != PREDICTIONS:
                path.unlink(missing_ok=True)
        return _Plan(files, keys, stems, list(range(len(files))), 0, model, settings, 1)
    remove_stale_temp_files(out)  # a killed run's half-written PNGs
    latest = _read_manifests(out)
    run = 1 + max((int(r.get("run", 0)) for r in latest.values()), default=0)
    index = _rle_index(out) if "rle" in formats else {}
    todo, other_model = [], 0
    for i, (f, stem) in enumerate(zip(files, stems, strict=True)):
        r = latest.get(f)
        same = r is not None and r.get("status") == "done" and r.get("model") == model \
            and r.get("settings") == settings
        if same and "png" in formats:
            same = "png" in r.get("formats", ()) and all(_nonempty(out / n) for n in png_names(stem, ck, cfg.overlay))
        if same and "rle" in formats:
            same = _rle_of(index, r) is not None
        if not same:
            todo.append(i)
            other_model += r is not None and r.get("status") == "done" and r.get("model") != model
    with AppendLog(out / MANIFEST) as manifest:  # outputs about to be replaced are no longer done
        for i in todo:
            if latest.get(files[i], {}).get("status") == "done":
                manifest.append({"file": files[i], "status": "redo", "run": run})
    if other_model:
        log.warning("%d inputs were predicted by another checkpoint: predicting them again", other_model)
    log.info("resume: %d of %d inputs done before, %d to predict", len(files) - len(todo), len(files), len(todo))
    return _Plan(files, keys, stems, todo, len(files) - len(todo), model, settings, run)


def _nonempty(path: Path) -> bool:
    try:
        return path.stat().st_size > 0
    except OSError:
        return False


def _finish_one(out: Path, i: int, plan: _Plan, rgb: np.ndarray, labels: np.ndarray, ck: Checkpoint,
                overlay: bool, formats: tuple[str, ...], manifest: AppendLog, parts: AppendLog | None) -> None:
    """One image's outputs, then its manifest line: a line says done only once every output is in place."""
    if "png" in formats:
        _write(out, plan.stems[i], rgb, labels, ck, overlay)
    if parts is not None:
        parts.append({**rle_record(plan.files[i], labels, ck), "run": plan.run})
    manifest.append({"file": plan.files[i], "status": "done", "model": plan.model, "settings": plan.settings,
                     "run": plan.run, "formats": list(formats)})


def _merge(out: Path, plan: _Plan, formats: tuple[str, ...]) -> None:
    """Rank 0 at the end: the processes' manifests appended to ``manifest.jsonl``, and (format rle) the records
    of every input done into ``predictions.jsonl``, in input order, atomically; then the parts are deleted. A
    kill in between leaves duplicates that the next read resolves by run."""
    ranked = _manifests(out)[1:]
    if ranked:
        with AppendLog(out / MANIFEST) as manifest:
            for path in ranked:
                for r in read_jsonl(path):
                    manifest.append(r)
        for path in ranked:
            path.unlink(missing_ok=True)
    if "rle" not in formats:
        return
    latest, index = _read_manifests(out), _rle_index(out)

    def write(f: Any) -> None:
        handles: dict[Path, Any] = {}
        try:
            for file in plan.files:
                where = _rle_of(index, latest.get(file))
                if where is None:
                    continue
                path, offset, length = where
                src = handles.get(path) or handles.setdefault(path, open(path, "rb"))  # noqa: SIM115
                src.seek(offset)
                record = json.loads(src.read(length))
                record.pop("run", None)  # the parts' bookkeeping, not the format's
                f.write((json.dumps(record) + "\n").encode())
        finally:
            for h in handles.values():
                h.close()

    atomic_write(out / PREDICTIONS, write, option="out_dir")
    for path in _rle_parts(out):
        path.unlink(missing_ok=True)


def _gather(counts: dict[str, Any]) -> list[dict[str, Any]]:
    """Every process's ``counts`` (through the process group); ``[counts]`` in one process."""
    if not (dist.is_available() and dist.is_initialized()):
        return [counts]
    got: list[Any] = [None] * dist.get_world_size()
    with collective("gathering the counts of predict"):
        dist.all_gather_object(got, counts)
    return got


def _first(batch: list[Any]) -> Any:
    return batch[0]


def _write(out: Path, name: str, rgb: np.ndarray, labels: np.ndarray, ck: Checkpoint, overlay: bool) -> None:
    # compress_level 1: a few percent larger files, several times faster to write than PIL's default 6.
    # Atomic (a kill never leaves a torn PNG); no fsync per file: predictions can be made again.
    tasks = ck.tasks
    maps = {"": (labels, ck.classes, ck.palette)} if tasks is None else \
        {f"_{t}": (labels[i], names, palette) for i, (t, (names, palette)) in enumerate(tasks.items())}
    for suffix, (lab, classes, palette) in maps.items():  # labels (H, W), or (T, H, W) by task
        label_png = palette_image(lab, palette)
        atomic_write(out / f"{name}{suffix}.png", lambda f, im=label_png: im.save(f, format="PNG", compress_level=1),
                     option="out_dir", fsync=False)
        if overlay:
            over = overlay_image(rgb, lab, palette, classes)
            atomic_write(out / f"{name}{suffix}_overlay.png",
                         lambda f, im=over: im.save(f, format="PNG", compress_level=1), option="out_dir", fsync=False)
