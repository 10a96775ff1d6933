"""Item images: decode any file or byte string into an RGB PIL image, or fail with a named reason.

Grounding runs over tens of thousands of scraped images; a few are always broken. :func:`load_image`
turns every way an image can be broken into one :class:`ImageLoadError` whose ``kind`` can be counted,
and every odd-but-valid mode (alpha, palette, greyscale, CMYK, 16-bit) into plain 8-bit RGB, so that
grounders only ever see ``RGB`` images.
"""
from __future__ import annotations

import hashlib
import io
import os
import stat
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

#: Largest accepted image, in pixels (about 8000 x 8000). Larger files are refused before decoding:
#: a tiny compressed file can declare billions of pixels (a "decompression bomb").
MAX_PIXELS = 64_000_000

#: Background that transparent pixels are composited onto.
BACKGROUND = (255, 255, 255)

ImageSource = str | Path | bytes


class ImageLoadError(ValueError):
    """An image cannot be used. ``kind`` is a short countable category, ``reason`` the details.

    Kinds: ``missing_file``, ``not_a_regular_file``, ``unreadable``, ``empty``, ``not_an_image``,
    ``truncated``, ``decompression_bomb``, ``unsupported_mode``. Reasons name the file and its size, never
    its content (a path may point anywhere, e.g. through a symlink to a system file).
    """

    def __init__(self, kind: str, reason: str):
        super().__init__(f"{kind}: {reason}")
        self.kind, self.reason = kind, reason


def file_kind(mode: int) -> str:
    """What an ``os.stat`` mode says a path is, in words (``regular file``, ``named pipe (FIFO)`` ...)."""
    kinds = ((stat.S_ISREG, "regular file"), (stat.S_ISDIR, "directory"), (stat.S_ISFIFO, "named pipe (FIFO)"),
             (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"))
    return next((name for test, name in kinds if test(mode)), "special file")


def read_image_bytes(source: ImageSource) -> bytes:
    """The raw bytes of an image given as a path or as bytes.

    A path must be a regular file (symlinks followed); anything else is refused from its ``os.stat`` mode
    before it is opened, because opening a named pipe blocks and a device never ends. Errors:
    ``missing_file``, ``not_a_regular_file``, ``unreadable``.
    """
    if isinstance(source, bytes):
        return source
    path = Path(source)
    try:
        mode = os.stat(path).st_mode
        if not stat.S_ISREG(mode):
            raise ImageLoadError("not_a_regular_file", f"{path} is a {file_kind(mode)}, not a regular file")
        return path.read_bytes()
    except FileNotFoundError:
        raise ImageLoadError("missing_file", f"no such file: {path}") from None
    except OSError as err:
        raise ImageLoadError("unreadable", f"cannot read {path}: {err.strerror or err}") from None


def image_sha256(source: ImageSource) -> str:
    """Hex sha256 of the image's bytes (the content key of the description cache)."""
    return hashlib.sha256(read_image_bytes(source)).hexdigest()


def load_image(source: ImageSource, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode ``source`` (path or bytes) into an 8-bit RGB image with EXIF orientation applied.

    Raises :class:`ImageLoadError` for a missing or unreadable file, zero bytes, bytes that are not an
    image, a truncated file, or an image above ``max_pixels`` (checked from the header, before decoding).
    """
    data = read_image_bytes(source)
    if not data:
        raise ImageLoadError("empty", "zero bytes")
    image = _decode(data, max_pixels)
    return to_rgb(ImageOps.exif_transpose(image))


def _decode(data: bytes, max_pixels: int) -> Image.Image:
    """Open and fully decode ``data``; PIL's bomb warning is an error here, not a log line."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        image = None
        try:
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise ImageLoadError("decompression_bomb",
                                     f"{width}x{height} = {width * height:,} pixels > limit {max_pixels:,}")
            image.load()
        except ImageLoadError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise ImageLoadError("decompression_bomb", str(err)) from None
        except UnidentifiedImageError:
            raise ImageLoadError("not_an_image", f"{len(data):,} bytes in no image format PIL reads") from None
        except (OSError, SyntaxError, ValueError, EOFError) as err:
            raise ImageLoadError("truncated", f"{_format_of(image)} data ends early or is corrupt: {err}") from None
    return image


def _format_of(image: Image.Image | None) -> str:
    return getattr(image, "format", None) or "image"


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB from any PIL mode: transparency composited on white, 16/32-bit greyscale rescaled."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        return _high_bit_depth_grey_to_rgb(image)
    if (image.mode == "P" and "transparency" in image.info) or image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    try:
        return image.convert("RGB")
    except ValueError as err:
        raise ImageLoadError("unsupported_mode", f"cannot convert mode {image.mode} to RGB: {err}") from None


def _high_bit_depth_grey_to_rgb(image: Image.Image) -> Image.Image:
    """16-bit greyscale (and PNG's 16-bit data decoded as mode ``I``) scaled to 0..255, not clipped.

    PIL's own ``convert("RGB")`` clips values above 255, which turns most 16-bit images white.
    """
    values = np.asarray(image, dtype=np.int64)
    if image.mode == "I" and values.max(initial=0) > 65535:
        raise ImageLoadError("unsupported_mode", "32-bit greyscale values exceed the 16-bit range")
    grey = (np.clip(values, 0, 65535) * 255 + 32767) // 65535
    return Image.fromarray(grey.astype(np.uint8)).convert("RGB")
