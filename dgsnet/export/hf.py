"""The `hf` format: the fine-tuned model as a Hugging Face `CLIPModel` / `SiglipModel` folder.

The LoRA is merged into the base weights (`dgsnet.export.merge`) and the model is written
with transformers' own `save_pretrained` (`config.json`, `model.safetensors`), together with
the base model's tokenizer and image processor files when the run recorded them, so that
`transformers.AutoModel.from_pretrained(OUT)` (or `CLIPModel.from_pretrained(OUT)`)
loads the fine-tuned model. The image head, `preprocessing.json`, `load_detector.py` and
`export.json` sit beside it (`dgsnet.export.common`).

Only Hugging Face base models are written this way; an open_clip base model has open_clip's
own layout (use the `open_clip` format).
"""

from __future__ import annotations

import os
from typing import Any

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
from .merge import merged_copy
from .source import ExportError, ExportSource

__all__ = ["export_hf"]


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
    if src.kind != "hf":
        raise ExportError(
            f"the hf format needs a Hugging Face base model (CLIPModel, SiglipModel); this one "
            f"is {src.kind!r} (use --format open_clip, onnx or pt2)"
        )
    merged = merged_copy(src.wrapper.model, fuse=False).to("cpu")
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
            extra={"hf": {"model_class": type(src.wrapper.model).__name__, "saved": saved}},
        )
