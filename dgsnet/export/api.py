"""`export(source, format, out)`: one call for every format."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..wrapper import DGSWrapper
from .source import ExportError, ExportSource, load_source

__all__ = ["FORMATS", "ExportResult", "export"]

#: the export formats, in the order the docs list them
FORMATS = ("open_clip", "hf", "peft", "onnx", "pt2")
#: accepted spellings of the formats
_ALIASES = {
    "torch.export": "pt2",
    "torch_export": "pt2",
    "huggingface": "hf",
    "transformers": "hf",
    "openclip": "open_clip",
    "open-clip": "open_clip",
}


class ExportResult(dict[str, Any]):
    """The manifest of an export (`export.json`), with `path` (the folder)."""

    path: Path

    @property
    def files(self) -> dict[str, dict[str, Any]]:
        """`{relative path: {"bytes", "sha256"}}` of every file written."""
        files: dict[str, dict[str, Any]] = self["files"]
        return files


def _format(fmt: str) -> str:
    name = _ALIASES.get(fmt, fmt)
    if name not in FORMATS:
        raise ExportError(
            f"unknown export format {fmt!r}; expected one of {', '.join(FORMATS)} "
            "(torch.export is pt2)"
        )
    return name


def export(
    source: str | os.PathLike[str] | DGSWrapper | ExportSource,
    format: str,
    out: str | os.PathLike[str],
    *,
    model: str | None = None,
    revision: str | None = None,
    device: str | torch.device = "cpu",
    cache_dir: str | os.PathLike[str] | None = None,
    check: bool = True,
    tolerance: float | None = None,
    **options: Any,
) -> ExportResult:
    """Export a trained detector to `out` in one format.

    Args:
        source: a `dgsnet train` run folder, a `save_pretrained` folder, a run folder from
            `dgsnet import-released`, a `hf-hub:org/name` id, or a `DGSWrapper`.
        format: `open_clip`, `hf`, `peft`, `onnx` or `pt2` (`torch.export`).
        out: the folder to create (it must not exist, or be empty).
        model: the base model's spec when the folder does not record it.
        revision: the hub revision, for a hub id.
        device: where to load the model.
        cache_dir: the weights cache of open_clip / transformers.
        check: load the written artefact with its own library and compare its scores with
            `DGSWrapper.predict` on probe images (the export fails if they differ by more
            than `tolerance`).
        tolerance: the score tolerance of the check (default: 1e-5; 1e-4 for ONNX).
        **options: format options: `model_name=` / `open_clip_config=` (open_clip);
            `opset=` (onnx); `peft_base="open_clip"|"hf"` (peft); `preprocess=` (a
            wrapper's evaluation transform to record).

    Returns:
        The manifest (`export.json`) with `.path`.

    Raises:
        ExportError: an unknown format, a format that does not fit the base model, a
            missing library, an existing `out`, or a failed check.
        CheckpointError: (`dgsnet.io`) the source is not a dgsnet checkpoint.
    """
    fmt = _format(format)
    src = load_source(
        source,
        model=model,
        revision=revision,
        device=device,
        cache_dir=cache_dir,
        preprocess=options.pop("preprocess", None),
    )
    kw: dict[str, Any] = {"check": check}
    if tolerance is not None:
        kw["tolerance"] = tolerance
    if fmt == "open_clip":
        from .open_clip import export_open_clip

        manifest = export_open_clip(
            src,
            out,
            model_name=options.pop("model_name", None),
            open_clip_config_=options.pop("open_clip_config", None),
            **kw,
        )
    elif fmt == "onnx":
        from .onnx import export_onnx

        manifest = export_onnx(src, out, opset=options.pop("opset", 20), **kw)
    else:
        manifest = _plain(fmt, src, out, kw, options)
    if options:
        raise ExportError(f"unknown option(s) for the {fmt} format: {sorted(options)}")
    result = ExportResult(manifest)
    result.path = Path(out)
    return result


def _plain(
    fmt: str, src: ExportSource, out: str | os.PathLike[str], kw: dict[str, Any], options: Any
) -> Any:
    if fmt == "hf":
        from .hf import export_hf

        return export_hf(src, out, **kw)
    if fmt == "peft":
        from .peft import export_peft

        return export_peft(src, out, base=options.pop("peft_base", None), **kw)
    from .pt2 import export_pt2

    return export_pt2(src, out, **kw)
