"""The one image reader: every path that opens a user's image or mask (datasets, predict, export, serve) calls it.

What a user's files hold is read the same way everywhere:

* EXIF orientation is applied (a phone's portrait JPEG is predicted upright, at its displayed size);
* 16-bit grey or colour is scaled to 8 bits (``v * 255 / 65535``), not clipped to white;
* palette, grey, LA, RGBA, CMYK, YCbCr... become RGB (alpha is dropped, not composited);
* a multi-frame file (GIF, TIFF, APNG) gives its first frame, with a warning;
* a pixel budget (``max_pixels``, :data:`DEFAULT_MAX_PIXELS`) is checked from the header, before decoding,
  so a decompression bomb costs nothing;
* anything unreadable (zero bytes, text named ``.png``, truncated data) is a :class:`DataError` naming the file
  (``path``) and the fix; a file over the budget names the option ``max_pixels`` in its fix.

Masks (:func:`open_mask`) get the same orientation, frame and budget handling but keep their mode: their
values are labels, never rescaled.
"""

from __future__ import annotations

import io
import logging
import os
import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from .errors import DataError, StateError, clean_error_message

__all__ = [
    "DataError", "DEFAULT_MAX_PIXELS", "IMAGE_EXTENSIONS", "ImageHeader", "read_image", "read_image_array",
    "open_image", "open_mask", "read_depth", "read_header", "to_rgb8", "is_image_file", "clean_error_message",
]

log = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 50_000_000
"""Largest image (width x height) read by default: a 48 MP photo passes; PIL's bomb limit is 179 MP."""

Source = str | os.PathLike[str] | bytes | BinaryIO


_REEXPORT = "re-export it as PNG or JPEG, or remove it"

# Pillow registers these but cannot decode them without an external handler or program.
_STUB_FORMATS = frozenset({"BUFR", "GRIB", "HDF5", "WMF", "EPS", "MPEG"})


def _pil_extensions() -> frozenset[str]:
    """Every suffix Pillow can open (``.jpg``, ``.png``, ``.gif``, ``.tif``, ``.webp``, ``.bmp``, ...)."""
    Image.init()
    return frozenset(ext.lower() for ext, fmt in Image.registered_extensions().items()
                     if fmt in Image.OPEN and fmt not in _STUB_FORMATS)


IMAGE_EXTENSIONS = _pil_extensions()
"""File suffixes read as images in folders: all that this Pillow opens, so no format is skipped silently."""

# The pixel budget (``max_pixels``, checked from the header) decides what is too large; PIL's warning for
# images between its own limits would only repeat it. Set once, for this one warning category:
# warnings.catch_warnings() is not thread-safe under the parallel validation pass.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

# Orientations 5-8 turn the picture by 90 degrees: the displayed width is the stored height.
_TRANSPOSED = {5, 6, 7, 8}
_EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class ImageHeader:
    """What a file's header says, read without decoding pixels.

    ``size`` is the displayed ``(width, height)``, after EXIF orientation.
    """

    path: str
    format: str
    mode: str
    size: tuple[int, int]
    frames: int
    orientation: int

    @property
    def pixels(self) -> int:
        return self.size[0] * self.size[1]


def is_image_file(path: Path) -> bool:
    """True for a visible file whose suffix Pillow opens (see :data:`IMAGE_EXTENSIONS`)."""
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _name(source: Source) -> str:
    if isinstance(source, bytes | bytearray):
        return "uploaded image"
    if isinstance(source, str | os.PathLike):
        return str(source)
    return str(getattr(source, "name", "image stream"))


def _open(source: Source, what: str, max_pixels: int) -> Image.Image:
    """``Image.open`` with the budget checked from the header; errors become one-line :class:`DataError`."""
    _refuse_truncated()
    name, path = _name(source), _path(source)
    budget_fix = f"pass a larger {{max_pixels}} (now {max_pixels:,}) or downscale the file"
    if Image.MAX_IMAGE_PIXELS is not None and max_pixels > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = max_pixels  # PIL's own bomb check must not fire below the user's budget
    fp = io.BytesIO(source) if isinstance(source, bytes | bytearray) else source
    try:
        im = Image.open(fp)
    except Image.DecompressionBombError as e:
        claimed = re.search(r"\((\d+) pixels\)", str(e))
        size = f"{int(claimed.group(1)):,} pixels" if claimed else f"over {2 * Image.MAX_IMAGE_PIXELS:,} pixels"
        raise DataError(f"{name}: {what} header claims {size} (a decompression bomb?), over the budget of "
                        f"{max_pixels:,}", fix=budget_fix, path=path) from e
    except FileNotFoundError as e:
        raise DataError(f"{name}: {what} file not found", fix="check the path", path=path) from e
    except IsADirectoryError as e:
        raise DataError(f"{name}: is a folder, not an {what} file", fix="pass a file", path=path) from e
    except UnidentifiedImageError as e:
        size = _size_note(source)
        raise DataError(f"{name}: not an {what} file Pillow can read{size}", fix=_REEXPORT, path=path) from e
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - Pillow's plugins raise many types on malformed files
        raise DataError(f"{name}: cannot read {what} ({type(e).__name__}: {e})", fix=_REEXPORT, path=path) from e
    w, h = im.size
    if w * h > max_pixels:
        im.close()
        raise DataError(f"{name}: {what} is {w}x{h} = {w * h:,} pixels, over the budget of {max_pixels:,}",
                        fix=budget_fix, path=path)
    if w == 0 or h == 0:
        im.close()
        raise DataError(f"{name}: {what} is empty ({w}x{h})", fix="re-export it or remove it", path=path)
    return im


def _path(source: Source) -> str | None:
    """The file's path when ``source`` is one (errors carry it), else None (bytes, streams)."""
    return str(source) if isinstance(source, str | os.PathLike) else None


def _size_note(source: Source) -> str:
    if isinstance(source, bytes | bytearray):
        return " (empty)" if not source else ""
    if isinstance(source, str | os.PathLike):
        try:
            return " (0 bytes)" if os.path.getsize(source) == 0 else ""
        except OSError:
            return ""
    return ""


def _orientation(im: Image.Image) -> int:
    """The EXIF orientation tag (1 = upright), read without decoding pixels."""
    try:
        if im.format == "PNG":  # PNG's getexif() decodes the whole image when EXIF is not in the header
            raw = im.info.get("exif")
            if not raw:
                return 1
            exif = Image.Exif()
            exif.load(raw)
        else:
            exif = im.getexif()
        return int(exif.get(_EXIF_ORIENTATION, 1) or 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block is not a broken image: ignore the tag
        return 1


def read_header(source: Source, *, max_pixels: int = DEFAULT_MAX_PIXELS, what: str = "image") -> ImageHeader:
    """Format, mode, displayed size and frame count from the header alone (fast: no pixel is decoded).

    Raises :class:`DataError` for an unreadable file or one over ``max_pixels``.
    """
    im = _open(source, what, max_pixels)
    try:
        orientation = _orientation(im)
        w, h = im.size
        if orientation in _TRANSPOSED:
            w, h = h, w
        return ImageHeader(path=_name(source), format=str(im.format), mode=im.mode, size=(w, h),
                           frames=_frames(im), orientation=orientation)
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - e.g. a truncated multi-page TIFF fails while counting frames
        raise DataError(f"{_name(source)}: cannot read {what} header ({type(e).__name__}: {e})", fix=_REEXPORT,
                        path=_path(source)) from e
    finally:
        im.close()


def _frames(im: Image.Image) -> int:
    # A phone's MPO JPEG carries a preview as a second frame: it is one picture, not an animation.
    return 1 if im.format == "MPO" else int(getattr(im, "n_frames", 1))


def _decode(source: Source, what: str, max_pixels: int) -> Image.Image:
    """Fully decoded first frame, EXIF orientation applied; errors name the file."""
    name = _name(source)
    im = _open(source, what, max_pixels)
    try:
        frames = _frames(im)
        if frames > 1:
            log.warning("%s: %d frames; using the first", name, frames)
            im.seek(0)
        im.load()  # PIL is lazy: truncation and corrupt data only show while decoding
        out = ImageOps.exif_transpose(im) if _orientation(im) != 1 else im.copy()
        if what == "image":
            out = to_rgb8(out)
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - Pillow's decoders raise many types on corrupt data
        raise DataError(f"{name}: cannot decode {what} ({e})", fix=_REEXPORT, path=_path(source)) from e
    finally:
        im.close()
    return out


def to_rgb8(im: Image.Image) -> Image.Image:
    """An ``RGB`` image with 8 bits a channel from any PIL mode.

    16-bit and 32-bit integer grey (``I;16*``, ``I``) is scaled from 0..65535 to 0..255 (``I`` values above
    65535 are clipped), float (``F``) from 0..1 when its values lie there, else clipped to 0..255. Alpha is
    dropped. Everything else goes through PIL's own conversion (palette, grey, CMYK, YCbCr, LAB, HSV).
    """
    if im.mode == "RGB":
        return im
    if im.mode.startswith("I;16") or im.mode == "I":
        a = np.asarray(im).astype(np.int64)
        a = np.clip(a, 0, 65535)
        grey = ((a * 255 + 32767) // 65535).astype(np.uint8)  # round(v * 255 / 65535)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if im.mode == "F":
        a = np.asarray(im, dtype=np.float64)
        finite = a[np.isfinite(a)]
        scale = 255.0 if finite.size and finite.min() >= 0 and finite.max() <= 1 else 1.0
        grey = np.clip(np.nan_to_num(a * scale), 0, 255).round().astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    return im.convert("RGB")


def open_image(source: Source, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode ``source`` (a path, bytes or a binary file) into an upright 8-bit ``RGB`` PIL image."""
    return _decode(source, "image", max_pixels)  # converted to 8-bit RGB inside, where errors are named


def read_image_array(source: Source, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """uint8 (H, W, 3) RGB array of ``source``, read as :func:`open_image` says."""
    return np.asarray(open_image(source, max_pixels=max_pixels))


def read_image(source: Source, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """uint8 (3, H, W) RGB tensor of ``source``, read as :func:`open_image` says."""
    arr = read_image_array(source, max_pixels=max_pixels)
    return torch.from_numpy(np.array(arr)).permute(2, 0, 1).contiguous()  # a writable copy


def open_mask(source: Source, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode a mask upright, first frame, in its own mode (values are labels: never rescaled)."""
    return _decode(source, "mask", max_pixels)


def read_depth(source: Source, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Raw values (H, W) int32 of a single-channel depth map (16-bit PNG in millimetres, as NYUDv2 ships it).

    Read like a mask (upright, first frame, budget checked, never rescaled); colour files are refused with a
    :class:`DataError` naming the file, since their values are not depths.
    """
    im = open_mask(source, max_pixels=max_pixels)
    if im.mode not in ("I;16", "I;16B", "I;16L", "I", "L"):
        raise DataError(f"{_name(source)}: depth map has mode {im.mode}, expected one channel (16-bit grey PNG in "
                        "millimetres)", fix="save the raw depth values as a 16-bit PNG", path=_path(source))
    return np.asarray(im).astype(np.int32)


def unsupported(paths: Iterable[Path]) -> list[Path]:
    """The visible files among ``paths`` that Pillow cannot open by suffix (reported, never silently dropped)."""
    return [p for p in paths if p.is_file() and not p.name.startswith(".") and not is_image_file(p)]


def _refuse_truncated() -> None:
    # With this flag PIL pads a truncated file with grey and reports nothing: a silent label/image mismatch.
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise StateError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True (set by other code), so truncated images "
                         "would load silently", fix="set it back to False")
