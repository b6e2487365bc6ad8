"""fcnseg.io, the one image reader: hand-made files of every mode and every kind of damage, with expectations
computed by hand (16-bit scaling, EXIF orientation, CMYK, alpha, palettes, frames, the pixel budget)."""

from __future__ import annotations

import io
import logging
import re
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from fcnseg.cli import flag_spelling
from fcnseg.io import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    DataError,
    clean_error_message,
    open_mask,
    read_header,
    read_image,
)

# --------------------------------------------------------------------------------------------------- helpers

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(width: int, height: int) -> bytes:
    """A valid PNG header claiming ``width`` x ``height`` RGB pixels, followed by 64 bytes of image data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8 bits, colour type 2 (RGB), no interlace
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + _chunk(b"IEND", b""))


def quadrants(h: int, w: int) -> np.ndarray:
    """(h, w, 3) uint8: top-left red, top-right green, bottom-left blue, bottom-right white."""
    a = np.empty((h, w, 3), dtype=np.uint8)
    a[: h // 2, : w // 2], a[: h // 2, w // 2 :] = RED, GREEN
    a[h // 2 :, : w // 2], a[h // 2 :, w // 2 :] = BLUE, WHITE
    return a


def exif_jpeg(path: Path, array: np.ndarray, orientation: int) -> Path:
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(array).save(path, format="JPEG", quality=95, exif=exif)
    return path


def corners(t: torch.Tensor) -> list[tuple[int, ...]]:
    """RGB of the top-left, top-right, bottom-left, bottom-right pixels of a (3, H, W) tensor."""
    return [tuple(t[:, y, x].tolist()) for y, x in ((0, 0), (0, -1), (-1, 0), (-1, -1))]


def assert_near(got: list[tuple[int, ...]], want: list[tuple[int, ...]], atol: int) -> None:
    """Colours equal up to ``atol`` per channel (JPEG is lossy; flat regions stay within a few levels)."""
    diff = np.abs(np.array(got, dtype=int) - np.array(want, dtype=int))
    assert diff.max() <= atol, f"{got} != {want}"


# ------------------------------------------------------------------------------------------------ bit depths


def test_16_bit_grey_is_scaled_not_clipped(tmp_path: Path) -> None:
    # round(v * 255 / 65535) = round(v / 257): 65535 -> 255, 32896 = 128 * 257 -> 128, 49344 = 192 * 257 -> 192,
    # 385 / 257 = 1.498 -> 1 but 386 / 257 = 1.502 -> 2 (rounded, not floored), 128 / 257 = 0.498 -> 0.
    values = np.array([[0, 65535, 32896, 49344], [385, 386, 128, 1000]], dtype=np.uint16)
    want = np.array([[0, 255, 128, 192], [1, 2, 0, 4]], dtype=np.uint8)  # 1000 / 257 = 3.89 -> 4
    Image.fromarray(values).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode == "I;16"  # what Pillow makes of a 16-bit grey PNG
    header = read_header(tmp_path / "deep.png")
    assert (header.mode, header.format, header.size) == ("I;16", "PNG", (4, 2))
    t = read_image(tmp_path / "deep.png")
    assert t.dtype == torch.uint8 and t.shape == (3, 2, 4)
    for c in range(3):  # grey: three equal channels
        assert t[c].numpy().tolist() == want.tolist()


def test_16_bit_mask_keeps_its_labels(tmp_path: Path) -> None:
    # Masks hold labels: a 16-bit mask is never rescaled (300 stays 300, not 1).
    Image.fromarray(np.array([[0, 300], [65535, 7]], dtype=np.uint16)).save(tmp_path / "m.png")
    assert np.asarray(open_mask(tmp_path / "m.png")).tolist() == [[0, 300], [65535, 7]]


# ---------------------------------------------------------------------------------------------------- modes


def test_cmyk_jpeg_becomes_rgb(tmp_path: Path) -> None:
    # RGB = (255 - C, 255 - M, 255 - Y) * (255 - K) / 255: pure cyan, red (M + Y), black (K) and white.
    cmyk = np.zeros((32, 32, 4), dtype=np.uint8)
    cmyk[:16, :16], cmyk[:16, 16:] = (255, 0, 0, 0), (0, 255, 255, 0)
    cmyk[16:, :16], cmyk[16:, 16:] = (0, 0, 0, 255), (0, 0, 0, 0)
    Image.fromarray(cmyk, mode="CMYK").save(tmp_path / "c.jpg", format="JPEG", quality=95)
    assert read_header(tmp_path / "c.jpg").mode == "CMYK"
    t = read_image(tmp_path / "c.jpg")
    assert t.shape == (3, 32, 32)
    centres = [tuple(t[:, y, x].tolist()) for y, x in ((8, 8), (8, 24), (24, 8), (24, 24))]
    assert_near(centres, [(0, 255, 255), (255, 0, 0), (0, 0, 0), (255, 255, 255)], atol=4)


def test_rgba_png_drops_alpha_and_keeps_colour_exactly(tmp_path: Path) -> None:
    # Not composited: a fully transparent pixel keeps its colour (neither black nor white).
    rgba = np.array([[(10, 20, 30, 0), (200, 100, 50, 128)], [(1, 2, 3, 255), (255, 255, 255, 0)]], dtype=np.uint8)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    assert read_header(tmp_path / "a.png").mode == "RGBA"
    t = read_image(tmp_path / "a.png")
    assert t.permute(1, 2, 0).tolist() == [[[10, 20, 30], [200, 100, 50]], [[1, 2, 3], [255, 255, 255]]]


def test_la_and_l_become_three_equal_channels(tmp_path: Path) -> None:
    la = np.array([[(77, 0), (200, 255)]], dtype=np.uint8)
    Image.fromarray(la, mode="LA").save(tmp_path / "la.png")
    assert read_header(tmp_path / "la.png").mode == "LA"
    assert read_image(tmp_path / "la.png").permute(1, 2, 0).tolist() == [[[77] * 3, [200] * 3]]
    Image.fromarray(np.array([[0, 13], [200, 255]], dtype=np.uint8)).save(tmp_path / "l.png")
    assert read_header(tmp_path / "l.png").mode == "L"
    assert read_image(tmp_path / "l.png").permute(1, 2, 0).tolist() == [[[0] * 3, [13] * 3], [[200] * 3, [255] * 3]]


def test_palette_image_gives_its_palette_colours(tmp_path: Path) -> None:
    im = Image.frombytes("P", (2, 2), bytes([0, 1, 2, 1]))
    im.putpalette([9, 8, 7, 200, 10, 10, 10, 200, 10])
    im.save(tmp_path / "p.png")
    assert read_header(tmp_path / "p.png").mode == "P"
    rgb = read_image(tmp_path / "p.png").permute(1, 2, 0).tolist()
    assert rgb == [[[9, 8, 7], [200, 10, 10]], [[10, 200, 10], [200, 10, 10]]]


def test_one_bit_image_is_black_and_white(tmp_path: Path) -> None:
    Image.fromarray(np.array([[False, True], [True, False]])).save(tmp_path / "b.png")
    assert read_header(tmp_path / "b.png").mode == "1"
    assert read_image(tmp_path / "b.png").permute(1, 2, 0).tolist() == [[[0] * 3, [255] * 3], [[255] * 3, [0] * 3]]


def test_multi_frame_gif_gives_first_frame_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    frames = [Image.new("RGB", (8, 6), c) for c in (RED, BLUE, GREEN)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    header = read_header(tmp_path / "anim.gif")
    assert (header.format, header.frames, header.size) == ("GIF", 3, (8, 6))
    with caplog.at_level(logging.WARNING, logger="fcnseg.io"):
        t = read_image(tmp_path / "anim.gif")
    assert t.shape == (3, 6, 8) and (t.permute(1, 2, 0).reshape(-1, 3) == torch.tensor(RED)).all()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"{tmp_path / 'anim.gif'}: 3 frames; using the first"]


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")  # Pillow's, about the cut-off page
def test_tiff_with_a_truncated_later_frame_is_read_or_refused_by_name(tmp_path: Path) -> None:
    # The first frame is whole: reading it or a DataError naming the file are both correct; a bare TypeError
    # (no file name, not skipped by --skip-bad) is not.
    rng = np.random.default_rng(0)
    frames = [Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)) for _ in range(4)]
    buf = io.BytesIO()
    frames[0].save(buf, format="TIFF", save_all=True, append_images=frames[1:])
    path = tmp_path / "pages.tif"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) * 2 // 3])
    for read in (read_header, read_image):
        try:
            got = read(path)
        except DataError as e:
            assert str(path) in str(e)
        else:
            assert getattr(got, "size", None) == (80, 60) or tuple(got.shape) == (3, 60, 80)


# ------------------------------------------------------------------------------------------ EXIF orientation

# A stored 64x48 image with quadrants red | green over blue | white, and for each EXIF orientation the
# displayed size and the colours at its corners (TL, TR, BL, BR), derived from the EXIF definitions:
# 3 = turned 180 degrees; 6 = the stored row 0 is the displayed right column and the stored column 0 the
# displayed top row (turn 90 degrees clockwise to view); 8 = row 0 is the displayed left column and column 0
# the displayed bottom row (turn 90 degrees anticlockwise).
ORIENTATIONS = {
    3: ((64, 48), [WHITE, BLUE, GREEN, RED]),
    6: ((48, 64), [BLUE, RED, WHITE, GREEN]),
    8: ((48, 64), [GREEN, WHITE, RED, BLUE]),
}


@pytest.mark.parametrize("orientation", sorted(ORIENTATIONS))
def test_exif_orientation_is_applied(tmp_path: Path, orientation: int) -> None:
    size, want = ORIENTATIONS[orientation]
    path = exif_jpeg(tmp_path / "phone.jpg", quadrants(48, 64), orientation)
    assert Image.open(path).size == (64, 48)  # stored as written
    header = read_header(path)
    assert header.size == size and header.orientation == orientation
    t = read_image(path)
    assert (t.shape[2], t.shape[1]) == size
    assert_near(corners(t), want, atol=8)


def test_header_size_respects_orientation_without_decoding(tmp_path: Path) -> None:
    # The pixel data is cut off (noise: the data is most of the file): only a header read can succeed, and it
    # gives the displayed size.
    noise = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    whole = exif_jpeg(tmp_path / "whole.jpg", noise, 6).read_bytes()
    (tmp_path / "cut.jpg").write_bytes(whole[: len(whole) // 2])
    header = read_header(tmp_path / "cut.jpg")
    assert header.size == (120, 160) and header.orientation == 6 and header.pixels == 19200
    with pytest.raises(DataError, match="cut.jpg: cannot decode image"):
        read_image(tmp_path / "cut.jpg")


# ------------------------------------------------------------------------------------------- unreadable files


def _zero_bytes(path: Path) -> None:
    path.write_bytes(b"")


def _text(path: Path) -> None:
    path.write_text("this is not a picture\n")


def _truncated(path: Path) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)  # incompressible: long data
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, format="PNG" if path.suffix == ".png" else "JPEG", quality=95)
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])


@pytest.mark.parametrize(("name", "make", "what"), [
    ("zero.png", _zero_bytes, r"not an image file Pillow can read \(0 bytes\)"),
    ("text.png", _text, "not an image file Pillow can read"),
    ("cut.png", _truncated, r"cannot decode image \(image file is truncated"),
    ("cut.jpg", _truncated, r"cannot decode image \(image file is truncated"),
])
def test_unreadable_files_are_data_errors_naming_the_file(tmp_path: Path, name: str, make, what: str) -> None:
    path = tmp_path / name
    make(path)
    with pytest.raises(DataError, match=f"^{re.escape(str(path))}: {what}.*; fix: ") as e:
        read_image(path)
    assert "\n" not in str(e.value)


# ----------------------------------------------------------------------------------------------- pixel budget


def test_decompression_bomb_is_refused_from_the_header(tmp_path: Path) -> None:
    # 100000 x 100000 RGB would take 30 GB to decode; the 64 bytes of data that follow would fail anyway.
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb_png(100_000, 100_000))
    assert path.stat().st_size < 200
    for read in (read_header, read_image):
        t0 = time.perf_counter()
        with pytest.raises(DataError) as e:
            read(path)
        assert time.perf_counter() - t0 < 0.5  # refused from the header: nothing decoded, nothing allocated
        message = str(e.value)
        assert message.startswith(f"{path}: ") and f"budget of {DEFAULT_MAX_PIXELS:,}" in message
        assert "`max_pixels`" in message and e.value.options == ("max_pixels",) and e.value.path == str(path)
        assert "fix: pass a larger --max-pixels" in e.value.render(flag_spelling)  # as the CLI writes it


def test_image_over_the_budget_names_its_size(tmp_path: Path) -> None:
    Image.fromarray(quadrants(30, 40)).save(tmp_path / "a.png")
    with pytest.raises(DataError, match=r"a\.png: image is 40x30 = 1,200 pixels, over the budget of 1,199; "
                                        r"fix: pass a larger `max_pixels`"):
        read_image(tmp_path / "a.png", max_pixels=1199)
    with pytest.raises(DataError, match="40x30 .*`max_pixels`"):
        read_header(tmp_path / "a.png", max_pixels=1000)
    assert read_image(tmp_path / "a.png", max_pixels=1200).shape == (3, 30, 40)  # the budget is inclusive
    # A header claiming more than the default budget but less than Pillow's own bomb limit: our check.
    (tmp_path / "big.png").write_bytes(bomb_png(8000, 8000))
    with pytest.raises(DataError, match=r"big\.png: image is 8000x8000 = 64,000,000 pixels, over the budget of "
                                        r"50,000,000; fix: pass a larger `max_pixels`"):
        read_header(tmp_path / "big.png")


# ------------------------------------------------------------------------------------------------ the rest


def test_bytes_input(tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.fromarray(quadrants(4, 6)).save(buf, format="PNG")
    t = read_image(buf.getvalue())
    assert t.shape == (3, 4, 6) and corners(t) == [RED, GREEN, BLUE, WHITE]
    assert read_header(buf.getvalue()).size == (6, 4)
    with pytest.raises(DataError, match=r"^uploaded image: not an image file Pillow can read \(empty\)"):
        read_image(b"")
    with pytest.raises(DataError, match=r"^uploaded image: image is 6x4 = 24 pixels, over the budget of 23"):
        read_image(buf.getvalue(), max_pixels=23)


def test_image_extensions() -> None:
    for ext in (".gif", ".tif", ".tiff", ".webp", ".png", ".jpg", ".jpeg", ".bmp"):
        assert ext in IMAGE_EXTENSIONS, ext
    for ext in (".h5", ".txt", ".mat", ".json"):
        assert ext not in IMAGE_EXTENSIONS, ext


# --------------------------------------------------------------------------------- errors from loader workers

MESSAGE = "/data/a.png: cannot read image (broken: header); fix: re-export it as PNG or JPEG, or remove it"

# What torch's ExceptionWrapper.reraise() passes to the exception class in the main process.
WRAPPED = (
    "Caught DataError in DataLoader worker process 0.\n"
    "Original Traceback (most recent call last):\n"
    '  File "/venv/lib/python3.11/site-packages/torch/utils/data/_utils/worker.py", line 349, in _worker_loop\n'
    "    data = fetcher.fetch(index)  # type: ignore[possibly-undefined]\n"
    '  File "/work/main/src/fcnseg/io.py", line 148, in _open\n'
    '    raise DataError(f"{name}: cannot read {what} ({e}); fix: re-export it as PNG or JPEG, or remove it")\n'
    f"fcnseg.io.DataError: {MESSAGE}\n"
)


def test_clean_error_message() -> None:
    assert clean_error_message(WRAPPED, "DataError") == MESSAGE
    assert clean_error_message(WRAPPED) == MESSAGE
    assert clean_error_message(MESSAGE, "DataError") == MESSAGE  # not wrapped: unchanged
    value_error = WRAPPED.replace("DataError", "ValueError").replace("fcnseg.io.ValueError", "ValueError")
    assert clean_error_message(value_error, "ValueError") == MESSAGE
    assert str(DataError(WRAPPED)) == MESSAGE  # the constructor cleans what reraise() hands it


class _Broken(Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int) -> torch.Tensor:
        raise DataError(f"/data/{i}.png: cannot read image (broken: header); fix: remove it")


def test_error_from_a_real_loader_worker_keeps_one_line() -> None:
    loader = DataLoader(_Broken(), batch_size=1, num_workers=1)
    with pytest.raises(DataError) as e:
        next(iter(loader))
    assert str(e.value) == "/data/0.png: cannot read image (broken: header); fix: remove it"
