"""Reading images from disk: uint8 RGB tensors for the data pipeline, float32 [0, 1] for callers.

Every dataset goes through :func:`read_image` and everything else (prediction)
through :func:`load_image`, so all of them accept the same file types and report
unreadable files the same way (a one-line :class:`~bicsnet.errors.DataError`
naming the file).

Images stay uint8 through decoding and augmentation and become float only at
the end (torchvision's advice for transforms v2: uint8 resizing and cropping
are cheaper than float, and no float copy of the full-size decoded image is
made). Two decoders, chosen by ``decode``:

* ``"torchvision"`` (the default): 8-bit RGB / grayscale JPEGs and WebPs
  without an EXIF rotation are decoded by :func:`torchvision.io.decode_image`
  (libjpeg-turbo / libwebp; about twice PIL's speed on 640 px JPEGs, see
  ``benchmarks/dataloader.md``); EXIF orientation of JPEGs is applied by
  torchvision (``apply_exif_orientation``). Everything else goes to PIL, as
  does any file torchvision refuses:

  - PNG: torchvision 0.29's ``decode_png`` crashes the process (segmentation
    fault) on a PNG whose compressed data is corrupt, where PIL raises an error
    we can report; PIL also keeps the 16-bit and palette handling below;
  - CMYK / YCCK JPEGs (PIL's conversion, Adobe inversion included);
  - WebPs with an EXIF orientation (torchvision applies it only to JPEG / PNG);
  - GIF (torchvision returns every frame of an animation), BMP, TIFF, PPM, ...

  Its output equals PIL's pixel for pixel on every JPEG and WebP we compared
  (both link libjpeg-turbo; ``tests/test_image_pipeline.py`` checks it).
* ``"pil"``: PIL for everything (what this module did before torchvision
  decoded anything; kept for comparisons and as the fallback).

torchvision deprecated its decoders in 0.29 in favour of TorchCodec; the
deprecation warning is silenced here, and if a later torchvision drops them,
:func:`read_image` falls back to PIL for every file.
"""
from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from bicsnet.errors import ConfigError, DataError

try:  # torchvision's decoders are deprecated since 0.29 (superseded by TorchCodec); PIL stands in without them
    from torchvision.io import ImageReadMode, decode_image
except ImportError:  # pragma: no cover - a torchvision without image decoding
    decode_image = None

__all__ = ["load_image", "load_pil_image", "read_image", "to_float_image", "check_decoder", "Decoder", "DECODERS",
           "DEFAULT_DECODER", "IMAGE_EXTENSIONS"]

#: File suffixes treated as images when scanning folders.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")

#: The image decoders :func:`read_image` knows (see the module docstring).
Decoder = Literal["torchvision", "pil"]
DECODERS: tuple[str, ...] = ("torchvision", "pil")
#: The decoder datasets use unless told otherwise.
DEFAULT_DECODER: Decoder = "torchvision"

# Modes whose pixels do not fit in 8 bits; PIL's convert("RGB") would clip them.
_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
# What torchvision decodes (PIL's format and mode, read from the header): see the module docstring.
_TORCHVISION_MODES = {"JPEG": ("RGB", "L"), "WEBP": ("RGB", "RGBA")}
_EXIF_ORIENTATION = 0x0112


def check_decoder(decode: str) -> Decoder:
    """``decode`` if it names a decoder of :data:`DECODERS`; raises :class:`ConfigError` otherwise."""
    if decode not in DECODERS:
        raise ConfigError(f"decode={decode!r}: must be one of {', '.join(DECODERS)}")
    return decode  # type: ignore[return-value]


def _torchvision_reads(im: Image.Image) -> bool:
    """Whether torchvision decodes ``im`` (opened, not loaded) exactly as the PIL path would."""
    if decode_image is None or im.mode not in _TORCHVISION_MODES.get(im.format or "", ()):
        return False
    # torchvision applies EXIF orientation only to JPEG and PNG; WebP's header is parsed on open, so this is cheap.
    return im.format != "WEBP" or im.getexif().get(_EXIF_ORIENTATION, 1) == 1


def _decode_torchvision(data: bytearray) -> torch.Tensor | None:
    """``data`` decoded by torchvision as uint8 ``3 x H x W`` RGB, EXIF orientation applied; ``None`` if it refuses."""
    with warnings.catch_warnings():
        # torchvision 0.29 warns on every call that its decoders are deprecated (TorchCodec supersedes them).
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            image = decode_image(torch.frombuffer(data, dtype=torch.uint8), mode=ImageReadMode.RGB, apply_exif_orientation=True)
        except RuntimeError:
            return None  # PIL decodes it, or reports why it cannot
    return image if image.dtype == torch.uint8 and image.ndim == 3 and image.shape[0] == 3 else None


def _decode(path: Path, decode: Decoder) -> torch.Tensor | Image.Image:
    """Read and fully decode ``path``: a uint8 tensor from torchvision, or a PIL image (EXIF orientation applied).

    Every failure becomes a DataError naming the file.
    """
    try:
        with open(path, "rb") as f:
            data = bytearray(f.read())  # writable: torch.frombuffer shares it without a warning
        if not data:
            raise DataError(f"{path}: image file is empty (0 bytes)")
        # Opening reads only the header: format, mode and size (PIL's decompression-bomb check runs here).
        with Image.open(io.BytesIO(data)) as im:
            if decode == "torchvision" and _torchvision_reads(im):
                image = _decode_torchvision(data)
                if image is not None:
                    return image
            im.load()  # force decoding now so truncation is caught here
            # exif_transpose returns a copy, detached from the buffer.
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


def read_image(path: str | os.PathLike, decode: Decoder = DEFAULT_DECODER) -> torch.Tensor:
    """Load ``path`` as a ``3 x H x W`` RGB tensor for the data pipeline: **uint8** in [0, 255].

    The exception is wide grayscale (16-bit / 32-bit integer / float) images:
    they come back float32 in [0, 1], keeping their full precision (the
    transforms accept both; :func:`to_float_image` ends every pipeline).
    Grayscale, palette, RGBA/LA (alpha dropped), CMYK and YCbCr images become
    RGB, and the EXIF orientation tag is applied. ``decode`` picks the decoder
    (module docstring); both give the same pixels on the files we compared.

    Raises:
        DataError: naming the file, if it is missing, empty, truncated, too
            large (PIL's decompression-bomb limit) or not an image.
        ConfigError: ``decode`` is not one of :data:`DECODERS`.
    """
    check_decoder(decode)
    path = Path(path)
    im = _decode(path, decode)
    if isinstance(im, torch.Tensor):
        return im
    if im.mode in _WIDE_MODES:
        # Keep the full precision of 16-bit data instead of going through uint8.
        gray = torch.from_numpy(_wide_to_float(im))
        return gray.unsqueeze(0).expand(3, -1, -1).contiguous()
    arr = np.array(_to_rgb(im, path), dtype=np.uint8)  # a writable copy: torch shares it
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def to_float_image(image: torch.Tensor) -> torch.Tensor:
    """A uint8 image (``[..., H, W]``, values 0-255) as float32 in [0, 1], computed as ``x / 255``.

    Float images are returned as float32 unchanged. ``x / 255`` is what
    :func:`load_image` has always returned; torchvision's ``to_dtype(...,
    scale=True)`` multiplies by ``1 / 255`` instead, one float32 ulp away for
    126 of the 256 values. The result is contiguous (``C, H, W`` in memory):
    torchvision's JPEG decoder returns ``H, W, C`` memory seen as ``C, H, W``,
    which the uint8 transforms keep, and on that layout every later per-image
    operation (the detectors' normalisation, padding into a batch) runs several
    times slower (``benchmarks/demo.md``).

    Raises:
        TypeError: an integer dtype other than uint8.
    """
    if image.dtype == torch.uint8:  # one copy, converted and laid out together
        return image.to(torch.float32, memory_format=torch.contiguous_format).div_(255.0)
    if image.is_floating_point():  # .to() returns a float32 input itself, whatever its layout
        return image.to(torch.float32).contiguous()
    raise TypeError(f"expected a uint8 or floating-point image, got {image.dtype}")


def load_pil_image(path: str | os.PathLike) -> Image.Image:
    """Load ``path`` as an 8-bit RGB PIL image with EXIF orientation applied.

    Wide (16-bit / integer / float) grayscale images are rescaled to 8 bits.
    Raises :class:`DataError` naming the file if it is missing, empty,
    truncated or not an image.
    """
    path = Path(path)
    im = _decode(path, "pil")
    if im.mode in _WIDE_MODES:
        arr = (_wide_to_float(im) * 255.0 + 0.5).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    return _to_rgb(im, path)


def load_image(path: str | os.PathLike, decode: Decoder = DEFAULT_DECODER) -> torch.Tensor:
    """Load ``path`` as a float32 tensor of shape ``3 x H x W`` with values in [0, 1].

    :func:`read_image` followed by :func:`to_float_image`: the same file types,
    conversions, EXIF handling and errors; 16-bit images keep their precision.

    Raises:
        DataError: naming the file, if it is missing, empty, truncated or not an image.
        ConfigError: ``decode`` is not one of :data:`DECODERS`.
    """
    return to_float_image(read_image(path, decode))


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
