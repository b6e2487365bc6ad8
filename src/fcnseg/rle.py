"""COCO run-length encoding of label maps, in numpy: what ``fcnseg predict --format rle`` and ``serve``'s
``format=rle`` write.

A binary mask (H, W) is read in column-major order (down the first column, then the next) as alternating
runs of 0s and 1s, starting with 0s (so the first run is 0 long when the top-left pixel is set). COCO's
compressed string (pycocotools ``maskApi.c``: ``rleToString``) stores each run length, from the fourth on as
the difference to the run two before it, in little-endian groups of 5 bits, one character each
(``48 + group``, bit 5 = more groups follow), the last group sign-extended. ``pycocotools.mask.decode(
{"size": [H, W], "counts": s})`` gives the mask back.

:func:`encode_labels` encodes every class present in a label map from the runs of the labels themselves,
so the cost grows with the number of label changes, not with pixels times classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["mask_counts", "counts_string", "decode_counts", "encode_mask", "encode_labels"]

_GROUPS = 13
"""5-bit groups enough for any int64 difference (13 x 5 = 65 bits)."""


def _label_runs(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """``(starts, values, n)`` of the runs of equal labels in column-major order: the run ``j`` starts at flat
    index ``starts[j]`` and holds ``values[j]``; ``n`` = H x W."""
    flat = np.ascontiguousarray(labels.T).ravel()  # (W*H,): column-major
    starts = np.concatenate(([0], np.flatnonzero(flat[1:] != flat[:-1]) + 1))
    return starts, flat[starts], flat.size


def _counts_of(is_set: np.ndarray, starts: np.ndarray, n: int) -> np.ndarray:
    """COCO run lengths (0s first) of the mask that is 1 on the label runs where ``is_set``."""
    flips = np.flatnonzero(is_set[1:] != is_set[:-1]) + 1  # label runs where the mask changes
    cuts = np.concatenate(([0], starts[flips], [n]))
    counts = np.diff(cuts)
    return np.concatenate(([0], counts)) if is_set[0] else counts


def mask_counts(mask: np.ndarray) -> np.ndarray:
    """Run lengths (int64) of a binary mask (H, W) in COCO's order: column-major, 0s first."""
    starts, values, n = _label_runs(np.asarray(mask, dtype=bool).view(np.uint8))
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    return _counts_of(values.astype(bool), starts, n).astype(np.int64)


def counts_string(counts: np.ndarray) -> str:
    """COCO's compressed string of run lengths (``rleToString`` of pycocotools), vectorised over the runs."""
    x = np.asarray(counts, dtype=np.int64).copy()
    if x.size > 3:
        x[3:] -= np.asarray(counts, dtype=np.int64)[1:-2]  # from the fourth run on: the difference to two before
    shifts = 5 * np.arange(_GROUPS, dtype=np.int64)
    groups = (x[:, None] >> shifts) & 0x1F  # (R, G): arithmetic shifts, so negatives sign-extend
    rest = x[:, None] >> (shifts + 5)  # what is left after each group
    more = np.where(groups & 0x10, rest != -1, rest != 0)  # (R, G): another group follows this one
    used = np.argmin(more, axis=1) + 1  # groups of each run: up to the first that ends it
    keep = np.arange(_GROUPS) < used[:, None]
    chars = (groups | np.where(more, 0x20, 0)) + 48
    return chars[keep].astype(np.uint8).tobytes().decode("ascii")


def decode_counts(text: str | bytes) -> np.ndarray:
    """Run lengths (int64) of a COCO compressed string: the inverse of :func:`counts_string`."""
    data = text.encode("ascii") if isinstance(text, str) else text
    out: list[int] = []
    p = 0
    while p < len(data):
        x, k, more = 0, 0, True
        while more:
            c = data[p] - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p, k = p + 1, k + 1
            if not more and c & 0x10:
                x -= 1 << (5 * k)  # sign-extend the last group
        out.append(x + out[-2] if len(out) > 2 else x)
    return np.asarray(out, dtype=np.int64)


def encode_mask(mask: np.ndarray) -> dict[str, Any]:
    """``{"size": [H, W], "counts": "..."}`` of a binary mask (H, W), as ``pycocotools.mask.encode`` gives it."""
    h, w = mask.shape
    return {"size": [int(h), int(w)], "counts": counts_string(mask_counts(mask))}


def encode_labels(labels: np.ndarray, classes: Sequence[str]) -> list[dict[str, Any]]:
    """One entry per class present in the uint8 label map (H, W), in class order: ``{"id": k, "name":
    classes[k], "pixels": n, "rle": {"size": [H, W], "counts": "..."}}``. The classes' masks tile the image."""
    h, w = labels.shape
    if labels.size == 0:
        return []
    starts, values, n = _label_runs(labels)
    pixels = np.bincount(values, weights=np.diff(np.append(starts, n)), minlength=len(classes)).astype(np.int64)
    out = []
    for k in np.flatnonzero(pixels):
        counts = _counts_of(values == k, starts, n)
        out.append({"id": int(k), "name": classes[k] if k < len(classes) else str(k), "pixels": int(pixels[k]),
                    "rle": {"size": [int(h), int(w)], "counts": counts_string(counts)}})
    return out
