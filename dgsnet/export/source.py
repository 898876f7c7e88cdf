"""What an export starts from: a trained wrapper and what is known about its base model.

`load_source` accepts a `dgsnet train` run folder (its `final/`, else `last/`), a folder
written by `DGSWrapper.save_pretrained`, a run folder made by `dgsnet import-released`
(whose base CLIP is stored in `base_model/`), a `hf-hub:` repository id (resolved through
`dgsnet.hub`), or a `DGSWrapper` already in memory. Folders are loaded with
`dgsnet.evaluation.load_trained`, so the base model is rebuilt from the spec recorded beside
the weights (`dgsnet_model.json`) or from `model=`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..models import ModelBundle
from ..wrapper import DGSWrapper
from .preprocessing import describe_preprocessing, output_description

__all__ = ["ExportError", "ExportSource", "load_source"]


class ExportError(ValueError):
    """An export cannot be made (a format that does not fit the model, a missing library,
    an output folder that exists) or its artefact does not reproduce the detector."""


@dataclass
class ExportSource:
    """A trained detector ready to export."""

    wrapper: DGSWrapper
    """The trained `DGSWrapper`, in eval mode."""
    bundle: ModelBundle | None = None
    """The base model's bundle (spec, tokenizer, transforms), or `None` for a wrapper given in
    memory."""
    checkpoint: Path | None = None
    """The checkpoint folder the weights came from, or `None`."""
    run_dir: Path | None = None
    """The run folder around it (holding `run.json` or `released_import.json`), or `None`."""
    model_info: dict[str, Any] = field(default_factory=dict)
    """The checkpoint's `dgsnet_model.json` (or `run.json`'s `model`)."""
    preprocessing: dict[str, Any] = field(default_factory=dict)
    """The preprocessing description (see `dgsnet.export.preprocessing`)."""

    @property
    def kind(self) -> str:
        """The encoder kind: `"open_clip"` or `"hf"` (or a custom adapter's)."""
        return self.wrapper.encoder.kind

    @property
    def spec(self) -> str | None:
        """The base model's spec string (`"ViT-L-14@openai"`, `"tiny:32"`, `"hf:..."`)."""
        if self.bundle is not None:
            return str(self.bundle.spec)
        spec = self.model_info.get("spec")
        return str(spec) if spec else None

    def image_size(self) -> tuple[int, int]:
        """`(height, width)` of the detector's input (224 when the tower takes any size)."""
        size = self.wrapper.encoder.image_size
        return (int(size[0]), int(size[1])) if size else (224, 224)

    def info(self) -> dict[str, Any]:
        """What the export records about its source (JSON-ready)."""
        return {
            "checkpoint": os.fspath(self.checkpoint) if self.checkpoint else None,
            "base_model": self.spec,
            "encoder": self.kind,
            "config": self.wrapper.config.to_dict(),
            "lora_modules": list(self.wrapper.lora_modules),
            "released_import": _released(self.run_dir),
        }


def _released(run_dir: Path | None) -> dict[str, Any] | None:
    from ..interop.layout import IMPORT_NAME

    if run_dir is None or not (run_dir / IMPORT_NAME).is_file():
        return None
    data = json.loads((run_dir / IMPORT_NAME).read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else None


def _model_info(ckpt: Path) -> dict[str, Any]:
    from ..training.run_folder import model_info_records

    return next(model_info_records(ckpt), {})


def _run_dir(ckpt: Path) -> Path | None:
    from ..interop.layout import IMPORT_NAME
    from ..training.state import RUN_NAME

    parent = ckpt.parent
    if (parent / RUN_NAME).is_file() or (parent / IMPORT_NAME).is_file():
        return parent
    return None


def _from_wrapper(wrapper: DGSWrapper, preprocess: Callable[[Any], Any] | None) -> ExportSource:
    from ..data.transforms import ClipPreprocess

    size = wrapper.encoder.image_size
    hw = (int(size[0]), int(size[1])) if size else None
    if preprocess is None:
        pre = describe_preprocessing(
            ClipPreprocess(hw[0] if hw else 224),
            image_size=hw,
            source="default: CLIP preprocessing at the model's input size (what "
            "dgsnet.evaluation uses when no transform is given); pass preprocess= to record "
            "another",
        )
    else:
        pre = describe_preprocessing(preprocess, image_size=hw, source="given")
    return ExportSource(wrapper=wrapper, preprocessing=pre)


def load_source(
    source: str | os.PathLike[str] | DGSWrapper | ExportSource,
    *,
    model: str | None = None,
    revision: str | None = None,
    device: str | torch.device = "cpu",
    cache_dir: str | os.PathLike[str] | None = None,
    preprocess: Callable[[Any], Any] | None = None,
) -> ExportSource:
    """Load what an export needs from a folder, a hub id or a wrapper.

    Args:
        source: a run folder, a checkpoint folder, an imported released run folder, a
            `hf-hub:org/name` id, a `DGSWrapper`, or an `ExportSource` (returned as is).
        model: the base model's spec when the folder does not record it (e.g.
            `ViT-L-14@openai`).
        revision: the hub revision (with a hub id).
        device: where to load the model.
        cache_dir: the weights cache of open_clip / transformers.
        preprocess: for a wrapper in memory, the evaluation transform to record (default:
            CLIP preprocessing at the model's input size).

    Returns:
        The source (a folder's wrapper in eval mode).

    Raises:
        CheckpointError: the folder is not a dgsnet checkpoint or does not say which base
            model it was trained from (pass `model=`).
    """
    if isinstance(source, ExportSource):
        return source
    if isinstance(source, DGSWrapper):
        return _from_wrapper(source, preprocess)
    from ..training.evaluation import load_trained, resolve_checkpoint

    path: str | os.PathLike[str] = source
    text = os.fspath(source)
    if text.startswith("hf-hub:") and revision is not None:
        path = f"{text.partition('@')[0]}@{revision}"
    ckpt = resolve_checkpoint(path)
    wrapper, bundle = load_trained(ckpt, model=model, device=device, cache_dir=cache_dir)
    pre = describe_preprocessing(
        bundle.eval_transform,
        image_size=(bundle.image_size, bundle.image_size) if bundle.image_size else None,
        source="the checkpoint's recorded model spec and transform",
    )
    return ExportSource(
        wrapper=wrapper,
        bundle=bundle,
        checkpoint=ckpt,
        run_dir=_run_dir(ckpt),
        model_info=_model_info(ckpt),
        preprocessing=pre,
    )


def preprocessing_json(src: ExportSource) -> dict[str, Any]:
    """The `preprocessing.json` content: the steps and how to read the output."""
    cfg = src.wrapper.config
    return {
        **src.preprocessing,
        "output": output_description(cfg.num_classes, cfg.normalize_features),
    }
