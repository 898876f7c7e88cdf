"""Pieces every export format shares: the output folder, the head, the detector module,
the check against `DGSWrapper.predict`, and the manifest.

Every export folder holds, beside the format's own files:

* `head.safetensors` and `head.json`: the image head's state dict and how to rebuild it;
* `preprocessing.json`: the preprocessing steps and how to read the output
  (`dgsnet.export.preprocessing`);
* `load_detector.py`: a short loader that uses the target library only (no dgsnet);
* `export.json`: the manifest (format, files with their sizes and sha256, the source, the
  check of the artefact against the wrapper's own predictions).

The folder is assembled beside `OUT` and renamed into place when complete.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..io import atomic_write_json, atomic_write_text, save_tensors, sha256_file
from ..wrapper import DGSWrapper
from .preprocessing import PREPROCESSING_NAME
from .source import ExportError, ExportSource, preprocessing_json

__all__ = [
    "HEAD_NAME",
    "HEAD_INFO_NAME",
    "LOADER_NAME",
    "MANIFEST_NAME",
    "ImageDetector",
    "compare_scores",
    "image_features_module",
    "probe_images",
    "save_processor_files",
    "staged_folder",
    "write_common",
    "write_head",
]

HEAD_NAME = "head.safetensors"
HEAD_INFO_NAME = "head.json"
LOADER_NAME = "load_detector.py"
MANIFEST_NAME = "export.json"


@contextmanager
def staged_folder(out: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary folder beside `out` that becomes `out` when the block ends without error.

    Args:
        out: the export folder to create; it must not exist (an empty folder is replaced).

    Yields:
        The staging folder to write into.

    Raises:
        ExportError: `out` exists and is not an empty folder.
    """
    target = Path(out)
    if target.exists() and not (target.is_dir() and not any(target.iterdir())):
        raise ExportError(f"{target} exists; choose a new output folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
        if target.exists():
            target.rmdir()
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# -- the head ---------------------------------------------------------------------------------


def write_head(folder: Path, wrapper: DGSWrapper) -> dict[str, Any]:
    """Write the image head's state dict (`head.safetensors`) and its description
    (`head.json`); return the description.

    An `nn.Linear` head is described fully (`in_features`, `out_features`, `bias`); for any
    other module the class name is recorded and the user supplies the class to load the state
    dict into (the ONNX and `.pt2` artefacts hold the whole detector anyway).
    """
    from ..wrapper.checkpoint import describe_head

    head = wrapper.image_head
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in head.state_dict().items()}
    save_tensors(folder / HEAD_NAME, tensors, metadata={"format": "dgsnet.head"})
    info: dict[str, Any] = {
        "format": "dgsnet.head",
        "version": 1,
        **describe_head(head),
        "tensors": {k: list(v.shape) for k, v in tensors.items()},
        "dtype": str(next(iter(tensors.values())).dtype).replace("torch.", "") if tensors else None,
        "normalize_features": bool(wrapper.config.normalize_features),
    }
    if info["linear"] and isinstance(head, nn.Linear):
        info.update(
            in_features=head.in_features,
            out_features=head.out_features,
            bias=head.bias is not None,
        )
    else:
        info.update(
            note="the head is not an nn.Linear: build your own module of this class and load "
            "head.safetensors into it with load_state_dict",
        )
    atomic_write_json(folder / HEAD_INFO_NAME, info)
    return info


# -- the detector as one module -----------------------------------------------------------------


class _HFImageFeatures(nn.Module):
    """A Hugging Face CLIP / SigLIP image tower's joint-space features, as
    `get_image_features` computes them (the pooled output, projected when the model has a
    `visual_projection`)."""

    def __init__(self, vision_model: nn.Module, projection: nn.Module | None) -> None:
        super().__init__()
        self.vision_model = vision_model
        self.projection = projection

    def forward(self, pixels: Tensor) -> Tensor:
        pooled: Tensor = self.vision_model(pixel_values=pixels).pooler_output
        return self.projection(pooled) if self.projection is not None else pooled


def image_features_module(model: nn.Module, kind: str) -> nn.Module:
    """The image tower of a merged model (`dgsnet.export.merge.merged_copy`) as a module
    `pixels -> features`, without the text tower.

    Args:
        model: the merged open_clip or Hugging Face model.
        kind: the encoder kind (`"open_clip"` or `"hf"`).

    Returns:
        The module.

    Raises:
        ExportError: another kind of encoder.
    """
    if kind == "open_clip":
        visual = getattr(model, "visual", None)
        if not isinstance(visual, nn.Module):
            raise ExportError("the open_clip model has no visual tower")
        return visual
    if kind == "hf":
        vision = getattr(model, "vision_model", None)
        if not isinstance(vision, nn.Module):
            raise ExportError("the Hugging Face model has no vision_model")
        proj = getattr(model, "visual_projection", None)
        return _HFImageFeatures(vision, proj if isinstance(proj, nn.Module) else None)
    raise ExportError(
        f"export supports open_clip and Hugging Face encoders, not a {kind!r} DualEncoder"
    )


class ImageDetector(nn.Module):
    """The whole detector: `pixels (B, 3, H, W) -> logits (B, num_classes)`.

    Args:
        features: `pixels -> features` (merged LoRA, see `image_features_module`).
        head: the image head.
        normalize: L2-normalise the features before the head (`normalize_features`).
    """

    def __init__(self, features: nn.Module, head: nn.Module, normalize: bool) -> None:
        super().__init__()
        self.features = features
        self.head = head
        self.normalize = bool(normalize)

    def forward(self, pixels: Tensor) -> Tensor:
        f = self.features(pixels)
        if self.normalize:
            f = F.normalize(f, dim=-1)
        out: Tensor = self.head(f)
        return out


def detector_from(features: nn.Module, wrapper: DGSWrapper) -> ImageDetector:
    """`features` followed by (a copy of) the wrapper's image head, eval mode, on the CPU."""
    import copy

    head = copy.deepcopy(wrapper.image_head).requires_grad_(False)
    det = ImageDetector(features, head, wrapper.config.normalize_features)
    return det.eval().to("cpu")


def build_detector(src: ExportSource) -> ImageDetector:
    """The merged detector of `src` (a deep copy, eval mode, on the CPU)."""
    from .merge import merged_copy

    merged = merged_copy(src.wrapper.model, fuse=src.kind == "open_clip")
    return detector_from(image_features_module(merged, src.kind), src.wrapper)


# -- checking ------------------------------------------------------------------------------


def probe_images(src: ExportSource, n: int = 3, seed: int = 0) -> Tensor:
    """`n` fixed random images of the detector's input size (float32, about the scale of
    normalised pixels), on the CPU."""
    h, w = src.image_size()
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, h, w, generator=g)


def scores_of(logits: Tensor) -> Tensor:
    """P(fake) from logits: sigmoid of one logit, softmax's second column of two."""
    logits = logits.double()
    if logits.dim() == 1 or logits.shape[-1] == 1:
        return torch.sigmoid(logits.reshape(-1))
    return torch.softmax(logits, dim=-1)[:, 1]


def reference_logits(src: ExportSource, images: Tensor) -> Tensor:
    """`DGSWrapper.predict` on `images` (moved to the wrapper's device and dtype)."""
    wrapper = src.wrapper
    probe = next(
        (p for n, p in wrapper.encoder.image_tower.named_parameters() if "lora_" not in n), None
    )
    dtype = probe.dtype if probe is not None else images.dtype
    return wrapper.predict(images.to(wrapper.device, dtype)).detach().float().cpu()


def compare_scores(
    want_logits: Tensor, got_logits: Tensor, *, tolerance: float, what: str
) -> dict[str, float]:
    """Compare the artefact's logits to the wrapper's; raise when the scores differ by more
    than `tolerance`.

    Returns:
        `{"max_abs_logit_diff", "max_abs_score_diff", "tolerance"}`.

    Raises:
        ExportError: a shape mismatch, or scores further apart than `tolerance`.
    """
    if tuple(want_logits.shape) != tuple(got_logits.shape):
        raise ExportError(
            f"{what} returns logits of shape {tuple(got_logits.shape)}, the detector "
            f"{tuple(want_logits.shape)}"
        )
    logit_diff = float((want_logits.double() - got_logits.double()).abs().max())
    score_diff = float((scores_of(want_logits) - scores_of(got_logits)).abs().max())
    if not score_diff <= tolerance:
        raise ExportError(
            f"{what} does not reproduce the detector: scores differ by up to {score_diff:.3g} "
            f"(allowed {tolerance:g}); the export was not written"
        )
    return {
        "max_abs_logit_diff": logit_diff,
        "max_abs_score_diff": score_diff,
        "tolerance": tolerance,
    }


def check_artefact(
    src: ExportSource,
    run: Callable[[Tensor], Tensor],
    *,
    tolerance: float,
    what: str,
    n: int = 3,
) -> dict[str, Any]:
    """Run `run(images) -> logits` on probe images and compare with `DGSWrapper.predict`.

    Returns:
        The comparison (see `compare_scores`) with the number of images.
    """
    images = probe_images(src, n)
    want = reference_logits(src, images)
    with torch.no_grad():
        got = run(images).detach().float().cpu()
    result: dict[str, Any] = compare_scores(want, got, tolerance=tolerance, what=what)
    result["images"] = n
    return result


# -- the manifest -------------------------------------------------------------------------------


def save_processor_files(src: ExportSource, folder: Path, *, tokenizer: bool = True) -> list[str]:
    """Save the base model's image processor and, with `tokenizer`, its tokenizer (when
    they have `save_pretrained`) into `folder`; return what was saved."""
    saved: list[str] = []
    bundle = src.bundle
    if bundle is None:
        return saved
    if tokenizer and hasattr(bundle.tokenizer, "save_pretrained"):
        bundle.tokenizer.save_pretrained(os.fspath(folder))
        saved.append("tokenizer")
    processor = getattr(bundle.preprocess, "processor", None)
    if processor is not None and hasattr(processor, "save_pretrained"):
        processor.save_pretrained(os.fspath(folder))
        saved.append("image_processor")
    return saved


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for dist in (
        "dgsnet",
        "torch",
        "open_clip_torch",
        "transformers",
        "peft",
        "onnx",
        "onnxruntime",
        "onnxscript",
    ):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            continue
    return out


def write_common(
    folder: Path,
    src: ExportSource,
    fmt: str,
    *,
    loader: str,
    check: Mapping[str, Any] | None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write `preprocessing.json`, `load_detector.py` (and the image processor's
    `preprocessor_config.json` when the preprocessing is a Hugging Face processor) and, last,
    `export.json` (the manifest listing every file of the folder); return the manifest."""
    pre = preprocessing_json(src)
    atomic_write_json(folder / PREPROCESSING_NAME, pre)
    uses_processor = any(s.get("op") == "hf_image_processor" for s in pre.get("steps", []))
    if uses_processor and not (folder / "preprocessor_config.json").is_file():
        save_processor_files(src, folder, tokenizer=False)
    atomic_write_text(folder / LOADER_NAME, loader)
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        files[rel] = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
    manifest = {
        "format": "dgsnet.export",
        "version": 1,
        "export_format": fmt,
        "source": src.info(),
        "files": files,
        "check": dict(check) if check is not None else None,
        "versions": _versions(),
        **(dict(extra) if extra else {}),
    }
    atomic_write_json(folder / MANIFEST_NAME, manifest)
    return manifest
