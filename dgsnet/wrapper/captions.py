"""Where the step's captions come from when the batch brings none.

Orthogonal Suppression needs one caption per image. A codebase whose loader yields
`(img, label)` or `(img, label, path)` need not change its dataset: give the wrapper a caption
source once (`DGSWrapper(..., captions=...)`) and pass the batch's `paths=` or `index=` to
the step; `CaptionSource` looks the captions up.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import Tensor

__all__ = ["CaptionSource", "MISSING_CAPTIONS_HELP"]

MISSING_CAPTIONS_HELP = (
    "Orthogonal Suppression needs one caption per image. Pass them to the step "
    "(dgs(images, captions, labels)), or give the wrapper a caption source once and pass the "
    "batch's paths= or index=: DGSWrapper(..., captions=dgsnet.data.load_captions(FILE)) "
    "(a caption file keyed by image path; write one with `dgsnet caption`), a dict or list of "
    "captions looked up by path or dataset index, or a fixed template such as "
    "captions='a photo' (the text branch then carries no per-image content). "
    "DGSConfig(suppression=False) needs no captions at all"
)


class CaptionSource:
    """Captions for a batch, looked up by the images' paths or dataset indices.

    Args:
        source: one of
            - a string: a fixed caption for every image (a template);
            - an object with `captions_for(paths)` (e.g. `dgsnet.data.CaptionStore`, which
              matches paths robustly): looked up by `paths`;
            - a mapping: keys are image paths (strings) or dataset indices (ints);
            - a sequence of strings: the caption of dataset index `i` at position `i`;
            - a callable `fn(keys) -> list[str]`, called with the paths when the step has
              them, else with the indices as a list of ints.

    Raises:
        TypeError: `source` is none of these.
    """

    def __init__(self, source: Any) -> None:
        ok = (
            isinstance(source, (str, Mapping))
            or hasattr(source, "captions_for")
            or callable(source)
            or (isinstance(source, Sequence) and all(isinstance(c, str) for c in source))
        )
        if not ok:
            raise TypeError(
                "captions must be a caption string (a template), a CaptionStore, a dict or "
                "list of captions, or a callable keys -> captions, got "
                f"{type(source).__name__}"
            )
        self.source = source

    def __repr__(self) -> str:
        src = self.source
        what = repr(src) if isinstance(src, str) else type(src).__name__
        return f"CaptionSource({what})"

    def lookup(self, batch: int, index: Tensor | None, paths: Sequence[Any] | None) -> list[str]:
        """The captions of a batch of `batch` images.

        Args:
            batch: the number of images.
            index: their dataset indices, or `None`.
            paths: their file paths, or `None`.

        Returns:
            `batch` caption strings.

        Raises:
            ValueError: neither `paths` nor `index` where the source needs one, a count that
                does not match, or a key with no caption.
        """
        src = self.source
        if isinstance(src, str):
            return [src] * batch
        if paths is not None:
            if isinstance(paths, (str, bytes)) or len(paths) != batch:
                raise ValueError(f"paths= must list {batch} image paths, one per image")
            keys: list[Any] = [os.fspath(p) for p in paths]
        elif index is not None:
            keys = [int(i) for i in index.tolist()]
        else:
            raise ValueError(
                f"no captions arrived and the caption source {self!r} needs the batch's "
                "paths= or index= to look them up"
            )
        if hasattr(src, "captions_for"):
            out = list(src.captions_for(keys))
        elif isinstance(src, Mapping):
            out = [self._get(src, k) for k in keys]
        elif callable(src):
            out = list(src(keys))
        else:
            out = [self._at(src, k) for k in keys]
        if len(out) != batch or not all(isinstance(c, str) for c in out):
            raise ValueError(f"the caption source gave {len(out)} captions for {batch} images")
        return out

    @staticmethod
    def _get(table: Mapping[Any, str], key: Any) -> str:
        if key in table:
            return table[key]
        alt = os.path.normpath(key) if isinstance(key, str) else str(key)
        if alt in table:
            return table[alt]
        raise ValueError(
            f"no caption for {key!r} in the caption table ({len(table)} entries); for paths "
            "written on another machine use dgsnet.data.load_captions, which matches them robustly"
        )

    @staticmethod
    def _at(table: Sequence[str], key: Any) -> str:
        if not isinstance(key, int):
            raise ValueError("a caption list is looked up by index=, but the step got paths=")
        if not 0 <= key < len(table):
            raise ValueError(f"no caption for index {key}: the caption list has {len(table)}")
        return table[key]


def as_source(captions: Any) -> CaptionSource | None:
    """`captions` as a `CaptionSource` (`None` stays `None`)."""
    if captions is None or isinstance(captions, CaptionSource):
        return captions
    return CaptionSource(captions)


CaptionFn = Callable[[list[Any]], list[str]]
