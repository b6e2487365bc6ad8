"""What every fcnseg dataset shares: the sample contract, decoding, and errors that name the file and the fix.

A dataset is a list of ``(image path, mask path)`` pairs plus class names and a palette. Cheap checks (folders
exist, every image has its mask, the split is not empty) run at construction; decoding checks (readable,
not truncated, mask size equals image size or a ``resize`` policy, labels are classes or the ignore label) run
in ``__getitem__`` and, over the whole dataset before any work, in :meth:`SegmentationDataset.validate`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing as mp
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import PIL
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from .. import __version__
from ..errors import ConfigError, DataError
from ..io import DEFAULT_MAX_PIXELS, open_mask, read_header, read_image
from ..progress import Progress

__all__ = [
    "IGNORE_INDEX", "DataError", "SegmentationDataset", "Transforms", "read_image", "open_mask",
    "index_array", "read_class_table", "split_class_table", "require_dir", "read_ids", "CheckReport",
    "RESIZE_POLICIES", "CHECK_LEVELS", "cache_dir", "with_skip_hint",
]

log = logging.getLogger(__name__)

IGNORE_INDEX = 255
"""Label of pixels that are neither learned nor scored: the VOC border/void label."""

Transforms = Callable[[tv_tensors.Image, tv_tensors.Mask], tuple[tv_tensors.Image, tv_tensors.Mask]]

_SKIP_FIX = "or pass {skip_bad} to skip such samples"

CHECK_LEVELS = ("headers", "labels", "full")
"""How deep :meth:`SegmentationDataset.validate` looks: image and mask headers (sizes, budget, readable
formats); also every mask decoded and its labels checked; also every image decoded (truncation)."""

RESIZE_POLICIES = ("error", "image", "mask")
"""What to do with a mask whose size differs from its image's: refuse it, resize the mask to the image
(nearest neighbour), or resize the image to the mask (bilinear)."""


@dataclass
class CheckReport:
    """The result of :meth:`SegmentationDataset.validate`.

    Attributes:
        samples: samples checked.
        bad: one message per bad sample (those samples are dropped when skipping).
        resized: samples whose mask and image differ in size (handled by the ``resize`` policy).
        cached: samples whose result came from the cache of an earlier run.
        seconds: time the pass took.
    """

    samples: int
    bad: list[str] = field(default_factory=list)
    resized: int = 0
    cached: int = 0
    seconds: float = 0.0


class SegmentationDataset(Dataset[tuple[tv_tensors.Image, tv_tensors.Mask]]):
    """``(image, mask)`` pairs: ``Image`` uint8 (3, H, W) RGB (or more channels, see :meth:`load_image`) and
    ``Mask`` int64 (H, W), 255 = ignore.

    Subclasses collect ``samples`` and implement :meth:`load_mask`; this class decodes (through
    :mod:`fcnseg.io`), validates and applies ``transforms(image, mask)``.

    Attributes:
        samples: ``(image path, mask path)`` per sample; :meth:`validate` with ``skip_bad=True`` shortens it.
        classes: class names; label ``i`` is ``classes[i]``.
        palette: one RGB colour per class, for drawing predictions.
        ignore_index: label of pixels excluded from loss and metrics (255).
        tasks: for a multi-task dataset (masks (T, H, W)), ``{task: (class names, palette)}`` in channel order;
            ``classes`` and ``palette`` are then the first task's. ``None`` for one task.
        present_only: score as the reference does for SIFT Flow: a class absent from the split's ground truth is
            left out of mean IU (``ConfusionMatrix.compute(present_only=True)``).
        transforms: optional ``transforms(image, mask) -> (image, mask)``.
        resize: policy for a mask whose size differs from its image's (:data:`RESIZE_POLICIES`).
        max_pixels: largest image or mask read (width x height); larger files are bad samples.
        skip_bad: when True, a sample that fails to load returns ``None`` (dropped by the collate function
            and counted in :attr:`skipped`) instead of raising.
    """

    ignore_index: int = IGNORE_INDEX
    tasks: dict[str, tuple[list[str], list[tuple[int, int, int]]]] | None = None
    present_only: bool = False
    resize: str = "error"
    max_pixels: int = DEFAULT_MAX_PIXELS
    skip_bad: bool = False

    def __init__(
        self,
        samples: Sequence[tuple[Path, Path]],
        classes: Sequence[str],
        palette: Sequence[tuple[int, int, int]],
        transforms: Transforms | None = None,
    ):
        if len(palette) < len(classes):
            raise DataError(f"palette has {len(palette)} colours for {len(classes)} classes",
                            fix="give every class a colour")
        self.samples = list(samples)
        self.classes = list(classes)
        self.palette = [tuple(int(v) for v in c) for c in palette[: len(classes)]]
        self.transforms = transforms
        self._skipped: Any = None  # multiprocessing.Value, made on first use: shared with loader workers

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def skipped(self) -> int:
        """Samples that failed to load and were skipped (``skip_bad``), counted across loader workers."""
        return 0 if self._skipped is None else int(self._skipped.value)

    def share_skip_counter(self) -> None:
        """Create the skip counter now, before loader workers start, so that they all count into it."""
        if self._skipped is None:
            self._skipped = mp.Value("i", 0)

    def __len__(self) -> int:
        return len(self.samples)

    def files(self, i: int) -> tuple[Path, Path]:
        """``(image path, mask path)`` of sample ``i``."""
        return self.samples[i]

    def load_mask(self, path: Path) -> np.ndarray:
        """Read one mask file as integer labels (H, W) in this dataset's class indices, 255 = ignore.

        A multi-task dataset returns stacked labels (T, H, W), one channel per task (see ``siftflow``).
        """
        raise NotImplementedError

    def sample_files(self, sample: tuple[Path, Path]) -> tuple[Path, ...]:
        """Every file a sample is read from (the validation cache keys on them): the image and its mask, and
        for datasets whose mask path stands for several label files, those too."""
        return sample

    def load_image(self, path: Path) -> torch.Tensor:
        """Decode the input of the sample whose image file is ``path``: uint8 (C, H, W), RGB unless the dataset
        adds channels (NYUDv2's depth or HHA, read from files beside it)."""
        return read_image(path, max_pixels=self.max_pixels)

    def mask_size(self, path: Path) -> tuple[int, int] | None:
        """The mask's displayed ``(width, height)`` from its header, or None when only decoding tells."""
        return read_header(path, max_pixels=self.max_pixels, what="mask").size

    def load(self, i: int) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        """Decode and validate sample ``i`` without transforms; raises :class:`DataError` on a bad sample.

        A mask of another size than its image is handled as :attr:`resize` says.
        """
        try:
            return self._load(i)
        except DataError as e:
            hinted = with_skip_hint(e)
            if hinted is e:
                raise
            raise hinted from e

    def _load(self, i: int) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        image_path, mask_path = self.samples[i]
        _require_mask(image_path, mask_path)
        image = self.load_image(image_path)  # (C, H, W) uint8
        labels = self.load_mask(mask_path)  # (H, W), or (T, H, W) for T tasks
        if tuple(labels.shape[-2:]) != tuple(image.shape[1:]):
            image_hw = (int(image.shape[1]), int(image.shape[2]))
            self._size_problem(image_path, mask_path, image_hw, labels.shape[-2:])
            if self.resize == "image":
                labels = _resize_labels(labels, image_hw)
            else:
                image = F.resize(image, list(labels.shape[-2:]), antialias=True)
        self._check_labels(labels, mask_path)
        return tv_tensors.Image(image), tv_tensors.Mask(torch.from_numpy(labels.astype(np.int64, copy=False)))

    def _size_problem(self, image_path: Path, mask_path: Path, image_hw: tuple[int, int],
                      mask_hw: tuple[int, ...]) -> None:
        """Raise for a size mismatch unless the resize policy handles it."""
        if self.resize in ("image", "mask"):
            return
        raise DataError(
            f"{mask_path}: mask is {mask_hw[1]}x{mask_hw[0]} (WxH) but its image {image_path} is "
            f"{image_hw[1]}x{image_hw[0]}", path=mask_path,
            fix=f"pass {{dataset_args}} resize=image (resize masks, nearest neighbour) or resize=mask (resize "
                f"images), or pair the right files, {_SKIP_FIX}")

    def _check_labels(self, labels: np.ndarray, mask_path: Path) -> None:
        bad = (labels < 0) | ((labels >= self.num_classes) & (labels != self.ignore_index))
        if bad.any():
            values = np.unique(labels[bad])
            shown = ", ".join(str(v) for v in values[:8]) + (", ..." if len(values) > 8 else "")
            raise DataError(
                f"{mask_path}: label values {shown} are neither a class (0..{self.num_classes - 1}) nor the "
                f"ignore label {self.ignore_index}", path=mask_path,
                fix=f"relabel the mask or give the dataset its full class list{self._label_hint(values)}, "
                    f"{_SKIP_FIX}")

    def _label_hint(self, values: np.ndarray) -> str:
        """Extra advice for out-of-range labels (subclasses know their mask formats), part of the fix: options
        are named as ``{field}`` placeholders (``{dataset_args}``), never as flags."""
        return ""

    def __getitem__(self, i: int) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        try:
            image, mask = self.load(i)
        except DataError as e:
            if not self.skip_bad:
                raise
            log.warning("skipping bad sample: %s", e)
            if self._skipped is not None:
                with self._skipped.get_lock():
                    self._skipped.value += 1
            return None  # type: ignore[return-value]  # dropped by pad_collate
        if self.transforms is not None:
            image, mask = self.transforms(image, mask)
        return image, mask

    def check(self, skip_bad: bool = False, progress: bool = True) -> list[str]:
        """Decode and validate every sample (images and masks); see :meth:`validate`. Returns the bad
        samples' messages (dropped when ``skip_bad``)."""
        return self.validate("full", skip_bad=skip_bad, progress=progress, cache=False).bad

    def _fingerprint(self) -> dict[str, Any]:
        """What decides a sample's verdict besides its files (subclasses add their mask options)."""
        return {"class": type(self).__name__, "classes": self.classes, "ignore": self.ignore_index,
                "resize": self.resize, "max_pixels": self.max_pixels}

    def _check_sample(self, i: int, level: str) -> tuple[str, str]:
        """``("ok" | "resized" | "bad", message)`` for sample ``i`` at ``level`` (see :data:`CHECK_LEVELS`)."""
        image_path, mask_path = self.samples[i]
        try:
            _require_mask(image_path, mask_path)
            header = read_header(image_path, max_pixels=self.max_pixels)
            w, h = header.size
            if level == "full":
                self.load_image(image_path)  # decodes: truncation, corrupt data
            if level in ("labels", "full"):
                lab = self.load_mask(mask_path)
                self._check_labels(lab, mask_path)
                mask_hw: tuple[int, ...] | None = lab.shape[-2:]
            else:
                size = self.mask_size(mask_path)
                mask_hw = None if size is None else (size[1], size[0])
            if mask_hw is not None and tuple(mask_hw) != (h, w):
                if header.orientation in (5, 6, 7, 8) and tuple(mask_hw) == (w, h):
                    raise DataError(
                        f"{image_path}: EXIF orientation {header.orientation} turns the photo to {w}x{h} (WxH), "
                        f"but its mask {mask_path} matches the stored, unturned pixels", path=image_path,
                        fix=f"save the photo without the EXIF orientation or turn the mask to match (resizing "
                            f"would misplace labels), {_SKIP_FIX}")
                self._size_problem(image_path, mask_path, (h, w), mask_hw)
                return "resized", ""
        except DataError as e:
            return "bad", str(with_skip_hint(e))
        return "ok", ""

    def validate(self, level: str = "labels", *, skip_bad: bool = False, workers: int | None = None,
                 progress: bool = True, cache: bool = True) -> CheckReport:
        """Check every sample before any work: files readable, within the pixel budget, mask and image sizes
        (by the :attr:`resize` policy); from level ``"labels"`` on, every mask's label values; at ``"full"``
        every image is decoded too (truncated files).

        Work runs in parallel threads; below ``"full"`` images are not decoded, only their headers read.
        Verdicts are cached by file path, size and modification time (``$FCNSEG_CACHE``, default
        ``~/.cache/fcnseg``), so a second run over unchanged files is instant.

        With ``skip_bad=False`` a bad sample raises one :class:`DataError` that names the first bad file and
        counts the others; with ``skip_bad=True`` bad samples are dropped from :attr:`samples` (each logged)
        and ``skip_bad`` is also set for loading. Samples whose sizes differ are counted in one warning.
        """
        t0 = time.perf_counter()
        if level not in CHECK_LEVELS:
            raise ConfigError(f"check level {level!r}: expected one of {', '.join(CHECK_LEVELS)}",
                              fix=f"set {{check_data}} to {', '.join(CHECK_LEVELS)} or off")
        store = _VerdictCache(self, level) if cache else None
        verdicts: list[tuple[str, str] | None] = [store.get(s) if store else None for s in self.samples]
        todo = [i for i, v in enumerate(verdicts) if v is None]
        report = CheckReport(samples=len(self.samples), cached=len(self.samples) - len(todo))
        if todo:
            n_threads = workers or min(16, 4 * (os.cpu_count() or 1))
            with ThreadPoolExecutor(max_workers=n_threads) as pool, \
                    Progress(len(todo), f"checking {type(self).__name__}", "sample", enabled=progress) as bar:
                for i, verdict in zip(todo, pool.map(lambda i: self._check_sample(i, level), todo), strict=True):
                    verdicts[i] = verdict
                    bar.update(1)
            if store:
                store.save(self.samples, verdicts)  # type: ignore[arg-type]
        keep = []
        for sample, verdict in zip(self.samples, verdicts, strict=True):
            status, message = verdict  # type: ignore[misc]
            if status == "bad":
                report.bad.append(message)
            else:
                keep.append(sample)
                report.resized += status == "resized"
        report.seconds = time.perf_counter() - t0
        if report.bad and not skip_bad:
            first = DataError(report.bad[0])  # a verdict is str(e): the constructor takes its fix back apart
            more = f" (and {len(report.bad) - 1} more bad samples)" if len(report.bad) > 1 else ""
            raise DataError(first.what + more, fix=first.fix)
        if report.bad:
            for message in report.bad:
                log.warning("skipping bad sample: %s", message)
            if not keep:
                first = DataError(report.bad[0])
                raise DataError(f"every sample is bad, e.g. {first.what}",
                                fix=(first.fix or "").replace(f", {_SKIP_FIX}", "") or None)
            self.samples = keep
        if skip_bad:
            self.skip_bad = True
        if report.resized:
            what = "masks resized to their image" if self.resize == "image" else "images resized to their mask"
            log.warning("%s: %d of %d samples differ in size from their mask: %s (resize=%s)", self,
                        report.resized, report.samples, what, self.resize)
        return report

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} samples, {self.num_classes} classes)"


def with_skip_hint(e: DataError) -> DataError:
    """``e`` with the ``{skip_bad}`` option added to its fix, where the reader (which knows no dataset) left it
    out; ``e`` itself when its fix already names ``skip_bad`` (decided by :attr:`DataError.options`)."""
    return e.with_fix(_SKIP_FIX)


def _require_mask(image_path: Path, mask_path: Path) -> None:
    if not os.path.exists(mask_path):
        raise DataError(f"{image_path} has no mask {mask_path}", path=mask_path,
                        fix=f"add the mask (same file stem) or remove the image, {_SKIP_FIX}")


def _resize_labels(labels: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Labels resized to ``(H, W)`` by nearest neighbour (no label is ever blended with another)."""
    im = Image.fromarray(labels.astype(np.int32), mode="I")
    return np.asarray(im.resize((hw[1], hw[0]), Image.Resampling.NEAREST)).astype(np.int64)


def cache_dir() -> Path:
    """Where fcnseg caches (``$FCNSEG_CACHE``, else ``$XDG_CACHE_HOME/fcnseg``, else ``~/.cache/fcnseg``)."""
    if os.environ.get("FCNSEG_CACHE"):
        return Path(os.environ["FCNSEG_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fcnseg"


class _VerdictCache:
    """Per-sample verdicts of :meth:`SegmentationDataset.validate`, keyed by both files' path, size and mtime.

    One JSON file per dataset configuration; unreadable or unwritable caches are ignored (the pass reruns).
    """

    def __init__(self, ds: SegmentationDataset, level: str):
        self.files = ds.sample_files
        versions = {"fcnseg": __version__, "pillow": PIL.__version__}  # a fixed reader re-checks old verdicts
        # "messages": 2 -- verdicts name options as {field} placeholders, not as the flags of older caches
        key = json.dumps({**ds._fingerprint(), "level": level, "messages": 2, **versions}, sort_keys=True,
                         default=str)
        self.path = cache_dir() / "validate" / f"{hashlib.sha1(key.encode()).hexdigest()[:20]}.json"
        try:
            self.table: dict[str, list[str]] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.table = {}

    def _key(self, sample: tuple[Path, Path]) -> str | None:
        parts = []
        for p in self.files(sample):
            try:
                st = os.stat(p)
            except OSError:
                return None
            parts.append(f"{os.path.abspath(p)}:{st.st_size}:{st.st_mtime_ns}")
        return "|".join(parts)

    def get(self, sample: tuple[Path, Path]) -> tuple[str, str] | None:
        key = self._key(sample)
        hit = self.table.get(key) if key else None
        return (hit[0], hit[1]) if hit else None

    def save(self, samples: list[tuple[Path, Path]], verdicts: list[tuple[str, str]]) -> None:
        for sample, verdict in zip(samples, verdicts, strict=True):
            key = self._key(sample)
            if key:
                self.table[key] = list(verdict)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(self.table))
            os.replace(tmp, self.path)
        except OSError as e:  # a read-only home must not stop training: the pass simply reruns next time
            log.debug("validation cache not written (%s)", e)


def index_array(im: Image.Image, path: Path) -> np.ndarray:
    """Labels (H, W) of a single-channel index mask: palette ("P") PNGs give their indices, not colours."""
    if im.mode not in ("P", "L", "I", "I;16", "1"):
        raise DataError(
            f"{path}: mask has mode {im.mode}, expected single-channel labels (palette or grey PNG)", path=path,
            fix="save class indices as an 8-bit PNG (for RGB colour masks use FolderSegmentation with a colour "
                "table)")
    return np.asarray(im).astype(np.int64)


def read_class_table(path: Path) -> list[tuple[int, str, tuple[int, int, int] | None]]:
    """Parse a class list: one class a line, ``name``, ``index name`` or ``index name r g b``.

    Blank lines and lines starting with ``#`` are skipped; without an index a line's index is its position
    among the class lines. Returns ``(index, name, colour or None)`` rows in file order.
    """
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        tokens = line.split()
        if not tokens or tokens[0].startswith("#"):
            continue
        index = len(rows)
        if len(tokens) > 1 and tokens[0].isdigit():
            index = int(tokens.pop(0))
        colour = None
        if len(tokens) >= 4 and all(t.isdigit() for t in tokens[-3:]):
            colour = tuple(int(t) for t in tokens[-3:])
            tokens = tokens[:-3]
            if max(colour) > 255:
                raise DataError(f"{path}:{n}: colour {colour} is not 8-bit RGB", fix="use values 0..255", path=path)
        rows.append((index, " ".join(tokens), colour))
    if not rows:
        raise DataError(f"{path}: no classes listed", fix="write one class name a line", path=path)
    return rows


def split_class_table(
    rows: list[tuple[int, str, tuple[int, int, int] | None]], path: Path, ignore_index: int = IGNORE_INDEX
) -> tuple[list[str], list[tuple[int, int, int] | None], list[tuple[int, int, int]]]:
    """Class names and colours in index order, and the colours of ``ignore_index`` rows (e.g. VOC's void).

    Raises :class:`DataError` unless the class indices are exactly ``0..n-1``.
    """
    classes = sorted((r for r in rows if r[0] != ignore_index), key=lambda r: r[0])
    if [r[0] for r in classes] != list(range(len(classes))):
        raise DataError(
            f"{path}: class indices {[r[0] for r in classes]} are not 0..{len(classes) - 1}, each once", path=path,
            fix=f"number the classes from 0 without gaps (use {ignore_index} for an ignored colour)")
    ignored = [r[2] for r in rows if r[0] == ignore_index and r[2] is not None]
    return [r[1] for r in classes], [r[2] for r in classes], ignored


def require_dir(path: Path, what: str, fix: str) -> Path:
    """``path`` if it is a directory, else :class:`DataError` saying ``fix`` (options as ``{field}``)."""
    if not path.is_dir():
        raise DataError(f"{path}: {what} folder not found", fix=fix, path=path)
    return path


def read_ids(path: Path, fix: str) -> list[str]:
    """Non-empty, stripped lines of a split file; :class:`DataError` when it is missing or empty."""
    if not path.is_file() and fix:
        raise DataError(f"{path}: split file not found", fix=fix, path=path)
    ids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise DataError(f"{path}: split file lists no samples (empty split)", fix="list one id a line", path=path)
    return ids


def read_mat_labels(path: Path, key: str, what: str, fix: str) -> np.ndarray:
    """Variable ``key`` of a MATLAB label file (SBD, SIFT Flow, NYUDv2, PASCAL-Context) as 2-D int64 values.

    A missing variable, a file scipy cannot read, or anything but a 2-D array of whole numbers is a
    :class:`DataError` that names the file, says what was expected (``what``, e.g. "NYUDv2 labels") and the fix.
    """
    from scipy.io import loadmat  # imported here: only the .mat datasets need scipy

    try:
        raw = loadmat(path)[key]
    except KeyError:
        raise DataError(f"{path}: no variable '{key}' in this .mat file", fix=fix, path=path) from None
    except Exception as e:  # scipy raises many types on corrupt files: ValueError, OSError, zlib.error...
        raise DataError(f"{path}: cannot read {what} ({type(e).__name__}: {e})", fix=fix, path=path) from e
    raw = np.asarray(raw)
    whole = raw.dtype.kind in "iu" or (raw.dtype.kind == "f" and bool(np.all(raw == np.round(raw))))
    if raw.ndim != 2 or not whole:
        raise DataError(f"{path}: '{key}' is {raw.dtype} of shape {raw.shape}, expected 2-D integer labels",
                        fix=fix, path=path)
    return raw.astype(np.int64)


def holdout_ids(ids: Sequence[str], holdout: float, root: Path | None = None) -> list[str]:
    """The ``holdout`` share (0 < holdout < 1) or count (holdout >= 1) of ``ids`` whose SHA-1 hex digest sorts
    lowest: the same on every machine and in any order. :class:`ConfigError` (naming ``root`` where given) when
    it is not a share or count, or leaves no image on either side."""
    where = f"{root}: " if root is not None else ""
    if isinstance(holdout, bool) or not (isinstance(holdout, int | float) and holdout > 0):
        raise ConfigError(f"{where}holdout={holdout!r}: expected a share (0 < holdout < 1) or a count of images",
                          fix="pass {dataset_args} holdout=0.1", path=root)
    n_val = round(holdout * len(ids)) if holdout < 1 else int(holdout)
    if not 1 <= n_val < len(ids):
        raise ConfigError(f"{where}holdout={holdout} leaves {n_val} of {len(ids)} images for val", path=root,
                          fix="pass {dataset_args} holdout to hold out at least one image and keep at least one for "
                              "training")
    return sorted(ids, key=lambda i: hashlib.sha1(i.encode()).hexdigest())[:n_val]
