"""Any dataset laid out as ``images/`` + ``masks/`` folders matched by file stem: bring your own data."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .base import (
    IGNORE_INDEX,
    DataError,
    SegmentationDataset,
    Transforms,
    index_array,
    open_mask,
    read_class_table,
    read_ids,
    require_dir,
    split_class_table,
)
from .voc import voc_palette

__all__ = ["IMAGE_EXTENSIONS", "FolderSegmentation"]

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".ppm", ".pgm", ".webp", ".gif"}
)

Colour = tuple[int, int, int]


class FolderSegmentation(SegmentationDataset):
    """Images in ``<root>/<images>/`` and masks in ``<root>/<masks>/``, paired by file stem (``a.jpg`` with
    ``a.png``). Extra masks are ignored; an image without a mask is an error.

    Masks are read by mode: single-channel (index or palette PNG) masks hold class indices (a palette PNG's
    indices, not its colours), 255 = ignore; RGB masks are mapped through a colour table (``colors`` or the
    colours in the class file; a colour mapped to 255 is ignored; any other colour is an error).
    ``binary=True`` reads ISBI-style {0, 255} masks as the classes {0, 1}.

    Args:
        root: dataset folder.
        split: ``None`` for every image; else the subfolder ``<root>/<split>/`` (holding ``images/`` and
            ``masks/``) when it exists, otherwise a file of stems, one a line: ``split`` itself when it is a
            file path, else ``<root>/<split>.txt``.
        transforms: optional ``transforms(image, mask) -> (image, mask)``.
        images, masks: names of the image and mask subfolders.
        classes: class names, or a class file (``name``, ``index name`` or ``index name r g b`` lines;
            index 255 lines give ignored colours); by default ``classes.txt`` in the (split) folder or
            ``root``, else ``["background", "foreground"]`` when ``binary``.
        colors: ``{(r, g, b): class index or 255}`` for RGB masks; overrides the class file's colours.
        binary: masks hold {0, 255}; 255 becomes class 1 (there is no ignore label).
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
    ):
        root = require_dir(Path(root), "dataset", "pass the folder holding the image and mask folders")
        self.root, stems = root, None
        if split is not None and (root / split).is_dir():
            self.root = root / split
        elif split is not None:
            split_file = Path(split) if Path(split).is_file() else root / f"{split}.txt"
            stems = read_ids(split_file, f"write {split_file} (one image stem a line) or pass split=None")
        fix = f"pass the folder holding {images}/ and {masks}/, or name them with images= and masks="
        image_dir = require_dir(self.root / images, "image", fix)
        mask_dir = require_dir(self.root / masks, "mask", fix)
        samples = _pair_by_stem(image_dir, mask_dir, stems)

        self.binary = binary
        names, table_colours, ignored = self._read_classes(classes, [self.root, root], binary)
        if binary and len(names) != 2:
            raise DataError(f"{root}: binary=True needs 2 classes, got {names}; fix: pass two class names")
        self.colors: dict[Colour, int] | None = None
        if colors is not None or any(table_colours) or ignored:
            self.colors = {c: i for i, c in enumerate(table_colours) if c is not None}
            self.colors |= {c: IGNORE_INDEX for c in ignored}
            self.colors |= {tuple(c): int(i) for c, i in (colors or {}).items()}
            bad = {c: i for c, i in self.colors.items() if not (0 <= i < len(names) or i == IGNORE_INDEX)}
            if bad:
                raise DataError(f"{root}: colours {bad} map to no class (0..{len(names) - 1}) nor "
                                f"{IGNORE_INDEX}; fix: correct the colour table")
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
            raise DataError(f"{classes}: class file not found; fix: pass an existing file or a list of names")
        if binary:
            return ["background", "foreground"], [None, None], []
        raise DataError(
            f"{folders[0] / 'classes.txt'}: no class names; fix: write this file (one name a line, or "
            f"'index name r g b'), pass classes=[...], or binary=True for {{0, 255}} masks"
        )

    def load_mask(self, path: Path) -> np.ndarray:
        im = open_mask(path)
        if im.mode in ("RGB", "RGBA") and self.binary:
            im = im.convert("L")
        if im.mode not in ("RGB", "RGBA"):
            labels = index_array(im, path)
            if self.binary:
                labels[labels == 255] = 1
            return labels
        if not self.colors:
            raise DataError(
                f"{path}: RGB colour mask but no colour table; fix: pass colors={{(r, g, b): index}}, write "
                f"'index name r g b' lines in classes.txt, or save masks as index PNGs"
            )
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
            f"{path}: colours {shown}{', ...' if len(unknown) > 5 else ''} are not in the colour table; fix: "
            f"add them to colors= or classes.txt (index 255 to ignore them), or repaint the mask"
        )
    return values[pos]


def _pair_by_stem(image_dir: Path, mask_dir: Path, stems: list[str] | None) -> list[tuple[Path, Path]]:
    images = _by_stem(image_dir)
    masks = _by_stem(mask_dir)
    if stems is not None:
        missing = [s for s in stems if s not in images]
        if missing:
            raise DataError(f"{image_dir / missing[0]}.*: image listed in the split not found; fix: restore "
                            f"it or remove {missing[0]!r} from the split file")
        images = {s: images[s] for s in stems}
    if not images:
        raise DataError(f"{image_dir}: no images (empty split); fix: put images "
                        f"({', '.join(sorted(IMAGE_EXTENSIONS))}) in it")
    samples = []
    for stem, image in sorted(images.items()):
        if stem not in masks:
            raise DataError(f"{image} has no mask {mask_dir / stem}.*; fix: add the mask (same file stem) or "
                            f"remove the image")
        samples.append((image, masks[stem]))
    return samples


def _by_stem(folder: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() not in IMAGE_EXTENSIONS or p.name.startswith("."):
            continue
        if p.stem in found:
            raise DataError(f"{p}: same stem as {found[p.stem]}; fix: keep one file per stem in {folder}")
        found[p.stem] = p
    return found
