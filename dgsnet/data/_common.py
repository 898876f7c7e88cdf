"""Pieces shared by :mod:`dgsnet.data.datasets` and :mod:`dgsnet.data.captions`.

Errors, the image-file rule, image loading that never hides a broken file, and an atomic JSON
writer. Kept in one private module so that the two public modules do not import each other.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from PIL import Image, ImageFile

__all__ = [
    "IMAGE_EXTENSIONS",
    "DatasetError",
    "CorruptImageError",
    "CaptionError",
    "is_image_file",
    "load_image",
    "check_image",
    "truncated_images_allowed",
    "atomic_write_json",
]

#: file extensions (lower case, with the dot) that count as images; matched case-insensitively
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}
)


class DatasetError(ValueError):
    """A dataset folder, an image file or a caption file is not what was expected.

    The message always names the folder or file concerned and what was expected there.
    """


class CorruptImageError(DatasetError):
    """An image file cannot be decoded (unreadable, truncated, not an image).

    ``path`` holds the file, ``reason`` what the decoder said.
    """

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"cannot read image {self.path}: {reason}")

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        # survive pickling across DataLoader worker processes with path and reason intact
        return (type(self), (self.path, self.reason))


class CaptionError(DatasetError):
    """Captions are missing for some images, ambiguous, or a caption file is malformed.

    ``missing`` lists the image paths that have no caption (possibly empty).
    """

    def __init__(self, message: str, missing: list[str] | None = None) -> None:
        self.missing = list(missing or [])
        super().__init__(message)


def is_image_file(name: str | os.PathLike[str]) -> bool:
    """True when ``name`` has one of :data:`IMAGE_EXTENSIONS` (any case) and is not hidden
    (names starting with ``.``, e.g. macOS ``._x.png`` resource forks, are not images)."""
    base = os.path.basename(os.fspath(name))
    return not base.startswith(".") and os.path.splitext(base)[1].lower() in IMAGE_EXTENSIONS


def truncated_images_allowed() -> bool:
    """Whether ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` is switched on (by anyone).

    dgsnet never switches it on; when some other code has, truncated files decode without an
    error (their missing part comes out grey), so the datasets warn about it.
    """
    return bool(ImageFile.LOAD_TRUNCATED_IMAGES)


def load_image(path: str | os.PathLike[str]) -> Image.Image:
    """Open ``path``, decode it completely and return an RGB :class:`PIL.Image.Image`.

    The file is closed on return. Any decoding problem (missing file, not an image, truncated
    data, decompression bomb) raises :class:`CorruptImageError` naming the file, with the
    original exception chained.
    """
    try:
        with Image.open(path) as im:
            im.load()  # full decode: a truncated file raises here (LOAD_TRUNCATED_IMAGES off)
            if im.mode == "P" and "transparency" in im.info:
                im = im.convert("RGBA")
            return im.convert("RGB")
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, bomb errors...
        raise CorruptImageError(path, f"{type(exc).__name__}: {exc}") from exc


def check_image(path: str | os.PathLike[str]) -> str | None:
    """Return ``None`` when ``path`` decodes cleanly, else a one-line reason.

    Runs PIL's structural ``verify()`` (chunk CRCs for PNG) and then a full decode, so both a
    damaged and a truncated file are reported.
    """
    try:
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            im.load()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def atomic_write_json(obj: Any, path: str | os.PathLike[str]) -> Path:
    """Write ``obj`` as JSON to ``path`` so that ``path`` is always either the old complete file
    or the new complete file, never a partial one.

    The JSON goes to a temporary file in the same folder, is flushed and ``fsync``-ed, then
    renamed over ``path`` with :func:`os.replace` (atomic on POSIX and Windows), and the folder
    is ``fsync``-ed (:func:`dgsnet.io.atomic_write_text`). The file keeps the permission bits of
    the file it replaces (the umask's default for a new one).
    """
    from ..io import atomic_write_text

    path = Path(path)
    atomic_write_text(path, json.dumps(obj, ensure_ascii=False, indent=1, sort_keys=True) + "\n")
    return path
