"""Caption files: reading, path lookup, the neutral fallback, and batched resumable generation.

DGS-Net's text branch encodes one caption per training image with the frozen CLIP text
encoder. The reference implementation reads them from a precomputed JSON object that maps an
image path to its caption (the paper generated them with BLIP)::

    {"/data/AIGIBench/train/progan/car/0_real/00001.png": "a red car parked on a street", ...}

Keys are image paths as the writer spelled them: usually absolute paths on the machine that
wrote the file, sometimes paths relative to the dataset root. :class:`CaptionStore` finds the
caption of an image by exact key, by absolute path, by path relative to ``root``, and finally by
the longest unique path suffix, so a file written on another machine still matches.

>>> store = CaptionStore({"/old/disk/train/progan/car/0_real/1.png": "a car"})
>>> store.get("/new/place/train/progan/car/0_real/1.png")
'a car'

See ``docs/captions.md`` for the file formats, generation and the fallback policy.
"""

from __future__ import annotations

import json
import os
import posixpath
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ._common import CaptionError, CorruptImageError, atomic_write_json, load_image

__all__ = [
    "CaptionError",
    "CaptionFallbackWarning",
    "CaptionStore",
    "Captioner",
    "TemplateCaptioner",
    "BlipCaptioner",
    "CaptionReport",
    "NEUTRAL_CAPTION",
    "CATEGORY_TEMPLATE",
    "class_name_caption",
    "caption_file_candidates",
    "find_caption_file",
    "read_caption_file",
    "load_captions",
    "save_captions",
    "generate_captions",
]

#: fallback caption when nothing is known about an image's content
NEUTRAL_CAPTION = "a photo of an object"
#: fallback template when the image's object category is known (ProGAN-style category folders)
CATEGORY_TEMPLATE = "a photo of {article} {category}"

_LEAKING_FIELDS = ("{class_name", "{label")
_CLASS_NAMES = {0: "real", 1: "fake"}
_MAX_LISTED = 5


class CaptionFallbackWarning(UserWarning):
    """A template caption stands in for a real (BLIP) caption.

    The training still runs, but the text branch then carries no per-image semantic content,
    so Orthogonal Suppression no longer does what the method intends (see ``docs/captions.md``).
    Turn it into an error with ``warnings.simplefilter("error", CaptionFallbackWarning)``.
    """


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

    By default the caption does **not** depend on ``label``: it is
    ``"a photo of {article} {category}"`` when the object category is known (ProGAN-style
    ``<subset>/<category>/{0_real,1_fake}`` folders, e.g. ``"a photo of a car"``) and
    :data:`NEUTRAL_CAPTION` (``"a photo of an object"``) otherwise.

    Why not ``"a photo of a fake image"``: in DGS-Net the text branch exists to expose the
    *semantic* content of an image, whose gradient direction Orthogonal Suppression removes
    from the image branch's update. A caption that states the label turns the text head into a
    label oracle: its loss collapses within a few steps and the "harmful" direction it defines
    is the text embedding of the words "real"/"fake", i.e. the label concept itself, so the
    surgery would suppress the very signal the detector must learn instead of content
    shortcuts. ``label`` is only used by templates that ask for it explicitly through the
    ``{class_name}`` (``real``/``fake``) or ``{label}`` (``0``/``1``) fields, which warn.

    Template fields: ``{category}`` (underscores become spaces), ``{article}`` (``a``/``an``
    for the category), ``{class_name}``, ``{label}``. A template that needs ``{category}`` when
    none is known gives :data:`NEUTRAL_CAPTION`.

    >>> class_name_caption(1, category="airplane")
    'a photo of an airplane'
    >>> class_name_caption(0)
    'a photo of an object'
    """
    cat = category.replace("_", " ").strip() if category else None
    if template is None:
        template = CATEGORY_TEMPLATE if cat else NEUTRAL_CAPTION
    if any(f in template for f in _LEAKING_FIELDS):
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
        if any(f in spec for f in _LEAKING_FIELDS):
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
    """Normalise a path string for comparison: ``/`` separators, no ``.``/``..``/``//``."""
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
# caption files


def caption_file_candidates(dataroot: str | os.PathLike[str]) -> list[Path]:
    """Where a caption file for the image folder ``dataroot`` (e.g. ``.../AIGIBench/train``)
    may live, in the order :func:`find_caption_file` tries them.

    1. ``<parent>/<split>_text/<split>.json`` (the layout of the reference description, where
       ``dataroot = <parent>/<split>``)
    2. ``<parent>_text/<split>.json`` (what the released DGS-Net code derives from its
       ``--dataroot``: ``_text`` appended to the parent folder)
    3. ``<dataroot>/<split>_text/<split>.json`` (the caption folder inside the split folder)
    """
    d = Path(os.path.abspath(dataroot))
    split = d.name
    return [
        d.parent / f"{split}_text" / f"{split}.json",
        d.parent.parent / f"{d.parent.name}_text" / f"{split}.json",
        d / f"{split}_text" / f"{split}.json",
    ]


def find_caption_file(dataroot: str | os.PathLike[str]) -> Path:
    """Return the first existing file among :func:`caption_file_candidates`; raise
    :class:`CaptionError` listing every path tried when there is none."""
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

    Raises :class:`CaptionError` naming the file when it is missing, not JSON (with line and
    column), not an object, or holds a non-string caption.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CaptionError(f"caption file {p} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CaptionError(f"cannot read caption file {p}: {exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CaptionError(
            f"caption file {p} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        ) from exc
    if not isinstance(data, dict):
        raise CaptionError(
            f"caption file {p} must hold a JSON object mapping image path -> caption, "
            f"found a JSON {type(data).__name__}"
        )
    for k, v in data.items():
        if not isinstance(v, str):
            raise CaptionError(
                f"caption file {p}: the caption of {k!r} must be a string, found {type(v).__name__}"
            )
    return data


def save_captions(captions: Mapping[str, str], path: str | os.PathLike[str]) -> Path:
    """Write ``captions`` atomically as a JSON object (sorted keys, UTF-8)."""
    return atomic_write_json(dict(captions), path)


class CaptionStore:
    """Captions keyed by image path, looked up robustly.

    ``get(path)`` resolves ``path`` against the keys in this order and returns the first hit:

    1. the key spelled exactly like ``path``;
    2. the same file after normalising both sides (``/`` separators, ``.``/``..`` removed),
       comparing absolute paths; relative keys are taken relative to ``root`` when given;
    3. ``path`` relative to ``root``, compared with relative keys;
    4. with ``suffix_match=True`` (default): the key sharing the longest trailing run of path
       components with ``path`` (a file written on another machine). When ``path`` lies under
       ``root`` the shared run must cover *all* of ``path`` relative to ``root`` (its identity
       in the data set: ``progan/car/0_real/001.png`` never matches
       ``biggan/0_real/001.png``); otherwise it must be at least ``min_suffix`` components
       (default 3, e.g. ``<subset>/0_real/001.png``), a heuristic: pass ``root``. Two keys
       that match equally well raise :class:`CaptionError`.

    Missing captions raise :class:`CaptionError` unless ``fallback`` is set: ``True`` for
    :func:`class_name_caption` (neutral or category template), a template string, or a
    callable ``(path, category) -> str``. Every fallback use is announced with a
    :class:`CaptionFallbackWarning`.

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
        self.source = os.fspath(source) if source is not None else None
        self.suffix_match = suffix_match
        self.min_suffix = int(min_suffix)
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
        """The same captions and options, resolving against ``root`` (the datasets use this to
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
        """The key holding ``path``'s caption, or ``None``; :class:`CaptionError` when several
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
            shown = ", ".join(repr(k) for k in best_keys[:_MAX_LISTED])
            raise CaptionError(
                f"image {s} matches {len(best_keys)} caption keys equally well ({shown}); "
                "pass root= so that keys resolve by relative path, or fix the caption file"
            )
        return best_keys[0]

    def find(self, path: str | os.PathLike[str]) -> str | None:
        """The caption of ``path``, or ``None`` (never the fallback)."""
        key = self.resolve(path)
        return None if key is None else self._raw[key]

    def get(self, path: str | os.PathLike[str], category: str | None = None) -> str:
        """The caption of ``path``; the fallback (with a warning) or :class:`CaptionError` when
        there is none. ``category`` feeds the fallback template."""
        key = self.resolve(path)
        if key is not None:
            return self._raw[key]
        if self._fallback is None:
            raise CaptionError(self._missing_message([os.fspath(path)], 1), [os.fspath(path)])
        self._warn_fallback(1)
        return self._fallback(os.fspath(path), category)

    def missing(self, paths: Iterable[str | os.PathLike[str]]) -> list[str]:
        """The paths among ``paths`` that have no caption."""
        return [os.fspath(p) for p in paths if self.resolve(p) is None]

    def captions_for(
        self,
        paths: Sequence[str | os.PathLike[str]],
        categories: Sequence[str | None] | None = None,
    ) -> list[str]:
        """Captions for all ``paths`` at once. Missing ones raise one :class:`CaptionError`
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
        shown = "\n  ".join(names[:_MAX_LISTED])
        more = f"\n  ... and {len(names) - _MAX_LISTED} more" if len(names) > _MAX_LISTED else ""
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
    """Read a caption JSON file into a :class:`CaptionStore`.

    ``path`` may also be a dataset folder, in which case the file is located with
    :func:`find_caption_file`. ``root`` is the folder relative keys are relative to (the
    dataset root); absolute keys, including ones written on another machine, resolve without
    it.
    """
    p = Path(path)
    if p.is_dir():
        p = find_caption_file(p)
    return CaptionStore(
        read_caption_file(p), root=root, fallback=fallback, suffix_match=suffix_match, source=p
    )


# --------------------------------------------------------------------------------------------
# captioners


@runtime_checkable
class Captioner(Protocol):
    """Anything that maps a batch of RGB PIL images to one caption each.

    A captioner that also needs the file paths sets ``uses_paths = True`` and is then called
    as ``captioner(images, paths=paths)``.
    """

    def __call__(self, images: Sequence[Any]) -> list[str]: ...


class TemplateCaptioner:
    """The no-model fallback: a template caption per image (see :func:`class_name_caption`).

    ``categories`` maps an image path to its object category (e.g. ``dict(zip(ds.paths,
    ds.categories)).get``); without it every image gets :data:`NEUTRAL_CAPTION`. Never states
    the label. Warns (:class:`CaptionFallbackWarning`) when created, because template captions
    carry no per-image content and defeat the purpose of the text branch.
    """

    uses_paths = True

    def __init__(
        self,
        template: str | None = None,
        categories: Callable[[str], str | None] | None = None,
    ) -> None:
        if template is not None and any(f in template for f in _LEAKING_FIELDS):
            raise ValueError(
                f"TemplateCaptioner does not know labels; template {template!r} asks for one"
            )
        self.template = template
        self.categories = categories
        warnings.warn(
            "TemplateCaptioner writes template captions, not image descriptions: the text "
            "branch of DGS-Net then carries no per-image semantics. Use BlipCaptioner "
            "(pip install 'dgsnet[hf]') for faithful results.",
            CaptionFallbackWarning,
            stacklevel=2,
        )

    def __call__(self, images: Sequence[Any], paths: Sequence[str] | None = None) -> list[str]:
        n = len(images)
        if paths is not None and len(paths) != n:
            raise ValueError(f"got {n} images and {len(paths)} paths")
        out = []
        for i in range(n):
            cat = None
            if self.categories is not None and paths is not None:
                cat = self.categories(paths[i])
            out.append(class_name_caption(None, self.template, category=cat))
        return out

    def __repr__(self) -> str:
        return f"TemplateCaptioner(template={self.template!r})"


def _require_transformers() -> Any:
    try:
        import transformers
    except ImportError as exc:
        raise ImportError(
            "BlipCaptioner needs the optional dependency `transformers`: pip install 'dgsnet[hf]'"
        ) from exc
    return transformers


class BlipCaptioner:
    """Caption images with a BLIP captioning model from Hugging Face ``transformers``.

    ``BlipCaptioner()`` loads ``Salesforce/blip-image-captioning-base`` (the paper's
    captioner family) with ``BlipForConditionalGeneration`` and ``BlipProcessor``;
    :meth:`from_model` wraps a model and processor you already built (offline, custom,
    quantised, ...). Decoding is greedy by default (``num_beams=1``); ``prompt`` enables
    conditional captioning (the prompt then starts every caption). ``device=None`` picks CUDA
    when available. ``transformers`` is imported lazily: ``pip install 'dgsnet[hf]'``.

    Example (downloads the weights)::

        cap = BlipCaptioner(device="cuda")
        generate_captions(paths, "train_text/train.json", cap, batch_size=64)
    """

    DEFAULT_MODEL = "Salesforce/blip-image-captioning-base"

    def __init__(
        self,
        model_name_or_path: str | os.PathLike[str] = DEFAULT_MODEL,
        device: str | Any | None = None,
        max_new_tokens: int = 30,
        *,
        num_beams: int = 1,
        prompt: str | None = None,
        dtype: Any | None = None,
        local_files_only: bool = False,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        transformers = _require_transformers()
        kwargs: dict[str, Any] = {"local_files_only": local_files_only}
        if cache_dir is not None:
            kwargs["cache_dir"] = os.fspath(cache_dir)
        name = os.fspath(model_name_or_path)
        processor = transformers.BlipProcessor.from_pretrained(name, **kwargs)
        model = transformers.BlipForConditionalGeneration.from_pretrained(name, **kwargs)
        if dtype is not None:
            model = model.to(dtype=dtype)
        self._setup(model, processor, device, max_new_tokens, num_beams, prompt, auto_cuda=True)
        self.model_name = name

    @classmethod
    def from_model(
        cls,
        model: Any,
        processor: Any,
        device: str | Any | None = None,
        max_new_tokens: int = 30,
        *,
        num_beams: int = 1,
        prompt: str | None = None,
    ) -> BlipCaptioner:
        """Wrap an already built ``BlipForConditionalGeneration``-like ``model`` (anything with
        ``generate(pixel_values=..., input_ids=...)``) and a ``BlipProcessor``-like
        ``processor`` (``processor(images=..., return_tensors="pt")`` and ``batch_decode``).
        ``device=None`` keeps the model where it is."""
        self = cls.__new__(cls)
        self._setup(model, processor, device, max_new_tokens, num_beams, prompt, auto_cuda=False)
        self.model_name = type(model).__name__
        return self

    def _setup(
        self, model, processor, device, max_new_tokens, num_beams, prompt, auto_cuda
    ) -> None:
        import torch

        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if num_beams < 1:
            raise ValueError(f"num_beams must be >= 1, got {num_beams}")
        if device is None and auto_cuda:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        elif device is None:
            try:
                device = next(model.parameters()).device
            except (StopIteration, AttributeError):
                device = "cpu"
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.processor = processor
        self.max_new_tokens = int(max_new_tokens)
        self.num_beams = int(num_beams)
        self.prompt = prompt

    def __call__(self, images: Sequence[Any]) -> list[str]:
        import torch

        images = list(images)
        if not images:
            return []
        if self.prompt is not None:
            inputs = self.processor(
                images=images, text=[self.prompt] * len(images), return_tensors="pt"
            )
        else:
            inputs = self.processor(images=images, return_tensors="pt")
        try:
            dtype = next(self.model.parameters()).dtype
        except (StopIteration, AttributeError):
            dtype = None
        batch = {}
        for k, v in dict(inputs).items():
            if isinstance(v, torch.Tensor):
                v = v.to(self.device)
                if k == "pixel_values" and dtype is not None and v.is_floating_point():
                    v = v.to(dtype)
            batch[k] = v
        with torch.inference_mode():
            out = self.model.generate(
                **batch, max_new_tokens=self.max_new_tokens, num_beams=self.num_beams
            )
        texts = self.processor.batch_decode(out, skip_special_tokens=True)
        return [t.strip() for t in texts]

    def __repr__(self) -> str:
        return (
            f"BlipCaptioner({self.model_name!r}, device={str(self.device)!r}, "
            f"max_new_tokens={self.max_new_tokens}, num_beams={self.num_beams})"
        )


# --------------------------------------------------------------------------------------------
# generation


@dataclass
class CaptionReport:
    """What :func:`generate_captions` did."""

    out_file: Path
    #: every caption now in the file (existing and new), keyed as written
    captions: dict[str, str]
    #: images captioned by this call
    new: int = 0
    #: images skipped because the file already had their caption
    existing: int = 0
    #: ``(path, reason)`` for images that could not be read (``on_error="skip"``)
    failed: list[tuple[str, str]] = field(default_factory=list)


def _key_for(path: str, root: str | None, relative: bool) -> str:
    a = os.path.abspath(path)
    if not relative:
        return a
    assert root is not None
    rel = os.path.relpath(a, root)
    if rel == os.pardir or rel.startswith(os.pardir + os.sep):
        raise ValueError(f"image {path} is not inside root {root}; cannot write a relative key")
    return rel.replace(os.sep, "/")


def generate_captions(
    image_paths: Iterable[str | os.PathLike[str]],
    out_file: str | os.PathLike[str],
    captioner: Callable[..., Sequence[str]],
    batch_size: int = 16,
    progress: bool = True,
    root: str | os.PathLike[str] | None = None,
    relative: bool = False,
    *,
    save_every: int = 1,
    on_error: str = "raise",
) -> CaptionReport:
    """Caption ``image_paths`` in batches and store them in the JSON file ``out_file``.

    - **Keys**: absolute image paths, or with ``relative=True`` paths relative to ``root``
      (``/`` separators), the portable variant.
    - **Resumable**: an existing ``out_file`` is loaded first and every image it already
      captions (by exact, absolute or root-relative path) is skipped, so rerunning the same
      call after an interruption only does the remaining images. A file that is not a caption
      JSON object raises :class:`CaptionError` and is left untouched.
    - **Atomic**: the whole file is rewritten after every ``save_every`` batches through a
      temporary file in the same folder (flush, fsync, :func:`os.replace`), and once more on
      the way out of an exception or ``KeyboardInterrupt``. The file on disk is always complete
      valid JSON; at most the batch in flight is lost. Each save rewrites the whole file, so
      for very large sets raise ``save_every``.
    - **Errors**: an unreadable image raises :class:`CorruptImageError` after saving what was
      done (``on_error="raise"``), or is skipped and reported in
      :attr:`CaptionReport.failed` with a warning (``on_error="skip"``).
    - ``captioner(images) -> list[str]`` gets RGB PIL images (``captioner(images, paths=...)``
      when it sets ``uses_paths = True``) and must return one string per image.
    - ``progress`` shows a tqdm bar (if tqdm is installed) that starts at the already done
      count.

    The ``dgsnet caption`` command is a thin layer over this function.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if save_every < 1:
        raise ValueError(f"save_every must be >= 1, got {save_every}")
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if relative and root is None:
        raise ValueError("relative=True needs root= (the folder keys are relative to)")
    if not callable(captioner):
        raise TypeError(f"captioner must be callable, got {type(captioner).__name__}")
    root_s = os.path.abspath(root) if root is not None else None
    out = Path(out_file)

    # unique paths, input order kept
    seen: set[str] = set()
    paths: list[str] = []
    for p in image_paths:
        s = os.fspath(p)
        a = os.path.abspath(s)
        if a not in seen:
            seen.add(a)
            paths.append(s)

    captions: dict[str, str] = read_caption_file(out) if out.exists() else {}
    done = CaptionStore(captions, root=root_s, suffix_match=False)
    todo = [p for p in paths if done.resolve(p) is None]
    keys = {p: _key_for(p, root_s, relative) for p in todo}  # bad paths fail before any work
    report = CaptionReport(out_file=out, captions=captions, existing=len(paths) - len(todo))

    bar = _progress_bar(progress, total=len(paths), initial=report.existing)
    uses_paths = bool(getattr(captioner, "uses_paths", False))
    dirty = not out.exists()  # write at least an empty file
    since_save = 0
    try:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            images, ok = [], []
            for p in chunk:
                try:
                    images.append(load_image(p))
                    ok.append(p)
                except CorruptImageError as exc:
                    if on_error == "raise":
                        raise
                    report.failed.append((exc.path, exc.reason))
            if images:
                result = captioner(images, paths=ok) if uses_paths else captioner(images)
                texts = _check_captions(result, len(images))
                for p, t in zip(ok, texts, strict=True):
                    captions[keys[p]] = t
                report.new += len(ok)
                dirty = True
            since_save += 1
            if dirty and since_save >= save_every:
                atomic_write_json(captions, out)
                dirty, since_save = False, 0
            if bar is not None:
                bar.update(len(chunk))
    except BaseException:
        if dirty:
            try:
                atomic_write_json(captions, out)
            except Exception:  # keep the original exception; the old file is still intact
                pass
        raise
    finally:
        if bar is not None:
            bar.close()
    if dirty:
        atomic_write_json(captions, out)
    if report.failed:
        shown = "\n  ".join(f"{p}: {r}" for p, r in report.failed[:_MAX_LISTED])
        warnings.warn(
            f"{len(report.failed)} images could not be read and have no caption:\n  {shown}",
            stacklevel=2,
        )
    return report


def _check_captions(result: Any, n: int) -> list[str]:
    if isinstance(result, str) or not isinstance(result, Sequence):
        raise TypeError(
            f"the captioner must return a list of {n} strings, got {type(result).__name__}"
        )
    if len(result) != n:
        raise ValueError(f"the captioner returned {len(result)} captions for {n} images")
    for t in result:
        if not isinstance(t, str):
            raise TypeError(f"the captioner returned a {type(t).__name__}, expected str")
    return list(result)


def _progress_bar(enabled: bool, total: int, initial: int) -> Any:
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm comes with open_clip's dependencies
        return None
    return tqdm(total=total, initial=initial, unit="img", desc="captioning", dynamic_ncols=True)
