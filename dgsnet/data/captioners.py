"""Captioners (a template one and BLIP) and `generate_captions`, which writes a caption
file in resumable, atomically saved batches.

The DGS-Net paper (arXiv 2511.13108) captions every training image with BLIP;
`BlipCaptioner` does that with Hugging Face `transformers`. `TemplateCaptioner`
is the no-model stand-in: its captions carry no per-image content, and it warns.

Examples:
    >>> generate_captions(paths, "train_text/train.json", BlipCaptioner())    # doctest: +SKIP
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ..errors import CaptionFallbackWarning, CorruptImageError
from ..progress import progress_bar
from ._common import load_image
from .caption_files import read_caption_file, write_caption_json
from .caption_store import (
    LABEL_TEMPLATE_FIELDS,
    MAX_LISTED,
    CaptionStore,
    class_name_caption,
)

__all__ = [
    "BlipCaptioner",
    "CaptionReport",
    "Captioner",
    "TemplateCaptioner",
    "generate_captions",
]


@runtime_checkable
class Captioner(Protocol):
    """Anything that maps a batch of RGB PIL images to one caption each.

    A captioner that also needs the file paths sets `uses_paths = True` and is then called
    as `captioner(images, paths=paths)`.
    """

    def __call__(self, images: Sequence[Any]) -> list[str]: ...


class TemplateCaptioner:
    """The no-model fallback: a template caption per image (see `class_name_caption`).

    `categories` maps an image path to its object category (e.g. `dict(zip(ds.paths,
    ds.categories)).get`); without it every image gets `NEUTRAL_CAPTION`. Never states
    the label. Warns (`CaptionFallbackWarning`) when created, because template captions
    carry no per-image content and defeat the purpose of the text branch.
    """

    uses_paths = True
    """Captioners with `uses_paths = True` are called as `captioner(images, paths=paths)`."""

    def __init__(
        self,
        template: str | None = None,
        categories: Callable[[str], str | None] | None = None,
    ) -> None:
        if template is not None and any(f in template for f in LABEL_TEMPLATE_FIELDS):
            raise ValueError(
                f"TemplateCaptioner does not know labels; template {template!r} asks for one"
            )
        self.template = template
        """The caption template (`{category}` and `{article}` fields), or `None` for
        `class_name_caption`'s defaults."""
        self.categories = categories
        """Maps an image path to its object category, or `None`: every image gets the neutral
        caption."""
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
    """Caption images with a BLIP captioning model from Hugging Face `transformers`.

    `BlipCaptioner()` loads `Salesforce/blip-image-captioning-base` (the paper's
    captioner family) with `BlipForConditionalGeneration` and `BlipProcessor`;
    `from_model` wraps a model and processor you already built (offline, custom,
    quantised, ...). Decoding is greedy by default (`num_beams=1`); `prompt` enables
    conditional captioning (the prompt then starts every caption). `device=None` picks CUDA
    when available. `transformers` is imported lazily: `pip install 'dgsnet[hf]'`.

    Example (downloads the weights):

    ```python
    cap = BlipCaptioner(device="cuda")
    generate_captions(paths, "train_text/train.json", cap, batch_size=64)
    ```
    """

    DEFAULT_MODEL = "Salesforce/blip-image-captioning-base"
    """The Hugging Face BLIP captioning model used when none is named."""

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
        """The model name or folder the captioner was loaded from."""

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
        """Wrap an already built `BlipForConditionalGeneration`-like `model` (anything with
        `generate(pixel_values=..., input_ids=...)`) and a `BlipProcessor`-like
        `processor` (`processor(images=..., return_tensors="pt")` and `batch_decode`).
        `device=None` keeps the model where it is."""
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
    """What `generate_captions` did."""

    out_file: Path
    """The caption file written."""
    captions: dict[str, str]
    """Every caption now in the file (existing and new), keyed as written."""
    new: int = 0
    """Images captioned by this call."""
    existing: int = 0
    """Images skipped because the file already had their caption."""
    failed: list[tuple[str, str]] = field(default_factory=list)
    """`(path, reason)` for images that could not be read (`on_error="skip"`)."""


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
    """Caption `image_paths` in batches and store them in the JSON file `out_file`.

    - **Keys**: absolute image paths, or with `relative=True` paths relative to `root`
      (`/` separators), the portable variant.
    - **Resumable**: an existing `out_file` is loaded first and every image it already
      captions (by exact, absolute or root-relative path) is skipped, so rerunning the same
      call after an interruption only does the remaining images. A file that is not a caption
      JSON object raises `CaptionError` and is left untouched.
    - **Atomic**: the whole file is rewritten after every `save_every` batches through a
      temporary file in the same folder (flush, fsync, `os.replace`), and once more on
      the way out of an exception or `KeyboardInterrupt`. The file on disk is always complete
      valid JSON; at most the batch in flight is lost. Each save rewrites the whole file, so
      for very large sets raise `save_every`.
    - **Errors**: an unreadable image raises `CorruptImageError` after saving what was
      done (`on_error="raise"`), or is skipped and reported in
      `CaptionReport.failed` with a warning (`on_error="skip"`).
    - `captioner(images) -> list[str]` gets RGB PIL images (`captioner(images, paths=...)`
      when it sets `uses_paths = True`) and must return one string per image.
    - `progress` shows a tqdm bar (if tqdm is installed) that starts at the already done
      count.

    The `dgsnet caption` command is a thin layer over this function.
    """
    _check_generate_args(batch_size, save_every, on_error, relative, root, captioner)
    root_s = os.path.abspath(root) if root is not None else None
    out = Path(out_file)
    paths = _unique_paths(image_paths)
    captions: dict[str, str] = read_caption_file(out) if out.exists() else {}
    done = CaptionStore(captions, root=root_s, suffix_match=False)
    todo = [p for p in paths if done.resolve(p) is None]
    keys = {p: _key_for(p, root_s, relative) for p in todo}  # bad paths fail before any work
    report = CaptionReport(out_file=out, captions=captions, existing=len(paths) - len(todo))
    bar = progress_bar(
        total=len(paths), initial=report.existing, unit="img", desc="captioning", enabled=progress
    )
    run = _Run(captioner, keys, report, on_error, save_every, dirty=not out.exists())
    try:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            run.caption(chunk)
            bar.update(len(chunk))
    except BaseException:
        run.save_quietly()
        raise
    finally:
        bar.close()
    run.save()
    if report.failed:
        shown = "\n  ".join(f"{p}: {r}" for p, r in report.failed[:MAX_LISTED])
        warnings.warn(
            f"{len(report.failed)} images could not be read and have no caption:\n  {shown}",
            stacklevel=2,
        )
    return report


def _check_generate_args(
    batch_size: int, save_every: int, on_error: str, relative: bool, root: Any, captioner: Any
) -> None:
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


def _unique_paths(image_paths: Iterable[str | os.PathLike[str]]) -> list[str]:
    """The paths as strings, each file once (by absolute path), input order kept."""
    seen: set[str] = set()
    paths: list[str] = []
    for p in image_paths:
        s = os.fspath(p)
        a = os.path.abspath(s)
        if a not in seen:
            seen.add(a)
            paths.append(s)
    return paths


class _Run:
    """One `generate_captions` call's batches: caption, record, save every few."""

    def __init__(
        self,
        captioner: Callable[..., Sequence[str]],
        keys: dict[str, str],
        report: CaptionReport,
        on_error: str,
        save_every: int,
        dirty: bool,
    ) -> None:
        self.captioner = captioner
        self.uses_paths = bool(getattr(captioner, "uses_paths", False))
        self.keys, self.report = keys, report
        self.on_error, self.save_every = on_error, save_every
        self.dirty = dirty  # a new file is written even when empty
        self.since_save = 0

    def caption(self, chunk: list[str]) -> None:
        """Caption the readable images of `chunk`; save when `save_every` batches ran."""
        images, ok = [], []
        for p in chunk:
            try:
                images.append(load_image(p))
                ok.append(p)
            except CorruptImageError as exc:
                if self.on_error == "raise":
                    raise
                self.report.failed.append((exc.path, exc.reason))
        if images:
            result = self.captioner(images, paths=ok) if self.uses_paths else self.captioner(images)
            texts = _check_captions(result, len(images))
            for p, t in zip(ok, texts, strict=True):
                self.report.captions[self.keys[p]] = t
            self.report.new += len(ok)
            self.dirty = True
        self.since_save += 1
        if self.since_save >= self.save_every:
            self.save()

    def save(self) -> None:
        """Rewrite the file atomically if anything changed since the last save."""
        if self.dirty:
            write_caption_json(self.report.out_file, self.report.captions)
            self.dirty, self.since_save = False, 0

    def save_quietly(self) -> None:
        """`save` on the way out of an exception: a failing save keeps the original
        exception (the old file is still intact)."""
        try:
            self.save()
        except Exception:
            pass


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
