"""The `hf` format: the fine-tuned model as a Hugging Face `CLIPModel` / `SiglipModel` folder.

The LoRA is merged into the base weights (`dgsnet.export.merge`) and the model is written
with transformers' own `save_pretrained` (`config.json`, `model.safetensors`), together with
the base model's tokenizer and image processor files when the run recorded them, so that
`transformers.AutoModel.from_pretrained(OUT)` (or `CLIPModel.from_pretrained(OUT)`)
loads the fine-tuned model. The image head, `preprocessing.json`, `load_detector.py` and
`export.json` sit beside it (`dgsnet.export.common`).

An open_clip base model (a plain ViT CLIP, as OpenAI's) is converted to a `CLIPModel`
(`dgsnet.export.convert`, checked like any export). Its folder has no tokenizer (open_clip's
BPE tokenizer is not in transformers' format; the `openai/clip-vit-*` repositories hold the
same vocabulary) and no image processor: transformers' CLIP image processor resizes with its
own kernel (pixels up to about 0.03 apart from torchvision's after normalisation), so the
exact preprocessing is `preprocessing.json` (applied by `load_detector.py`).
"""

from __future__ import annotations

import os
from typing import Any

from torch import nn

from .common import (
    check_artefact,
    detector_from,
    image_features_module,
    save_processor_files,
    staged_folder,
    write_common,
    write_head,
)
from .loaders import loader_text
from .merge import merged_copy, pristine_copy
from .source import ExportError, ExportSource

__all__ = ["converted_clipmodel", "export_hf"]


def converted_clipmodel(src: ExportSource, *, merged: bool = True) -> nn.Module:
    """The open_clip model of `src` as a transformers `CLIPModel` (`dgsnet.export.convert`):
    fine-tuned (`merged`, LoRA folded in) or the base model before fine-tuning.

    Raises:
        ExportError: the model has no `CLIPModel` equivalent.
    """
    from transformers import CLIPConfig, CLIPModel

    from .convert import check_plain_open_clip, hf_config, open_clip_to_hf
    from .open_clip import open_clip_config

    copy_of = merged_copy if merged else pristine_copy
    source = copy_of(src.wrapper.model, fuse=True).to("cpu")
    check_plain_open_clip(source)
    _, cfg, _ = open_clip_config(src, source)
    model = CLIPModel(CLIPConfig(**hf_config(cfg))).eval()
    state = open_clip_to_hf(source.state_dict())
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ExportError(
            f"the converted weights do not fit a CLIPModel: missing {missing[:4]}, "
            f"unexpected {unexpected[:4]}"
        )
    return model.to(next(source.parameters()).dtype)


def export_hf(
    src: ExportSource,
    out: str | os.PathLike[str],
    *,
    check: bool = True,
    tolerance: float = 1e-5,
) -> dict[str, Any]:
    """Write the Hugging Face export of `src` into `out` (see the module docstring).

    Args:
        src: the detector (`dgsnet.export.load_source`).
        out: the folder to create (must not exist).
        check: load the folder with `transformers.AutoModel` and compare its scores with the
            wrapper's.
        tolerance: the largest score difference the check accepts.

    Returns:
        The manifest (`export.json`).

    Raises:
        ExportError: the base model is not a Hugging Face model, or the check fails.
    """
    if src.kind == "hf":
        merged = merged_copy(src.wrapper.model, fuse=False).to("cpu")
        converted = False
    elif src.kind == "open_clip":
        merged, converted = converted_clipmodel(src), True
    else:
        raise ExportError(
            f"the hf format supports open_clip and Hugging Face models, not {src.kind!r}"
        )
    merged_class = type(merged)
    with staged_folder(out) as tmp:
        merged.save_pretrained(os.fspath(tmp), safe_serialization=True)  # type: ignore[operator]
        del merged
        saved = save_processor_files(src, tmp)
        write_head(tmp, src.wrapper)
        result = None
        if check:
            from transformers import AutoModel

            stock = AutoModel.from_pretrained(os.fspath(tmp)).eval()
            det = detector_from(image_features_module(stock, "hf"), src.wrapper)
            result = check_artefact(src, det, tolerance=tolerance, what="the hf export")
        return write_common(
            tmp,
            src,
            "hf",
            loader=loader_text("hf"),
            check=result,
            extra={
                "hf": {
                    "model_class": merged_class.__name__,
                    "converted_from_open_clip": converted,
                    "saved": saved,
                }
            },
        )
