"""``fcnseg predict``: segment files or folders; palette label PNGs and colour overlays with a legend.

Decoding runs in loader workers and writing in a thread pool, so both overlap the network's compute.
Images are read by :mod:`fcnseg.io` (EXIF orientation, 16-bit, any mode, pixel budget). An image larger
than ``tile_pixels`` is predicted in tiles (:func:`predict_labels_tiled`), so peak memory stays bounded
whatever the photo's size.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import DataLoader, Dataset

from .checkpoint import Checkpoint, load_checkpoint
from .config import PredictConfig
from .errors import CheckpointError, PredictionError
from .io import DataError, is_image_file, read_image
from .models import head_labels
from .outputs import atomic_write, check_output_dir
from .progress import Progress
from .scorer import Scorer, ScorerSpec, make_scorer

log = logging.getLogger(__name__)

DEFAULT_TILE_PIXELS = 1024 * 1024
"""Images with more pixels than this are predicted in tiles of about this many pixels (bounded memory)."""




def collect_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """Image files named directly or found (recursively) in folders, in a stable order.

    A folder's files are taken when Pillow opens their suffix (:data:`fcnseg.io.IMAGE_EXTENSIONS`); other
    files are reported in one log line, never skipped silently.
    """
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            entries = sorted(p for p in item.rglob("*") if p.is_file() and not p.name.startswith("."))
            found = [p for p in entries if is_image_file(p)]
            others = [p for p in entries if not is_image_file(p)]
            if others:
                suffixes = sorted({p.suffix or p.name for p in others})
                log.warning("%s: skipping %d files that are not images (%s)", item, len(others),
                            ", ".join(suffixes[:6]) + (", ..." if len(suffixes) > 6 else ""))
            if not found:
                raise DataError(f"folder {item} holds no images (e.g. .png, .jpg, .tif, .gif, .webp)", path=item,
                                fix="pass image files or folders of images as {inputs}")
            files += found
        elif item.is_file():
            files.append(item)
        else:
            raise DataError(f"input {item} does not exist", path=item, fix="pass image files or folders as {inputs}")
    if not files:
        raise DataError("no input images given", fix="pass image files or folders as {inputs}")
    return files


class _Images(Dataset):
    """Decoded images by index; a bad file gives ``(None, i, message)`` when ``skip_bad``, else raises."""

    def __init__(self, files: list[Path], max_pixels: int, skip_bad: bool):
        self.files, self.max_pixels, self.skip_bad = files, max_pixels, skip_bad

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor | None, int, str]:
        try:
            return read_image(self.files[i], max_pixels=self.max_pixels), i, ""  # uint8 (3, H, W)
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
    """Write ``<stem>.png`` (palette labels) and ``<stem>_overlay.png`` for every input image; for a multi-task
    model (SIFT Flow's) ``<stem>_<task>.png`` and ``<stem>_<task>_overlay.png`` for each task (``_sem``, ``_geo``).

    The output folder is checked before any work (an existing, non-empty one is refused unless
    ``overwrite``). Each file is written atomically. With ``skip_bad`` an unreadable image is logged and
    skipped, and counted in the result. Returns ``{"images": written, "skipped": n, "seconds": t,
    "images_per_s": written / t}``. :func:`predict_files` does the same for a checkpoint already loaded.
    """
    return predict_files(load_checkpoint(cfg.checkpoint), cfg, progress=progress)


def predict_files(ck: Checkpoint, cfg: PredictConfig, *, progress: bool = True) -> dict[str, Any]:
    """:func:`run_predict` with the checkpoint already loaded (``cfg.checkpoint`` is not read)."""
    spec = ScorerSpec(ck, engine=cfg.engine, onnx_file=cfg.onnx_file, precision=cfg.precision, device=cfg.device,
                      flip=cfg.flip, window=cfg.window,
                      shift_and_stitch=cfg.shift_and_stitch)  # the engine settings are refused before any work
    files = collect_inputs(cfg.inputs)
    out = check_output_dir(cfg.out_dir, option="out_dir", overwrite=cfg.overwrite, create=True)
    predictor = Predictor(spec.build(), tile_pixels=cfg.tile_pixels)
    loader = DataLoader(_Images(files, cfg.max_pixels, cfg.skip_bad), batch_size=1, num_workers=cfg.workers,
                        collate_fn=_first)
    used: set[str] = set()
    skipped: list[str] = []
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=2) as pool, Progress(len(files), "predict", "img", enabled=progress) as bar:
        pending = []
        for image, i, problem in loader:
            bar.update(1)
            if image is None:
                log.warning("skipping %s", problem)
                skipped.append(problem)
                continue
            labels = predictor(image, str(files[i]))
            name, n = files[i].stem, 0
            while name in used or f"{name}_overlay" in used:  # same stem in two folders: keep both
                n += 1
                name = f"{files[i].stem}_{n}"
            used.update((name, f"{name}_overlay"))
            pending.append(pool.submit(_write, out, name, image.permute(1, 2, 0).numpy(), labels, ck, cfg.overlay))
            while len(pending) > 4:  # bound the images held for writing (a folder of 24 MP photos)
                pending.pop(0).result()
        for f in pending:
            f.result()
    dt = time.perf_counter() - t0
    if skipped:
        log.warning("skipped %d of %d images that could not be read (skip_bad)", len(skipped), len(files))
    done = len(files) - len(skipped)
    return {"images": done, "skipped": len(skipped), "seconds": dt, "images_per_s": done / dt}


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
