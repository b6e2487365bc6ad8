"""``fcnseg predict``: segment files or folders; palette label PNGs and colour overlays with a legend.

Decoding runs in loader workers and writing in a thread pool, so both overlap the network's compute.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .checkpoint import Checkpoint, load_checkpoint
from .engine import predict_logits, prepare_inference

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm")


def collect_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """Image files named directly or found (recursively) in folders, in a stable order."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise FileNotFoundError(f"folder {item} holds no images ({', '.join(IMAGE_SUFFIXES)})")
            files += found
        elif item.is_file():
            files.append(item)
        else:
            raise FileNotFoundError(f"input {item} does not exist")
    if not files:
        raise FileNotFoundError("no input images given")
    return files


class _Images(Dataset):
    def __init__(self, files: list[Path]):
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path = self.files[i]
        try:
            with Image.open(path) as im:
                arr = np.asarray(im.convert("RGB"))
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"cannot read image {path}: {e}") from e
        return torch.from_numpy(arr.copy()).permute(2, 0, 1), i  # uint8 (3, H, W)


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


def run_predict(checkpoint: str | Path | Checkpoint, inputs: Sequence[str | Path], out_dir: str | Path, *,
                overlay: bool = True, overwrite: bool = False, flip: bool = False, window: int = 0,
                device: str = "", workers: int = 2, engine: str = "torch", onnx_file: str | None = None,
                precision: str = "fp32", progress: bool = True) -> dict[str, float]:
    """Write ``<stem>.png`` (palette labels) and ``<stem>_overlay.png`` for every input image.

    Returns {"images": n, "seconds": t, "images_per_s": n / t}. An existing, non-empty ``out_dir`` is
    refused unless ``overwrite``.
    """
    ck = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    files = collect_inputs(inputs)
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"output folder {out} exists and is not empty: pass --overwrite or choose another -o")
    out.mkdir(parents=True, exist_ok=True)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    scores = _scorer(ck, dev, engine, onnx_file, flip, window, precision)
    loader = DataLoader(_Images(files), batch_size=1, num_workers=workers, collate_fn=_first)
    used: set[str] = set()
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=2) as pool:
        pending = []
        for image, i in tqdm(loader, total=len(files), desc="predict", unit="img", disable=not progress):
            labels = scores(image).astype(np.uint8)
            name, n = files[i].stem, 0
            while name in used or f"{name}_overlay" in used:  # same stem in two folders: keep both
                n += 1
                name = f"{files[i].stem}_{n}"
            used.update((name, f"{name}_overlay"))
            pending.append(pool.submit(_write, out, name, image.permute(1, 2, 0).numpy(), labels, ck, overlay))
        for f in pending:
            f.result()
    dt = time.perf_counter() - t0
    return {"images": len(files), "seconds": dt, "images_per_s": len(files) / dt}


def _scorer(ck: Checkpoint, dev: torch.device, engine: str, onnx_file: str | None, flip: bool, window: int,
            precision: str = "fp32") -> Callable[[torch.Tensor], np.ndarray]:
    if engine == "onnxruntime":
        if not onnx_file:
            raise ValueError("--engine onnxruntime needs --onnx FILE (made by `fcnseg export --format onnx`)")
        if flip or window or precision != "fp32":
            raise ValueError("--flip, --window and --precision are for --engine torch; the ONNX file fixes its "
                             "own precision (export with --int8 for int8)")
        if not Path(onnx_file).is_file():
            raise FileNotFoundError(f"--onnx {onnx_file}: no such file")
        import onnxruntime as ort

        sess = ort.InferenceSession(onnx_file, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name

        def run_ort(image: torch.Tensor) -> np.ndarray:
            x = ck.normalization(image[None]).numpy()
            return sess.run(None, {name: x})[0][0].argmax(0)

        return run_ort
    if engine != "torch":
        raise ValueError(f"unknown engine {engine!r}: torch or onnxruntime")
    model = prepare_inference(ck.build_model().to(dev), precision=precision)

    def run_torch(image: torch.Tensor) -> np.ndarray:
        x = ck.normalization(image[None].to(dev))
        return predict_logits(model, x, flip=flip, window=window)[0].argmax(0).cpu().numpy()

    return run_torch


def _first(batch: list[Any]) -> Any:
    return batch[0]


def _write(out: Path, name: str, rgb: np.ndarray, labels: np.ndarray, ck: Checkpoint, overlay: bool) -> None:
    # compress_level 1: a few percent larger files, several times faster to write than PIL's default 6
    palette_image(labels, ck.palette).save(out / f"{name}.png", compress_level=1)
    if overlay:
        overlay_image(rgb, labels, ck.palette, ck.classes).save(out / f"{name}_overlay.png", compress_level=1)
