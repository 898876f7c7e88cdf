"""Pieces shared by `dgsnet.data.datasets` and `dgsnet.data.captions`.

Errors, the image-file rule, and image loading that never hides a broken file and maps every
pixel format to 8-bit RGB by one stated rule. Kept in one private module so that the two
public modules do not import each other.
"""

from __future__ import annotations

import os
import threading
import warnings

import numpy as np
from PIL import Image, ImageFile

from ..errors import CaptionError, CorruptImageError, DatasetError, ImageRangeWarning

__all__ = [
    "IMAGE_EXTENSIONS",
    "DatasetError",
    "CorruptImageError",
    "CaptionError",
    "is_image_file",
    "load_image",
    "check_image",
    "truncated_images_allowed",
    "to_rgb8",
    "ImageRangeWarning",
]

#: file extensions (lower case, with the dot) that count as images; matched case-insensitively
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}
)


def is_image_file(name: str | os.PathLike[str]) -> bool:
    """True when `name` has one of `IMAGE_EXTENSIONS` (any case) and is not hidden
    (names starting with `.`, e.g. macOS `._x.png` resource forks, are not images).

    Args:
        name: a file name or path.

    Returns:
        Whether it names an image file.
    """
    base = os.path.basename(os.fspath(name))
    return not base.startswith(".") and os.path.splitext(base)[1].lower() in IMAGE_EXTENSIONS


def truncated_images_allowed() -> bool:
    """Whether `PIL.ImageFile.LOAD_TRUNCATED_IMAGES` is switched on (by anyone).

    dgsnet never switches it on; when some other code has, truncated files decode without an
    error (their missing part comes out grey), so the datasets warn about it.
    """
    return bool(ImageFile.LOAD_TRUNCATED_IMAGES)


def load_image(path: str | os.PathLike[str]) -> Image.Image:
    """Open `path`, decode it completely and return an 8-bit RGB `PIL.Image.Image`.

    Every pixel format is mapped to 8 bits per channel by a fixed rule (`docs/datasets.md`,
    "Pixel formats"): 16-bit samples keep their high byte (`v >> 8`); 32-bit integer (`I`)
    pixels are read as 16-bit data and must lie in 0..65535; float (`F`) pixels are taken as
    0..1, clipped (with a warning naming the file when any lies outside) and rounded,
    `floor(v * 255 + 0.5)`; signed-integer pixels must not be negative; alpha is dropped. An
    image that cannot be mapped without guessing is refused, never loaded with wrong pixels.

    The file is closed on return. Any problem (missing file, not an image, truncated data,
    decompression bomb, a pixel format outside the rule) raises `CorruptImageError`
    naming the file, with the original exception chained. PIL's decompression-bomb warning is
    re-issued with the file's name in front.

    Args:
        path: the image file.

    Returns:
        The image, 8-bit RGB.

    Raises:
        CorruptImageError: the file cannot be decoded or mapped to 8-bit RGB.
    """
    try:
        with _open(path) as im:
            im.load()  # full decode: a truncated file raises here (LOAD_TRUNCATED_IMAGES off)
            return to_rgb8(im, path)
    except CorruptImageError:
        raise
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, bomb errors...
        raise CorruptImageError(path, f"{type(exc).__name__}: {exc}") from exc


def check_image(path: str | os.PathLike[str]) -> str | None:
    """Return `None` when `load_image` would succeed on `path`, else a one-line reason.

    Runs PIL's structural `verify()` (chunk CRCs for PNG) and then `load_image` itself
    (full decode and the 8-bit mapping), so a damaged file, a truncated file and a pixel format
    that `load_image` refuses are all reported, and nothing this passes fails to load.

    Args:
        path: the image file.

    Returns:
        `None`, or why the file cannot be loaded.
    """
    try:
        with _open(path) as im:
            im.verify()
        load_image(path)
    except CorruptImageError as exc:
        return exc.reason
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


#: serialises the short header parse in `_open` (`warnings.catch_warnings` swaps
#: process-wide state, and `DetectionFolder.verify` opens files from several threads)
_OPEN_LOCK = threading.Lock()


def _open(path: str | os.PathLike[str]) -> Image.Image:
    """`Image.open(path)`, with PIL's `DecompressionBombWarning` re-issued naming the file.

    PIL emits the warning from inside `Image.open` without the file name (and, under the
    default filter, only once per process). The warning filters in force still apply: with an
    `"error"` filter PIL's warning raises here (and `load_image` turns it into a
    `CorruptImageError` naming the file); other warnings caught meanwhile are passed on.
    """
    with _OPEN_LOCK, warnings.catch_warnings(record=True) as caught:
        im = Image.open(path)
    for w in caught:
        if issubclass(w.category, Image.DecompressionBombWarning):
            warnings.warn(
                Image.DecompressionBombWarning(f"image {os.fspath(path)}: {w.message}"),
                stacklevel=3,
            )
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
    return im


#: modes with 8-bit channels that PIL converts to RGB itself (alpha dropped, CMYK, YCbCr, LAB
#: and HSV converted, palette looked up, `1` as 0/255)
_PIL_CONVERTED = frozenset(
    {"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr", "LAB", "HSV"}
)
_SIXTEEN_BIT = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})


def _signed_samples(im: Image.Image) -> bool:
    """True for a TIFF whose SampleFormat tag (339) says signed integers."""
    tags = getattr(im, "tag_v2", None)
    if tags is None:
        return False
    fmt = tags.get(339)
    return bool(fmt) and 2 in (fmt if isinstance(fmt, tuple) else (fmt,))


def _grey_to_rgb(a: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(a, dtype=np.uint8), "L").convert("RGB")


def to_rgb8(im: Image.Image, path: str | os.PathLike[str] = "<image>") -> Image.Image:
    """Map a decoded image of any PIL mode to 8-bit RGB by the rule of `load_image`.

    `path` only names the image in errors and warnings.

    Args:
        im: the decoded image.
        path: the image's name in messages.

    Returns:
        The image, 8-bit RGB.

    Raises:
        CorruptImageError: the mode has no rule, or the pixels lie outside the rule's range
            (negative signed integers, `I` values above 65535, NaN/Inf floats).
    """
    mode = im.mode
    if mode in _SIXTEEN_BIT:  # any byte order; numpy reads it as unsigned 16-bit
        return _grey_to_rgb(np.asarray(im).astype(np.uint16) >> 8)
    if mode == "I":  # int32: PIL's mode for 16-bit signed and 32-bit integer TIFFs
        a = np.asarray(im).astype(np.int64)
        lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
        if lo < 0 or hi > 65535:
            raise CorruptImageError(
                path,
                f"32-bit integer pixels (mode I) are read as 16-bit data in 0..65535, but this "
                f"image holds values {lo}..{hi} (a negative value may also be an unsigned 32-bit "
                "value above 2**31); convert it to 8- or 16-bit first",
            )
        return _grey_to_rgb(a >> 8)
    if mode == "F":
        a = np.asarray(im).astype(np.float64)
        finite = np.isfinite(a)
        if not finite.all():
            raise CorruptImageError(
                path, f"float pixels (mode F) hold {int((~finite).sum())} NaN/Inf value(s)"
            )
        if a.size and (a.min() < 0.0 or a.max() > 1.0):
            warnings.warn(
                ImageRangeWarning(
                    f"image {os.fspath(path)}: float pixels are read as 0..1 but range over "
                    f"{a.min():.6g}..{a.max():.6g}; values outside 0..1 were clipped"
                ),
                stacklevel=3,
            )
        return _grey_to_rgb(np.floor(np.clip(a, 0.0, 1.0) * 255.0 + 0.5))
    if mode == "L" and _signed_samples(im):  # 8-bit signed TIFF: PIL keeps the raw bytes
        a = np.asarray(im).view(np.int8)
        if a.size and int(a.min()) < 0:
            raise CorruptImageError(
                path, f"signed 8-bit pixels hold negative values (min {int(a.min())})"
            )
        return _grey_to_rgb(a)
    if mode == "La":
        im = im.convert("LA")  # PIL converts premultiplied La only to LA
    elif mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")  # what PIL asks for palette transparency given as bytes
    elif mode not in _PIL_CONVERTED:
        raise CorruptImageError(path, f"pixel mode {mode!r} has no 8-bit RGB rule")
    return im.convert("RGB")
