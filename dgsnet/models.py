"""The model factory: a spec string -> CLIP model, tokenizer and image transforms.

Examples:
    >>> bundle = build_model("tiny")
    >>> model, tokenizer, train_transform, eval_transform = bundle
    >>> str(bundle.spec), bundle.image_size
    ('tiny:32', 32)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .data.transforms import ClipPreprocess
from .errors import ModelLoadError

__all__ = ["ClipPreprocess", "HFPreprocess", "ModelBundle", "ModelSpec", "build_model"]
_TINY_DEFAULT_SIZE = 32


@dataclass(frozen=True)
class ModelSpec:
    """Which CLIP to build. Parsed from a string by `parse`:

    * `tiny` / `tiny:<size>`: a tiny randomly initialised open_clip ViT (always the same
      weights: seed 0), image size 32 by default (a multiple of 8), for trying the pipeline;
    * `<open_clip name>@<pretrained>` (or the name with `pretrained=`), e.g.
      `ViT-L-14@openai`: `open_clip.create_model_and_transforms(name, pretrained=...)`;
      `pretrained` is a tag or a local weights file; the weights must be in the local cache
      or on disk when there is no network;
    * `hf:<path or hub id>`: a Hugging Face CLIP/SigLIP (`AutoModel`, `AutoTokenizer`,
      `AutoImageProcessor`).
    """

    kind: str
    """`"tiny"`, `"open_clip"` or `"hf"`."""
    name: str
    """The open_clip config name (`ViT-L-14`), the Hugging Face path or hub id, or `"tiny"`."""
    pretrained: str | None = None
    """The open_clip weights: a tag (`openai`) or a local file; `None` for the other kinds."""
    image_size: int | None = None
    """The tiny model's image size, when given in the spec (`tiny:56`)."""

    @classmethod
    def parse(cls, spec: str | ModelSpec, pretrained: str | None = None) -> ModelSpec:
        """The spec that a string names (see the class doc).

        Args:
            spec: the string, or a `ModelSpec` (returned as is, or with `pretrained` set).
            pretrained: the open_clip weights, when the string carries no `@<pretrained>`.

        Returns:
            The spec.

        Raises:
            ModelLoadError: the string names no model, or `pretrained` is given where it
                does not apply.
        """
        if isinstance(spec, ModelSpec):
            if pretrained is not None and spec.kind == "open_clip":
                return cls("open_clip", spec.name, pretrained)
            return spec
        if not isinstance(spec, str) or not spec.strip():
            raise ModelLoadError(f"model spec must be a non-empty string, got {spec!r}")
        s = spec.strip()
        if s == "tiny" or s.startswith("tiny:"):
            size = _TINY_DEFAULT_SIZE
            if s.startswith("tiny:"):
                try:
                    size = int(s.split(":", 1)[1])
                except ValueError:
                    raise ModelLoadError(
                        f"model spec {s!r}: expected tiny:<image size>, e.g. tiny:64"
                    ) from None
            if size < 16 or size % 8:
                raise ModelLoadError(
                    f"model spec {s!r}: the tiny model's image size must be a multiple of 8, >= 16"
                )
            if pretrained is not None:
                raise ModelLoadError(
                    "the tiny model is randomly initialised; it takes no pretrained weights"
                )
            return cls("tiny", "tiny", None, size)
        if s.startswith("hf:"):
            path = s[3:]
            if not path:
                raise ModelLoadError(
                    "model spec 'hf:' needs a path or hub id, e.g. hf:openai/clip-vit-large-patch14"
                )
            if os.path.exists(path):
                path = os.path.abspath(path)
            return cls("hf", path, None)
        if s.startswith("open_clip:"):
            s = s[len("open_clip:") :]
        if s.startswith("local-dir:"):  # an open_clip folder: config and weights inside
            path = s[len("local-dir:") :]
            if not path:
                raise ModelLoadError("model spec 'local-dir:' needs a folder path")
            return cls("open_clip", "local-dir:" + os.path.abspath(path), None)
        name, _, tag_text = s.partition("@")
        tag = tag_text or None
        if pretrained is not None:
            if tag is not None and tag != pretrained:
                raise ModelLoadError(
                    f"model spec {spec!r} names weights {tag!r} but pretrained={pretrained!r}"
                )
            tag = pretrained
        if tag is None:
            raise ModelLoadError(
                f"model spec {spec!r}: say which weights to load, e.g. {name}@openai (a tag or a "
                "local file); a randomly initialised CLIP cannot be rebuilt for evaluation"
            )
        if os.path.exists(tag):
            tag = os.path.abspath(tag)
        return cls("open_clip", name, tag)

    def __str__(self) -> str:
        if self.kind == "tiny":
            return f"tiny:{self.image_size}"
        if self.kind == "hf":
            return f"hf:{self.name}"
        return self.name if self.pretrained is None else f"{self.name}@{self.pretrained}"


class HFPreprocess:
    """A Hugging Face image processor as a `PIL image -> (3, H, W)` transform.

    Args:
        processor: e.g. `transformers.AutoImageProcessor.from_pretrained(path)`.
    """

    def __init__(self, processor: Any) -> None:
        self.processor = processor
        """The wrapped Hugging Face image processor."""

    def __call__(self, img: Any) -> Tensor:
        out = self.processor(images=img.convert("RGB"), return_tensors="pt")
        return out["pixel_values"][0]

    def __repr__(self) -> str:
        return f"HFPreprocess({type(self.processor).__name__})"


@dataclass
class ModelBundle:
    """What `build_model` returns. Unpacks as
    `model, tokenizer, train_transform, eval_transform = build_model("tiny")`.

    `preprocess` is the model's deterministic image preprocessing (PIL -> tensor);
    `train_transform` adds the training augmentation (random flip, patch shuffle) and
    `deterministic_train` says whether it is deterministic (only then may `train`
    pass dataset indices to the wrapper's teacher cache).
    """

    model: nn.Module
    """The CLIP model, on the requested device."""
    tokenizer: Any
    """Its tokenizer (open_clip's, or a Hugging Face `AutoTokenizer`)."""
    train_transform: Callable[[Any], Tensor]
    """The training transform: the augmentation (flip, patch shuffle) then `preprocess`."""
    eval_transform: Callable[[Any], Tensor]
    """The evaluation transform: deterministic, no augmentation."""
    spec: ModelSpec
    """The spec the model was built from."""
    preprocess: Callable[[Any], Tensor]
    """The model's own deterministic preprocessing (PIL image to tensor)."""
    image_size: int | None
    """The model's input resolution, when known."""
    transform_kind: str = "model"
    """`"model"` (the model's preprocessing) or `"patch-selection"` (DGS-Net's mosaic)."""
    flip: bool = True
    """Whether the training transform flips images at random."""

    def __iter__(self) -> Iterator[Any]:
        return iter((self.model, self.tokenizer, self.train_transform, self.eval_transform))

    @property
    def deterministic_train(self) -> bool:
        """Whether the training transform is deterministic (no flip, no patch shuffle): only then
        may training pass dataset indices to the teacher cache."""
        return not self.flip and self.transform_kind == "model"

    def transform(self, train: bool = False, degrade: Any = None) -> Callable[[Any], Tensor]:
        """The dataset transform: `[degrade] -> [augmentation if train] -> preprocess`.

        Args:
            train: the training transform (with the augmentation) instead of the evaluation one.
            degrade: a degradation applied first, or `None`.

        Returns:
            `PIL image -> (3, H, W)` tensor.
        """
        from .data import default_transform

        if self.transform_kind == "patch-selection":
            base = _patch_selection(self.image_size, train=train, flip=self.flip)
            return default_transform(base, train=False, degrade=degrade)
        return default_transform(self.preprocess, train=train and self.flip, degrade=degrade)

    def info(self) -> dict[str, Any]:
        """JSON description stored beside checkpoints (to rebuild the model for evaluation)."""
        return {
            "format": "dgsnet.model",
            "spec": str(self.spec),
            "transform": self.transform_kind,
            "flip": self.flip,
            "image_size": self.image_size,
        }


def _patch_selection(image_size: int | None, train: bool, flip: bool) -> Callable[[Any], Tensor]:
    from .data import PatchSelection

    if image_size is None or image_size % 7:
        raise ModelLoadError(
            f"--transform patch-selection tiles 7x7 patches, so the model's image size must be a "
            f"multiple of 7 (224 for CLIP ViT-L/14; tiny:56 for the tiny model); got {image_size}"
        )
    patch = image_size // 7
    if train:
        return PatchSelection(patch_size=patch, flip=flip)
    return PatchSelection(patch_size=patch, deterministic=True)


def _tiny_model(image_size: int) -> nn.Module:
    import open_clip

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return open_clip.CLIP(
            embed_dim=32,
            vision_cfg=dict(image_size=image_size, patch_size=8, width=64, layers=2, head_width=32),
            text_cfg=dict(context_length=32, vocab_size=49408, width=32, heads=2, layers=1),
        )


def _short(exc: BaseException, limit: int = 400) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def build_model(
    spec: str | ModelSpec,
    *,
    pretrained: str | None = None,
    transform: str = "model",
    flip: bool = True,
    device: str | torch.device = "cpu",
    cache_dir: str | os.PathLike[str] | None = None,
) -> ModelBundle:
    """Build a CLIP model, its tokenizer and its transforms from a spec (see `ModelSpec`).

    `transform`: `"model"` (the model's own preprocessing) or `"patch-selection"`
    (DGS-Net's 7x7 spectral-entropy patch mosaic, ImageNet mean/std; the image size must be a
    multiple of 7). `flip`: random horizontal flip in the training transform (the reference
    setting; makes the training transform non-deterministic).

    Pretrained weights are never downloaded silently from here: open_clip / transformers use
    their local caches first; without network access they must already be there (or pass a
    local file / folder). Failures raise `ModelLoadError` with the reason.

    Args:
        spec: the model spec string or `ModelSpec`.
        pretrained: open_clip weights (a tag or a local file), when `spec` carries none.
        transform: `"model"` or `"patch-selection"` (see above).
        flip: random horizontal flip in the training transform.
        device: where to put the model.
        cache_dir: the weights cache of open_clip / transformers.

    Returns:
        The model, its tokenizer and its transforms (`ModelBundle`).

    Raises:
        ModelLoadError: the spec is invalid or the model cannot be built or loaded.
    """
    if transform not in ("model", "patch-selection"):
        raise ModelLoadError(f"transform must be 'model' or 'patch-selection', got {transform!r}")
    ms = ModelSpec.parse(spec, pretrained)
    if ms.kind == "tiny":
        loaded = _load_tiny(ms)
    elif ms.kind == "open_clip":
        loaded = _load_open_clip(ms, cache_dir)
    else:
        loaded = _load_hf(ms, cache_dir)
    model, tokenizer, preprocess, size = loaded
    model = model.to(torch.device(device))
    bundle = ModelBundle(
        model=model,
        tokenizer=tokenizer,
        train_transform=preprocess,
        eval_transform=preprocess,
        spec=ms,
        preprocess=preprocess,
        image_size=size,
        transform_kind=transform,
        flip=flip,
    )
    bundle.train_transform = bundle.transform(train=True)
    bundle.eval_transform = bundle.transform(train=False)
    return bundle


#: what a loader returns: (model, tokenizer, preprocessing, image size or None)
_Loaded = tuple[nn.Module, Any, Callable[[Any], Tensor], int | None]


def _load_tiny(ms: ModelSpec) -> _Loaded:
    import open_clip

    size = int(ms.image_size or _TINY_DEFAULT_SIZE)
    tokenizer = open_clip.get_tokenizer("ViT-B-32")  # the BPE vocabulary ships with open_clip
    return _tiny_model(size), tokenizer, ClipPreprocess(size), ms.image_size


def _load_open_clip(ms: ModelSpec, cache_dir: str | os.PathLike[str] | None) -> _Loaded:
    try:
        import open_clip

        # weights trained with QuickGELU (OpenAI's) under a config name without it
        # ("ViT-L-14"): open_clip 3 only warns and builds nn.GELU; build what they need
        tag_cfg = open_clip.get_pretrained_cfg(ms.name, ms.pretrained) if ms.pretrained else {}
        model, _, preprocess = open_clip.create_model_and_transforms(
            ms.name,
            pretrained=ms.pretrained,
            cache_dir=os.fspath(cache_dir) if cache_dir is not None else None,
            force_quick_gelu=bool((tag_cfg or {}).get("quick_gelu", False)),
        )
        tokenizer = open_clip.get_tokenizer(ms.name)
    except Exception as exc:
        raise ModelLoadError(
            f"cannot load open_clip model {ms.name!r} with weights {ms.pretrained!r}: "
            f"{_short(exc)} (the weights must be available locally: in the open_clip / "
            "Hugging Face cache, or as a file path after '@')"
        ) from exc
    raw = getattr(model.visual, "image_size", None)
    size = int(raw[0] if isinstance(raw, (tuple, list)) else raw) if raw is not None else None
    return model, tokenizer, preprocess, size


def _load_hf(ms: ModelSpec, cache_dir: str | os.PathLike[str] | None) -> _Loaded:
    try:
        import transformers
    except ImportError as exc:
        raise ModelLoadError("hf: model specs need transformers: pip install 'dgsnet[hf]'") from exc
    kw: dict[str, Any] = {}
    if cache_dir is not None:
        kw["cache_dir"] = os.fspath(cache_dir)
    try:
        model = transformers.AutoModel.from_pretrained(ms.name, **kw)
        tokenizer = transformers.AutoTokenizer.from_pretrained(ms.name, **kw)
        processor = transformers.AutoImageProcessor.from_pretrained(ms.name, **kw)
    except Exception as exc:
        raise ModelLoadError(
            f"cannot load Hugging Face model {ms.name!r}: {_short(exc)} (it needs the model, "
            "tokenizer and image-processor files, available locally or in the HF cache)"
        ) from exc
    raw = getattr(getattr(model.config, "vision_config", None), "image_size", None)
    size = int(raw) if isinstance(raw, int) else None
    return model, tokenizer, HFPreprocess(processor), size
