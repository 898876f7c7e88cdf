"""The caption store: captions by image path, matched robustly, with label-free fallbacks.

DGS-Net's text branch encodes one caption per training image with the frozen CLIP text
encoder. Caption files (`dgsnet.data.caption_files`) key captions by image path as the
writer spelled them: usually absolute paths on the machine that wrote the file, sometimes
paths relative to the dataset root. `CaptionStore` finds the caption of an image by
exact key, by absolute path, by path relative to `root`, and finally by the longest unique
path suffix, so a file written on another machine still matches.

Examples:
    >>> store = CaptionStore({"/old/disk/train/progan/car/0_real/1.png": "a car"})
    >>> store.get("/new/place/train/progan/car/0_real/1.png")
    'a car'

An image without a caption raises, or gets a template caption (`class_name_caption`)
when a `fallback` is set; see `docs/captions.md` for the policy.
"""

from __future__ import annotations

import os
import posixpath
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path

from ..errors import CaptionError, CaptionFallbackWarning
from .caption_files import find_caption_file, read_caption_file

__all__ = [
    "CATEGORY_TEMPLATE",
    "NEUTRAL_CAPTION",
    "CaptionFallbackWarning",
    "CaptionStore",
    "FallbackSpec",
    "class_name_caption",
    "load_captions",
]

NEUTRAL_CAPTION = "a photo of an object"
"""Fallback caption when nothing is known about an image's content."""
CATEGORY_TEMPLATE = "a photo of {article} {category}"
"""Fallback template when the image's object category is known (ProGAN-style category folders)."""

LABEL_TEMPLATE_FIELDS = ("{class_name", "{label")
_CLASS_NAMES = {0: "real", 1: "fake"}
MAX_LISTED = 5


# --------------------------------------------------------------------------------------------
# fallback captions


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def class_name_caption(
    label: int | None = None,
    template: str | None = None,
    *,
    category: str | None = None,
) -> str:
    """A template caption for an image that has no generated caption.

    By default the caption does **not** depend on `label`: it is
    `"a photo of {article} {category}"` when the object category is known (ProGAN-style
    `<subset>/<category>/{0_real,1_fake}` folders, e.g. `"a photo of a car"`) and
    `NEUTRAL_CAPTION` (`"a photo of an object"`) otherwise.

    Why not `"a photo of a fake image"`: in DGS-Net the text branch exists to expose the
    *semantic* content of an image, whose gradient direction Orthogonal Suppression removes
    from the image branch's update. A caption that states the label turns the text head into a
    label oracle: its loss collapses within a few steps and the "harmful" direction it defines
    is the text embedding of the words "real"/"fake", i.e. the label concept itself, so the
    surgery would suppress the very signal the detector must learn instead of content
    shortcuts. `label` is only used by templates that ask for it explicitly through the
    `{class_name}` (`real`/`fake`) or `{label}` (`0`/`1`) fields, which warn.

    Template fields: `{category}` (underscores become spaces), `{article}` (`a`/`an`
    for the category), `{class_name}`, `{label}`. A template that needs `{category}` when
    none is known gives `NEUTRAL_CAPTION`.

    Examples:
        >>> class_name_caption(1, category="airplane")
        'a photo of an airplane'
        >>> class_name_caption(0)
        'a photo of an object'
    """
    cat = category.replace("_", " ").strip() if category else None
    if template is None:
        template = CATEGORY_TEMPLATE if cat else NEUTRAL_CAPTION
    if any(f in template for f in LABEL_TEMPLATE_FIELDS):
        warnings.warn(
            f"caption template {template!r} states the label: the text branch becomes a label "
            "oracle and Orthogonal Suppression then removes the label direction itself",
            CaptionFallbackWarning,
            stacklevel=2,
        )
        if label is None:
            raise ValueError(f"caption template {template!r} needs a label, got label=None")
    if "{category" in template or "{article" in template:
        if not cat:
            return NEUTRAL_CAPTION
    fields = {
        "category": cat or "",
        "article": _article(cat) if cat else "a",
        "class_name": _CLASS_NAMES.get(int(label), str(label)) if label is not None else "",
        "label": label if label is not None else "",
    }
    try:
        return template.format(**fields)
    except (KeyError, IndexError) as exc:
        raise ValueError(
            f"caption template {template!r} uses an unknown field {exc}; known fields: "
            "category, article, class_name, label"
        ) from None


FallbackSpec = bool | str | Callable[[str, str | None], str] | None


class _TemplateFallback:
    """Picklable fallback (DataLoader workers may be spawned): a label-free template."""

    def __init__(self, template: str | None) -> None:
        self.template = template

    def __call__(self, path: str, category: str | None) -> str:
        return class_name_caption(None, self.template, category=category)

    def __repr__(self) -> str:
        return f"template {self.template!r}" if self.template else "neutral template"


def _make_fallback(spec: FallbackSpec) -> Callable[[str, str | None], str] | None:
    if spec is None or spec is False:
        return None
    if spec is True:
        return _TemplateFallback(None)
    if isinstance(spec, str):
        if any(f in spec for f in LABEL_TEMPLATE_FIELDS):
            raise ValueError(
                f"fallback template {spec!r} states the label, which would make the text branch "
                "a label oracle; pass a callable (path, category) -> str if you really want this"
            )
        return _TemplateFallback(spec)
    if callable(spec):
        return spec
    raise TypeError(
        "fallback must be None/False (raise on a missing caption), True (neutral template), a "
        f"template string or a callable (path, category) -> str, got {type(spec).__name__}"
    )


# --------------------------------------------------------------------------------------------
# path handling


def _norm(path: str) -> str:
    """Normalise a path string for comparison: `/` separators, no `.`/`..`/`//`."""
    s = path.replace("\\", "/")
    s = posixpath.normpath(s) if s else s
    return s


def _components(path: str) -> tuple[str, ...]:
    return tuple(c for c in _norm(path).split("/") if c and c != ".")


def _common_suffix(a: tuple[str, ...], b: tuple[str, ...]) -> int:
    n = 0
    for x, y in zip(reversed(a), reversed(b), strict=False):
        if x != y:
            break
        n += 1
    return n


# --------------------------------------------------------------------------------------------
# the store


class CaptionStore:
    """Captions keyed by image path, looked up robustly.

    `get(path)` resolves `path` against the keys in this order and returns the first hit:

    1. the key spelled exactly like `path`;
    2. the same file after normalising both sides (`/` separators, `.`/`..` removed),
       comparing absolute paths; relative keys are taken relative to `root` when given;
    3. `path` relative to `root`, compared with relative keys;
    4. with `suffix_match=True` (default): the key sharing the longest trailing run of path
       components with `path` (a file written on another machine). When `path` lies under
       `root` the shared run must cover *all* of `path` relative to `root` (its identity
       in the data set: `progan/car/0_real/001.png` never matches
       `biggan/0_real/001.png`); otherwise it must be at least `min_suffix` components
       (default 3, e.g. `<subset>/0_real/001.png`), a heuristic: pass `root`. Two keys
       that match equally well raise `CaptionError`.

    Missing captions raise `CaptionError` unless `fallback` is set: `True` for
    `class_name_caption` (neutral or category template), a template string, or a
    callable `(path, category) -> str`. Every fallback use is announced with a
    `CaptionFallbackWarning`.

    Examples:
        >>> s = CaptionStore({"progan/car/0_real/1.png": "a car"}, root="/data/train")
        >>> s.get("/data/train/progan/car/0_real/1.png")
        'a car'
    """

    def __init__(
        self,
        captions: Mapping[str, str],
        root: str | os.PathLike[str] | None = None,
        *,
        fallback: FallbackSpec = None,
        suffix_match: bool = True,
        min_suffix: int = 3,
        source: str | os.PathLike[str] | None = None,
    ) -> None:
        if not isinstance(captions, Mapping):
            raise TypeError(
                f"captions must be a mapping image path -> caption, got {type(captions).__name__}"
            )
        if min_suffix < 1:
            raise ValueError(f"min_suffix must be >= 1, got {min_suffix}")
        self._raw: dict[str, str] = {}
        for k, v in captions.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise TypeError(
                    f"captions must map str -> str, got {type(k).__name__} -> {type(v).__name__}"
                )
            self._raw[k] = v
        self.root = _norm(os.path.abspath(root)) if root is not None else None
        """The dataset root relative keys are joined to (normalised, absolute), or `None`."""
        self.source = os.fspath(source) if source is not None else None
        """Where the captions came from (a file path), for error messages; `None` when built in
        memory."""
        self.suffix_match = suffix_match
        """Whether a path may match a key by its longest trailing run of path components (see
        `get`)."""
        self.min_suffix = int(min_suffix)
        """Without a root, the fewest trailing components a suffix match must share."""
        self._fallback_spec = fallback
        self._fallback = _make_fallback(fallback)
        self._warned = False
        self._norm_index: dict[str, str] = {}
        self._by_name: dict[str, list[tuple[tuple[str, ...], str]]] = {}
        for key in self._raw:
            n = _norm(key)
            self._norm_index.setdefault(n, key)
            if self.root is not None and not posixpath.isabs(n) and not _is_windows_abs(n):
                self._norm_index.setdefault(_norm(posixpath.join(self.root, n)), key)
            comps = _components(key)
            if comps:
                self._by_name.setdefault(comps[-1], []).append((comps, key))

    def with_root(self, root: str | os.PathLike[str]) -> CaptionStore:
        """The same captions and options, resolving against `root` (the datasets use this to
        give a root-less store their own root, which makes suffix matches exact)."""
        return CaptionStore(
            self._raw,
            root,
            fallback=self._fallback_spec,
            suffix_match=self.suffix_match,
            min_suffix=self.min_suffix,
            source=self.source,
        )

    # -- mapping-like -------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._raw)

    def __iter__(self) -> Iterator[str]:
        return iter(self._raw)

    def __contains__(self, path: object) -> bool:
        if not isinstance(path, (str, os.PathLike)):
            return False
        return self.resolve(path) is not None

    def items(self) -> Iterable[tuple[str, str]]:
        """The `(key, caption)` pairs as stored (keys as written in the file)."""
        return self._raw.items()

    def to_dict(self) -> dict[str, str]:
        """The captions as stored (keys as written in the file)."""
        return dict(self._raw)

    def __repr__(self) -> str:
        src = f", source={self.source!r}" if self.source else ""
        root = f", root={self.root!r}" if self.root else ""
        fb = f", fallback={self._fallback_name()}" if self._fallback is not None else ""
        return f"CaptionStore({len(self)} captions{src}{root}{fb})"

    # -- lookup -------------------------------------------------------------------------------
    def resolve(self, path: str | os.PathLike[str]) -> str | None:
        """The key holding `path`'s caption, or `None`; `CaptionError` when several
        keys match equally well by suffix."""
        s = os.fspath(path)
        if s in self._raw:
            return s
        n = _norm(s)
        if n in self._norm_index:
            return self._norm_index[n]
        a = _norm(os.path.abspath(s))
        if a in self._norm_index:
            return self._norm_index[a]
        need = self.min_suffix
        if self.root is not None and (a == self.root or a.startswith(self.root.rstrip("/") + "/")):
            rel = _norm(posixpath.relpath(a, self.root))
            if rel in self._norm_index:
                return self._norm_index[rel]
            need = max(1, len(_components(rel)))
        if not self.suffix_match:
            return None
        comps = _components(a)
        if not comps:
            return None
        best, best_keys = 0, []
        for kcomps, key in self._by_name.get(comps[-1], ()):
            c = _common_suffix(kcomps, comps)
            if c < need:
                continue
            if c > best:
                best, best_keys = c, [key]
            elif c == best:
                best_keys.append(key)
        if not best_keys:
            return None
        if len(best_keys) > 1:
            shown = ", ".join(repr(k) for k in best_keys[:MAX_LISTED])
            raise CaptionError(
                f"image {s} matches {len(best_keys)} caption keys equally well ({shown}); "
                "pass root= so that keys resolve by relative path, or fix the caption file"
            )
        return best_keys[0]

    def find(self, path: str | os.PathLike[str]) -> str | None:
        """The caption of `path`, or `None` (never the fallback)."""
        key = self.resolve(path)
        return None if key is None else self._raw[key]

    def get(self, path: str | os.PathLike[str], category: str | None = None) -> str:
        """The caption of `path`; the fallback (with a warning) or `CaptionError` when
        there is none. `category` feeds the fallback template."""
        key = self.resolve(path)
        if key is not None:
            return self._raw[key]
        if self._fallback is None:
            raise CaptionError(self._missing_message([os.fspath(path)], 1), [os.fspath(path)])
        self._warn_fallback(1)
        return self._fallback(os.fspath(path), category)

    def missing(self, paths: Iterable[str | os.PathLike[str]]) -> list[str]:
        """The paths among `paths` that have no caption."""
        return [os.fspath(p) for p in paths if self.resolve(p) is None]

    def captions_for(
        self,
        paths: Sequence[str | os.PathLike[str]],
        categories: Sequence[str | None] | None = None,
    ) -> list[str]:
        """Captions for all `paths` at once. Missing ones raise one `CaptionError`
        listing the first few and the total; with a fallback they are filled in and one
        warning reports how many."""
        if categories is not None and len(categories) != len(paths):
            raise ValueError(f"categories has {len(categories)} entries for {len(paths)} paths")
        out: list[str | None] = []
        missing: list[int] = []
        for i, p in enumerate(paths):
            key = self.resolve(p)
            if key is None:
                missing.append(i)
                out.append(None)
            else:
                out.append(self._raw[key])
        if missing:
            names = [os.fspath(paths[i]) for i in missing]
            if self._fallback is None:
                raise CaptionError(self._missing_message(names, len(paths)), names)
            self._warn_fallback(len(missing), len(paths))
            for i in missing:
                cat = categories[i] if categories is not None else None
                out[i] = self._fallback(os.fspath(paths[i]), cat)
        return out  # type: ignore[return-value]

    # -- messages -----------------------------------------------------------------------------
    def _missing_message(self, names: list[str], total: int) -> str:
        shown = "\n  ".join(names[:MAX_LISTED])
        more = f"\n  ... and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else ""
        src = f" in {self.source}" if self.source else ""
        return (
            f"{len(names)} of {total} images have no caption{src} ({len(self)} captions "
            f"loaded):\n  {shown}{more}\n"
            "generate them with `dgsnet caption` (resumes an existing file), pass root= if the "
            "keys are relative to another folder, or pass caption_fallback=True to use a "
            "neutral template caption (weakens the text branch, see docs/captions.md)"
        )

    def _fallback_name(self) -> str:
        fb = self._fallback
        if isinstance(fb, _TemplateFallback):
            return repr(fb)
        return getattr(fb, "__qualname__", None) or type(fb).__name__

    def _warn_fallback(self, n: int, total: int | None = None) -> None:
        if self._warned and total is None:
            return
        self._warned = True
        of = f" of {total}" if total is not None else ""
        warnings.warn(
            f"{n}{of} images have no caption; using the fallback ({self._fallback_name()}). "
            "Template captions carry no per-image content, so the text branch cannot do its "
            "job: generate captions with `dgsnet caption`",
            CaptionFallbackWarning,
            stacklevel=3,
        )


def _is_windows_abs(p: str) -> bool:
    return len(p) >= 3 and p[1] == ":" and p[2] == "/"


def load_captions(
    path: str | os.PathLike[str],
    root: str | os.PathLike[str] | None = None,
    *,
    fallback: FallbackSpec = None,
    suffix_match: bool = True,
) -> CaptionStore:
    """Read a caption JSON file into a `CaptionStore`.

    `path` may also be a dataset folder, in which case the file is located with
    `find_caption_file`. `root` is the folder relative keys are relative to (the
    dataset root); absolute keys, including ones written on another machine, resolve without
    it.
    """
    p = Path(path)
    if p.is_dir():
        p = find_caption_file(p)
    return CaptionStore(
        read_caption_file(p), root=root, fallback=fallback, suffix_match=suffix_match, source=p
    )
