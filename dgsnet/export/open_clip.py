"""The `open_clip` format: the fine-tuned CLIP as a stock open_clip state dict.

The LoRA is merged into the base weights and dgsnet's split q/k/v attention is fused back
into `in_proj_weight` / `in_proj_bias` (`dgsnet.export.merge`), so the file has exactly the
keys and shapes of an unmodified open_clip model of the same architecture. The folder:

* `open_clip_model.safetensors`: the whole CLIP (both towers; the text tower is unchanged);
* `open_clip_config.json`: `{"model_cfg": ..., "preprocess_cfg": ...}`, the layout that
  open_clip's `local-dir:` schema reads, so `open_clip.create_model("local-dir:OUT")` loads
  the folder for any architecture; for a built-in architecture
  `open_clip.create_model(name, pretrained="OUT/open_clip_model.safetensors")` loads it too;
* the head, `preprocessing.json`, `load_detector.py` and `export.json`
  (`dgsnet.export.common`).

A Hugging Face `CLIPModel` base is converted to open_clip's layout (`dgsnet.export.convert`;
SigLIP and other models are refused). For an open_clip base, the architecture's config comes
from, in order: `open_clip_config=` or `model_name=`; the
`local-dir:` folder the base model was loaded from (an imported released checkpoint); the
built-in open_clip config of the base model's name; or, for a model built by hand (such as
dgsnet's `tiny` models), the module's own sizes. Whichever it is, the export builds the model
from that config with open_clip, loads the file strictly and compares its scores with the
wrapper's on probe images before the folder is put in place.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from torch import nn

from ..io import atomic_write_json, save_tensors
from .common import check_artefact, detector_from, staged_folder, write_common, write_head
from .loaders import loader_text
from .merge import merged_copy
from .source import ExportError, ExportSource

__all__ = [
    "OPEN_CLIP_CONFIG_NAME",
    "OPEN_CLIP_WEIGHTS_NAME",
    "config_from_modules",
    "export_open_clip",
    "open_clip_config",
    "uses_quick_gelu",
]

OPEN_CLIP_WEIGHTS_NAME = "open_clip_model.safetensors"
OPEN_CLIP_CONFIG_NAME = "open_clip_config.json"


def uses_quick_gelu(model: nn.Module) -> bool:
    """Whether `model` computes its MLPs with open_clip's `QuickGELU` (OpenAI's weights)."""
    from open_clip.transformer import QuickGELU

    return any(isinstance(m, QuickGELU) for m in model.modules())


def _heads(block: Any) -> int:
    attn = block.attn
    return int(attn.num_heads)


def config_from_modules(model: nn.Module) -> dict[str, Any]:
    """The open_clip `model_cfg` of a plain `open_clip.CLIP` ViT, read from its modules.

    Covers the common fields (sizes, depth, heads, MLP ratio, QuickGELU); the export's check
    confirms that open_clip rebuilds the same model from it.

    Args:
        model: the model (a merged copy or the original).

    Returns:
        The config dict.

    Raises:
        ExportError: not a plain `open_clip.CLIP`.
    """
    import open_clip

    if type(model) is not open_clip.CLIP:
        raise ExportError(
            f"cannot read the open_clip config of a {type(model).__name__}: pass "
            "open_clip_config= (the model_cfg dict) or model_name= (a built-in open_clip name)"
        )
    m: Any = model
    v: Any = m.visual
    vblocks = v.transformer.resblocks
    tblocks = m.transformer.resblocks
    width = int(v.conv1.out_channels)
    twidth = int(m.transformer.width)
    vheads, theads = _heads(vblocks[0]), _heads(tblocks[0])
    return {
        "embed_dim": int(v.output_dim),
        "quick_gelu": uses_quick_gelu(model),
        "vision_cfg": {
            "image_size": int(v.image_size[0]),
            "patch_size": int(v.patch_size[0]),
            "width": width,
            "layers": len(vblocks),
            "head_width": width // vheads,
            "mlp_ratio": vblocks[0].mlp.c_fc.out_features / width,
        },
        "text_cfg": {
            "context_length": int(m.context_length),
            "vocab_size": int(m.vocab_size),
            "width": twidth,
            "heads": theads,
            "layers": len(tblocks),
            "mlp_ratio": tblocks[0].mlp.c_fc.out_features / twidth,
        },
    }


def open_clip_config(
    src: ExportSource,
    merged: nn.Module,
    *,
    model_name: str | None = None,
    config: dict[str, Any] | None = None,
) -> tuple[str | None, dict[str, Any], bool]:
    """`(built-in name or None, model_cfg, force_quick_gelu)` of the exported model.

    Args:
        src: the export source (its base model spec is used).
        merged: the merged model (for QuickGELU detection and the hand-built case).
        model_name: a built-in open_clip architecture name to use.
        config: an explicit `model_cfg`.

    Returns:
        The name (when the architecture is built into open_clip), the config, and whether
        the name must be loaded with `force_quick_gelu=True`.

    Raises:
        ExportError: `model_name` is not a built-in open_clip architecture.
    """
    import open_clip

    quick = uses_quick_gelu(merged)
    if config is not None:
        return None, dict(config), False
    spec = src.bundle.spec if src.bundle is not None else None
    name = model_name
    if name is None and spec is not None and spec.kind == "open_clip":
        if spec.name.startswith("local-dir:"):
            folder = Path(spec.name[len("local-dir:") :])
            data = json.loads((folder / OPEN_CLIP_CONFIG_NAME).read_text(encoding="utf-8"))
            return None, dict(data.get("model_cfg", data)), False
        name = spec.name
    if name is None:
        return None, config_from_modules(merged), False
    cfg = open_clip.get_model_config(name)
    if cfg is None:
        raise ExportError(f"{name!r} is not a built-in open_clip architecture")
    force = quick and not cfg.get("quick_gelu", False)
    if force:
        cfg["quick_gelu"] = True
    return name, cfg, force


def _preprocess_cfg(src: ExportSource) -> dict[str, Any]:
    """open_clip's `preprocess_cfg` from the recorded steps (size, mean, std, ...)."""
    h, w = src.image_size()
    cfg: dict[str, Any] = {"size": [h, w]}
    for step in src.preprocessing.get("steps", []):
        if step["op"] == "normalize" or step["op"] == "patch_selection":
            cfg["mean"], cfg["std"] = list(step["mean"]), list(step["std"])
        if step["op"] == "resize_shorter":
            cfg.update(interpolation=step["interpolation"], resize_mode="shortest")
        if step["op"] == "hf_image_processor":
            proc = step["config"]
            if proc.get("image_mean") and proc.get("image_std"):
                cfg["mean"], cfg["std"] = list(proc["image_mean"]), list(proc["image_std"])
    return cfg


def _stock_model(folder: Path, name: str | None, force_quick_gelu: bool) -> nn.Module:
    import open_clip

    if name is None:
        model = open_clip.create_model("local-dir:" + os.fspath(folder))
    else:
        model = open_clip.create_model(
            name,
            pretrained=os.fspath(folder / OPEN_CLIP_WEIGHTS_NAME),
            force_quick_gelu=force_quick_gelu,
        )
    return model.eval()


def _from_hf(
    src: ExportSource, config: dict[str, Any] | None
) -> tuple[None, dict[str, Any], bool, dict[str, Any]]:
    """A Hugging Face `CLIPModel` base, merged and converted to open_clip's layout
    (`dgsnet.export.convert`): `(None, model_cfg, False, state dict)`."""
    from .convert import hf_to_open_clip, open_clip_config_of_hf

    merged: Any = merged_copy(src.wrapper.model, fuse=False).to("cpu")
    if type(merged).__name__ != "CLIPModel":
        raise ExportError(
            f"the open_clip format converts a transformers CLIPModel, not a "
            f"{type(merged).__name__} (use --format hf, peft, onnx or pt2)"
        )
    cfg = dict(config) if config is not None else open_clip_config_of_hf(merged.config)
    state = {k: v.detach().contiguous() for k, v in hf_to_open_clip(merged.state_dict()).items()}
    return None, cfg, False, state


def export_open_clip(
    src: ExportSource,
    out: str | os.PathLike[str],
    *,
    model_name: str | None = None,
    open_clip_config_: dict[str, Any] | None = None,
    check: bool = True,
    tolerance: float = 1e-5,
) -> dict[str, Any]:
    """Write the open_clip export of `src` into `out` (see the module docstring).

    Args:
        src: the detector (`dgsnet.export.load_source`).
        out: the folder to create (must not exist).
        model_name: a built-in open_clip architecture name (default: the base model's).
        open_clip_config_: an explicit open_clip `model_cfg`.
        check: load the written file with open_clip and compare its scores with the wrapper's.
        tolerance: the largest score difference the check accepts.

    Returns:
        The manifest (`export.json`).

    Raises:
        ExportError: the base model is not an open_clip model, or the check fails.
    """
    if src.kind == "hf":
        name, cfg, force, state = _from_hf(src, open_clip_config_)
    elif src.kind == "open_clip":
        merged = merged_copy(src.wrapper.model, fuse=True).to("cpu")
        name, cfg, force = open_clip_config(
            src, merged, model_name=model_name, config=open_clip_config_
        )
        state = {k: v.detach().contiguous() for k, v in merged.state_dict().items()}
        del merged
    else:
        raise ExportError(
            f"the open_clip format supports open_clip and Hugging Face models, not {src.kind!r}"
        )
    with staged_folder(out) as tmp:
        save_tensors(tmp / OPEN_CLIP_WEIGHTS_NAME, state, metadata={"format": "pt"})
        del state
        atomic_write_json(
            tmp / OPEN_CLIP_CONFIG_NAME, {"model_cfg": cfg, "preprocess_cfg": _preprocess_cfg(src)}
        )
        write_head(tmp, src.wrapper)
        result = None
        if check:
            stock = _stock_model(tmp, name, force)
            visual = stock.visual
            assert isinstance(visual, nn.Module)
            det = detector_from(visual, src.wrapper)
            result = check_artefact(src, det, tolerance=tolerance, what="the open_clip export")
        return write_common(
            tmp,
            src,
            "open_clip",
            loader=loader_text("open_clip", name=name, quick_gelu=force),
            check=result,
            extra={
                "open_clip": {
                    "model_name": name,
                    "force_quick_gelu": force,
                    "converted_from_hf": src.kind == "hf",
                }
            },
        )
