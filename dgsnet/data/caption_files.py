"""Caption files: where they live next to a data set, and reading and writing them.

A caption file is one JSON object mapping an image path to its caption, the format of the
released DGS-Net code (HorizonTEL/DGS-Net), which reads BLIP captions precomputed per image:

```text
{"/data/AIGIBench/train/progan/car/0_real/00001.png": "a red car parked on a street", ...}
```

Keys are image paths as the writer spelled them; `CaptionStore` matches
them to the images (`dgsnet.data.caption_store`).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..errors import CaptionError
from ..io import atomic_write_json

__all__ = [
    "caption_file_candidates",
    "find_caption_file",
    "read_caption_file",
    "save_captions",
    "write_caption_json",
]


def caption_file_candidates(dataroot: str | os.PathLike[str]) -> list[Path]:
    """Where a caption file for the image folder `dataroot` (e.g. `.../AIGIBench/train`)
    may live, in the order `find_caption_file` tries them.

    1. `<parent>/<split>_text/<split>.json` (the layout of the reference description, where
       `dataroot = <parent>/<split>`)
    2. `<parent>_text/<split>.json` (what the released DGS-Net code derives from its
       `--dataroot`: `_text` appended to the parent folder)
    3. `<dataroot>/<split>_text/<split>.json` (the caption folder inside the split folder)
    """
    d = Path(os.path.abspath(dataroot))
    split = d.name
    return [
        d.parent / f"{split}_text" / f"{split}.json",
        d.parent.parent / f"{d.parent.name}_text" / f"{split}.json",
        d / f"{split}_text" / f"{split}.json",
    ]


def find_caption_file(dataroot: str | os.PathLike[str]) -> Path:
    """Return the first existing file among `caption_file_candidates`; raise
    `CaptionError` listing every path tried when there is none."""
    tried = caption_file_candidates(dataroot)
    for p in tried:
        if p.is_file():
            return p
    listing = "\n  ".join(str(p) for p in tried)
    raise CaptionError(
        f"no caption file found for {os.fspath(dataroot)}; tried:\n  {listing}\n"
        "generate one with `dgsnet caption` (dgsnet.data.generate_captions) or pass the file"
    )


def read_caption_file(path: str | os.PathLike[str]) -> dict[str, str]:
    """Read a caption JSON file: one object mapping image path -> caption string.

    Raises `CaptionError` naming the file when it is missing, not JSON (with line and
    column), not an object, or holds a non-string caption.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CaptionError(f"caption file {p} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CaptionError(f"cannot read caption file {p}: {exc}") from exc
    duplicates: list[str] = []
    try:
        data = json.loads(text, object_pairs_hook=lambda pairs: _object(pairs, duplicates))
    except json.JSONDecodeError as exc:
        raise CaptionError(
            f"caption file {p} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        ) from exc
    if not isinstance(data, dict):
        raise CaptionError(
            f"caption file {p} must hold a JSON object mapping image path -> caption, "
            f"found a JSON {type(data).__name__}"
        )
    blank: list[str] = []
    for k, v in data.items():
        if not isinstance(v, str):
            raise CaptionError(
                f"caption file {p}: the caption of {k!r} must be a string, found {type(v).__name__}"
            )
        if not _is_utf8(v):
            raise CaptionError(
                f"caption file {p}: the caption of {k!r} is not valid Unicode text (it holds a "
                f"lone surrogate: {v!r:.80}); fix or regenerate it"
            )
        if not v.strip():
            blank.append(k)
    if duplicates:
        warnings.warn(
            f"caption file {p} has {len(duplicates)} duplicate key(s) (the last caption of "
            f"each is used): {_first(duplicates)}",
            UserWarning,
            stacklevel=2,
        )
    if blank:
        warnings.warn(
            f"caption file {p} has {len(blank)} empty or whitespace-only caption(s), which "
            f"give Orthogonal Suppression no content to protect: {_first(blank)}",
            UserWarning,
            stacklevel=2,
        )
    return data


def _object(pairs: list[tuple[str, object]], duplicates: list[str]) -> dict[str, object]:
    """`json` object hook: a dict of `pairs` (the last value of a repeated key wins, as
    `json.loads` does), recording the repeated keys in `duplicates`."""
    out: dict[str, object] = {}
    for k, v in pairs:
        if k in out:
            duplicates.append(k)
        out[k] = v
    return out


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _first(keys: Sequence[str], n: int = 3) -> str:
    shown = ", ".join(repr(k) for k in keys[:n])
    return shown + (" ..." if len(keys) > n else "")


def write_caption_json(path: str | os.PathLike[str], captions: Mapping[str, str]) -> Path:
    """Write `captions` atomically as a JSON object (sorted keys, indent 1, UTF-8).

    Keys that are file names which are not valid UTF-8 (Python spells their bytes as lone
    surrogates, `os.fsdecode`) are written as `\\udcXX` escapes instead, which
    `read_caption_file` reads back as the same names.

    Raises:
        CaptionError: a caption (not a key) is not valid Unicode text.
    """
    path = Path(path)
    data = dict(captions)
    for k, v in data.items():
        if isinstance(v, str) and not _is_utf8(v):
            raise CaptionError(f"the caption of {k!r} for {path} holds a lone surrogate: {v!r:.80}")
    try:
        atomic_write_json(path, data, indent=1, ensure_ascii=False)
    except UnicodeEncodeError:  # a non-UTF-8 file name among the keys
        atomic_write_json(path, data, indent=1, ensure_ascii=True)
    return path


def save_captions(captions: Mapping[str, str], path: str | os.PathLike[str]) -> Path:
    """Write `captions` atomically as a JSON object (sorted keys, UTF-8)."""
    return write_caption_json(path, captions)
