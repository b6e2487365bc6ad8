"""Class tables shared by the data and conversion code, with no dependencies: PASCAL VOC's names and colours."""

from __future__ import annotations

__all__ = ["VOC_CLASSES", "voc_palette"]

# PASCAL VOC's 20 classes and background, in label order (the reference caffemodels' 21 outputs).
VOC_CLASSES = [
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
]


def voc_palette(n: int = 256) -> list[tuple[int, int, int]]:
    """The VOC devkit's colour map (``labelcolormap.m``): the bits of index ``i`` spread over R, G, B."""
    palette = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= (c & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette.append((r, g, b))
    return palette
