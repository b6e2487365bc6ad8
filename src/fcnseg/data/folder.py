"""Any dataset laid out as ``images/`` + ``masks/`` folders matched by file stem: bring your own data."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..io import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, is_image_file
from .base import (
    IGNORE_INDEX,
    RESIZE_POLICIES,
    DataError,
    SegmentationDataset,
    Transforms,
    holdout_ids,
    index_array,
    open_mask,
    read_class_table,
    read_ids,
    require_dir,
    split_class_table,
)
from .voc import voc_palette

__all__ = ["IMAGE_EXTENSIONS", "FolderSegmentation"]


Colour = tuple[int, int, int]


class FolderSegmentation(SegmentationDataset):
    """Images in ``<root>/<images>/`` and masks in ``<root>/<masks>/``, paired by file stem (``a.jpg`` with
    ``a.png``). Extra masks are ignored; an image without a mask is an error.

    Masks are read by mode: single-channel (index or palette PNG) masks hold class indices (a palette PNG's
    indices, not its colours), 255 = ignore; RGB masks are mapped through a colour table (``colors`` or the
    colours in the class file; a colour mapped to 255 is ignored; any other colour is an error).
    ``binary=True`` reads ISBI-style {0, 255} masks as the classes {0, 1}; ``threshold=N`` reads lossy binary
    masks (JPEG: grey values near 0 and near 255) as class 1 where the grey value is at least N.
    Every image format Pillow opens is accepted (:data:`fcnseg.io.IMAGE_EXTENSIONS`).

    Args:
        root: dataset folder.
        split: ``None`` or ``"all"`` for every image; else the subfolder ``<root>/<split>/`` (holding ``images/`` and
            ``masks/``) when it exists, otherwise a file of stems, one a line: ``split`` itself when it is a
            file path, else ``<root>/<split>.txt``.
        transforms: optional ``transforms(image, mask) -> (image, mask)``.
        images, masks: names of the image and mask subfolders.
        classes: class names, or a class file (``name``, ``index name`` or ``index name r g b`` lines;
            index 255 lines give ignored colours); by default ``classes.txt`` in the (split) folder or
            ``root``, else ``["background", "foreground"]`` when ``binary``.
        colors: ``{(r, g, b): class index or 255}`` for RGB masks; overrides the class file's colours.
        binary: masks hold {0, 255}; 255 becomes class 1 (there is no ignore label).
        threshold: read masks as grey and make every value >= ``threshold`` class 1, the rest class 0 (for
            lossy JPEG masks); implies ``binary``.
        resize: a mask of another size than its image: ``"error"`` (refuse), ``"image"`` (resize the mask to
            the image, nearest neighbour) or ``"mask"`` (resize the image to the mask).
        max_pixels: largest image or mask read (width x height).
        holdout: for a folder without split folders or files: the splits ``"train"`` and ``"val"`` divide its
            images, ``"val"`` taking this share (0 < holdout < 1) or this many (holdout >= 1) images, chosen
            by a hash of the file stem (stable when images are added). ``split="all"`` takes every image.
    """

    def __init__(
        self,
        root: str | Path,
        split: str | Path | None = None,
        transforms: Transforms | None = None,
        *,
        images: str = "images",
        masks: str = "masks",
        classes: Sequence[str] | str | Path | None = None,
        colors: Mapping[Colour, int] | None = None,
        binary: bool = False,
        threshold: int | None = None,
        resize: str = "error",
        max_pixels: int = DEFAULT_MAX_PIXELS,
        holdout: float | None = None,
    ):
        if resize not in RESIZE_POLICIES:
            raise ConfigError(f"resize={resize!r}: expected one of {', '.join(RESIZE_POLICIES)}",
                              fix="pass {dataset_args} resize=image")
        if threshold is not None and not (isinstance(threshold, int) and 0 < threshold <= 255):
            raise ConfigError(f"threshold={threshold!r}: expected an integer grey level in 1..255",
                              fix="pass {dataset_args} threshold=128")
        binary = binary or threshold is not None
        self.threshold, self.resize, self.max_pixels = threshold, resize, int(max_pixels)
        root = require_dir(Path(root), "dataset", "pass the folder holding the image and mask folders as {data_root}")
        self.root, stems, held = root, None, None
        split_file = Path(split) if split is not None and Path(split).is_file() else root / f"{split}.txt"
        if split is not None and (root / split).is_dir():
            self.root = root / split
        elif split is not None and split_file.is_file():
            stems = read_ids(split_file, "")
        elif holdout is not None and split in ("train", "val"):
            held = split
        elif split not in (None, "all"):
            raise DataError(
                f"{root}: split {split!r} is neither a folder {root / str(split)}/ nor a file {split_file}",
                path=root, fix=f"hold images out for validation with {{dataset_args}} holdout=0.1 (train/val), "
                               f"write {split_file} (one image stem a line), or use every image with "
                               f"{{train_split}} all")
        fix = (f"pass the folder holding {images}/ and {masks}/ as {{data_root}}, or name them with "
               f"{{dataset_args}} images=NAME masks=NAME")
        image_dir = require_dir(self.root / images, "image", fix)
        mask_dir = require_dir(self.root / masks, "mask", fix)
        samples = _pair_by_stem(image_dir, mask_dir, stems)
        if held is not None:
            samples = _holdout(samples, holdout, held, root)  # type: ignore[arg-type]

        self.binary = binary
        names, table_colours, ignored = self._read_classes(classes, [self.root, root], binary)
        if binary and len(names) != 2:
            raise DataError(f"{root}: binary masks need 2 classes, got {names}", path=root,
                            fix="list two class names in classes.txt")
        self.colors: dict[Colour, int] | None = None
        if colors is not None or any(table_colours) or ignored:
            self.colors = {c: i for i, c in enumerate(table_colours) if c is not None}
            self.colors |= {c: IGNORE_INDEX for c in ignored}
            self.colors |= {tuple(c): int(i) for c, i in (colors or {}).items()}
            bad = {c: i for c, i in self.colors.items() if not (0 <= i < len(names) or i == IGNORE_INDEX)}
            if bad:
                raise DataError(f"{root}: colours {bad} map to no class (0..{len(names) - 1}) nor "
                                f"{IGNORE_INDEX}", fix="correct the colour table", path=root)
        # Palette: the first colour mapped to a class (the class file's come first), else VOC's colour map.
        palette = voc_palette(len(names))
        for c, i in reversed(list((self.colors or {}).items())):
            if i < len(names):
                palette[i] = c
        super().__init__(samples, names, palette, transforms)

    @staticmethod
    def _read_classes(
        classes: Sequence[str] | str | Path | None, folders: list[Path], binary: bool
    ) -> tuple[list[str], list[Colour | None], list[Colour]]:
        if classes is not None and not isinstance(classes, str | Path):
            return list(classes), [None] * len(classes), []
        if classes is None:
            candidates = [f / "classes.txt" for f in folders]
        else:
            candidates = [Path(classes)] + [f / classes for f in folders]
        found = [p for p in candidates if p.is_file()]
        if found:
            return split_class_table(read_class_table(found[0]), found[0])
        if classes is not None:
            raise DataError(f"{classes}: class file not found", path=classes,
                            fix="pass {dataset_args} classes=FILE to an existing file")
        if binary:
            return ["background", "foreground"], [None, None], []
        raise DataError(
            f"{folders[0] / 'classes.txt'}: no class names", path=folders[0] / "classes.txt",
            fix="write this file (one name a line, or 'index name r g b'), or pass {dataset_args} classes=FILE, "
                "or {dataset_args} binary=true for 0/255 masks")

    def _fingerprint(self) -> dict[str, Any]:
        return {**super()._fingerprint(), "binary": self.binary, "threshold": self.threshold,
                "colors": sorted((list(c), i) for c, i in (self.colors or {}).items())}

    def _label_hint(self, values: np.ndarray) -> str:
        if self.binary and self.threshold is None:
            return " (binary masks hold only 0 and 255: lossy JPEG masks need {dataset_args} threshold=128)"
        return ""

    def load_mask(self, path: Path) -> np.ndarray:
        im = open_mask(path, max_pixels=self.max_pixels)
        if self.threshold is not None:
            grey = np.asarray(im.convert("L") if im.mode not in ("L", "I", "I;16") else im)
            return (grey >= self.threshold).astype(np.int64)
        if im.mode in ("RGB", "RGBA", "LA") and self.binary:
            im = im.convert("L")
        if im.mode not in ("RGB", "RGBA"):
            labels = index_array(im, path)
            if self.binary:
                labels[labels == 255] = 1
            return labels
        if not self.colors:
            raise DataError(
                f"{path}: RGB colour mask but no colour table", path=path,
                fix="write 'index name r g b' lines in classes.txt, pass {dataset_args} binary=true for black/white "
                    "masks, or save masks as index PNGs")
        return _map_colours(np.asarray(im.convert("RGB")), self.colors, path)


def _map_colours(rgb: np.ndarray, colors: Mapping[Colour, int], path: Path) -> np.ndarray:
    """(H, W, 3) uint8 colours -> (H, W) int64 labels through ``colors``; unknown colours are a DataError."""
    codes = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    keys = np.array(sorted((r << 16) | (g << 8) | b for r, g, b in colors), dtype=np.int64)
    values = np.array([colors[((k >> 16) & 255, (k >> 8) & 255, k & 255)] for k in keys], dtype=np.int64)
    pos = np.minimum(np.searchsorted(keys, codes), len(keys) - 1)
    known = keys[pos] == codes
    if not known.all():
        unknown = np.unique(codes[~known])
        shown = ", ".join(str(((k >> 16) & 255, (k >> 8) & 255, k & 255)) for k in unknown[:5].tolist())
        raise DataError(
            f"{path}: colours {shown}{', ...' if len(unknown) > 5 else ''} are not in the colour table", path=path,
            fix="add them to classes.txt as 'index name r g b' (index 255 to ignore them), or repaint the mask")
    return values[pos]


def _pair_by_stem(image_dir: Path, mask_dir: Path, stems: list[str] | None) -> list[tuple[Path, Path]]:
    images = _by_stem(image_dir)
    masks = _by_stem(mask_dir)
    if stems is not None:
        missing = [s for s in stems if s not in images]
        if missing:
            raise DataError(f"{image_dir / missing[0]}.*: image listed in the split not found", path=image_dir,
                            fix=f"restore it or remove {missing[0]!r} from the split file")
        images = {s: images[s] for s in stems}
    if not images:
        raise DataError(f"{image_dir}: no images (empty split)", path=image_dir,
                        fix=f"put images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in it")
    # An image without a mask is paired with the mask it should have: validation reports it (or skips it).
    return [(image, masks.get(stem, mask_dir / f"{stem}.png")) for stem, image in sorted(images.items())]


def _holdout(samples: list[tuple[Path, Path]], holdout: float, split: str, root: Path) -> list[tuple[Path, Path]]:
    """The ``"train"`` or ``"val"`` part of ``samples``; val holds the ``holdout`` share (or count) whose stems
    hash lowest (:func:`~fcnseg.data.base.holdout_ids`), so the division does not depend on file order."""
    val = set(holdout_ids([image.stem for image, _ in samples], holdout, root))  # stems are unique (_by_stem)
    return [s for s in samples if (s[0].stem in val) == (split == "val")]


def _by_stem(folder: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if not is_image_file(p):
            continue
        if p.stem in found:
            raise DataError(f"{p}: same stem as {found[p.stem]}", fix=f"keep one file per stem in {folder}", path=p)
        found[p.stem] = p
    return found
