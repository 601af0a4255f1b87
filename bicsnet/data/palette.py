"""The PASCAL VOC colour palette used for label PNGs and segmentation overlays."""
from __future__ import annotations

import functools

import numpy as np

__all__ = ["voc_palette", "voc_colormap"]


@functools.lru_cache(maxsize=None)
def _colormap() -> np.ndarray:
    # The bit-interleaving construction from the VOC devkit (VOClabelcolormap.m).
    cmap = np.zeros((256, 3), dtype=np.uint8)
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        cmap[i] = (r, g, b)
    cmap.setflags(write=False)
    return cmap


def voc_colormap() -> np.ndarray:
    """Return the VOC colour map as a read-only ``uint8`` array of shape ``256 x 3``.

    Index 0 is black (background) and 255 is the cream colour VOC uses for
    ignored pixels.
    """
    return _colormap()


def voc_palette() -> list[int]:
    """Return the VOC palette as a flat list of 768 ints for ``PIL.Image.putpalette``."""
    return _colormap().reshape(-1).tolist()
