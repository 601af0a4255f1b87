"""Reading images from disk into float RGB tensors.

Every dataset goes through :func:`load_image`, so all of them accept the same
file types and report unreadable files the same way (a one-line
:class:`~bicsnet.errors.DataError` naming the file).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from bicsnet.errors import DataError

__all__ = ["load_image", "load_pil_image", "IMAGE_EXTENSIONS"]

#: File suffixes treated as images when scanning folders.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")

# Modes whose pixels do not fit in 8 bits; PIL's convert("RGB") would clip them.
_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def _open(path: Path) -> Image.Image:
    """Open and fully decode ``path``, turning every failure into a DataError."""
    try:
        if path.stat().st_size == 0:
            raise DataError(f"{path}: image file is empty (0 bytes)")
        with Image.open(path) as im:
            im.load()  # force decoding now so truncation is caught here
            # exif_transpose returns a copy, detached from the file handle.
            return ImageOps.exif_transpose(im)
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except UnidentifiedImageError:
        raise DataError(f"{path}: not a recognised image file") from None
    except Image.DecompressionBombError as e:
        # Larger than 2 x PIL.Image.MAX_IMAGE_PIXELS: refused before decoding (memory exhaustion guard).
        raise DataError(f"{path}: image too large to decode safely ({e}); raise PIL.Image.MAX_IMAGE_PIXELS if it is trusted") from None
    except (OSError, SyntaxError, ValueError) as e:
        # PIL raises OSError for truncated/corrupt data and SyntaxError/ValueError
        # from some decoders' header parsing.
        raise DataError(f"{path}: cannot decode image ({e})") from None


def load_pil_image(path: str | os.PathLike) -> Image.Image:
    """Load ``path`` as an 8-bit RGB PIL image with EXIF orientation applied.

    Wide (16-bit / integer / float) grayscale images are rescaled to 8 bits.
    Raises :class:`DataError` naming the file if it is missing, empty,
    truncated or not an image.
    """
    path = Path(path)
    im = _open(path)
    if im.mode in _WIDE_MODES:
        arr = (_wide_to_float(im) * 255.0 + 0.5).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    return _to_rgb(im, path)


def load_image(path: str | os.PathLike) -> torch.Tensor:
    """Load ``path`` as a float32 tensor of shape ``3 x H x W`` with values in [0, 1].

    Handles grayscale, palette, RGBA/LA (alpha dropped), CMYK, YCbCr and 16-bit
    images and applies the EXIF orientation tag. Raises :class:`DataError`
    naming the file if it is missing, empty, truncated or not an image.
    """
    path = Path(path)
    im = _open(path)
    if im.mode in _WIDE_MODES:
        # Keep the full precision of 16-bit data instead of going through uint8.
        gray = torch.from_numpy(_wide_to_float(im))
        return gray.unsqueeze(0).expand(3, -1, -1).contiguous()
    arr = np.asarray(_to_rgb(im, path), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


def _to_rgb(im: Image.Image, path: Path) -> Image.Image:
    """Convert any 8-bit PIL mode to RGB."""
    if im.mode == "RGB":
        return im
    try:
        if im.mode == "P":
            # Going through RGBA avoids PIL's warning about palette transparency.
            im = im.convert("RGBA")
        return im.convert("RGB")
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot convert image mode {im.mode!r} to RGB ({e})") from None


def _wide_to_float(im: Image.Image) -> np.ndarray:
    """Map a wide single-channel image to float32 in [0, 1]."""
    arr = np.asarray(im).astype(np.float32)
    if im.mode == "F":
        # Float images have no fixed range: treat as [0, 1] unless clearly 8-bit.
        scale = 1.0 if arr.size == 0 or float(arr.max()) <= 1.0 else 255.0
    else:
        # 'I' (32-bit int) is what PIL uses for many 16-bit PNGs: assume 16 bits.
        scale = 65535.0
    return np.clip(arr / scale, 0.0, 1.0)
