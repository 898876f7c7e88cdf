"""The `peft` format: the LoRA as a peft adapter folder, the base model left to load apart.

`adapter_config.json` and `adapter_model.safetensors` are written by peft itself
(`PeftModel.save_pretrained` on a copy of the base model), so that
`peft.PeftModel.from_pretrained(base_model, OUT)` loads them; `base_model.json` says which
base model they belong to, and the head, `preprocessing.json`, `load_detector.py` and
`export.json` sit beside them.

**Hugging Face base models** (`CLIPModel`, `SiglipModel`): the adapter is the trained LoRA
itself, one-to-one: the same target modules (`vision_model.encoder.layers.N.self_attn.q_proj`,
...), rank, alpha and scaling (`use_rslora=True` for `lora_scaling="rslora"`).

**open_clip base models onto their `CLIPModel` equivalent** (`base="hf"`): the same
one-to-one adapter on the converted model's `q_proj`/`k_proj`/`v_proj` (`c_fc`/`c_proj` as
`mlp.fc1`/`mlp.fc2`; `dgsnet.export.convert`); `base_model.json` names the Hub copy of
OpenAI's weights when the base is `<name>@openai`.

**open_clip base models onto open_clip** (the default): an open_clip ViT computes its
attention with PyTorch's `nn.MultiheadAttention`, whose query, key and value projections are
one fused `in_proj_weight` rather than three `nn.Linear` modules; peft can only adapt
`nn.Linear`-like modules by name, so it cannot hold a LoRA on q, k and v separately. What
peft can load onto a stock open_clip model is its own LoRA for a whole
`nn.MultiheadAttention` (peft's
`lora.MultiheadAttention`): one `A` of shape `(r', D)` and one `B` of shape `(3 D, r')` on
`in_proj_weight`, plus a LoRA of the same rank on `out_proj`. The export writes the exact
equivalent of the trained q/k/v LoRA in that form: `A' = [A_q; A_k; A_v]` stacked and `B'`
block-diagonal (`s B_q`, `s B_k`, `s B_v` with the run's scaling `s` folded in, so the
adapter uses `lora_alpha = r'`, scaling 1), rank `r' = 3 r`, and a zero `out_proj` LoRA.
Its limits: peft documents this layer as merging the delta into `in_proj_weight` before each
forward pass and subtracting it afterwards (so the base weights pick up float rounding, the
drift that dgsnet's split attention avoids in training; `merge_and_unload()` once after loading
avoids it at inference); the rank-`3 r` adapter is not block-diagonal any more once trained
further; and it loads onto stock open_clip models only, not onto dgsnet's split attention nor
onto a transformers `CLIPModel` (whose module names differ). Other adapted `nn.Linear`
modules (`c_fc`, `c_proj`) are plain peft LoRA targets.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..encoders import SplitAttention
from ..io import atomic_write_json
from .common import check_artefact, staged_folder, write_common, write_head
from .loaders import loader_text
from .merge import lora_layers, pristine_copy
from .source import ExportError, ExportSource

__all__ = ["BASE_INFO_NAME", "export_peft"]

BASE_INFO_NAME = "base_model.json"
_QKV = ("q_proj", "k_proj", "v_proj")


def _tower_prefix(model: nn.Module, tower: nn.Module) -> str:
    for name, module in model.named_modules():
        if module is tower:
            return name
    raise ExportError("the image tower is not a sub-module of the model")


def _lora_ab(layer: Any) -> tuple[Tensor, Tensor, float]:
    (name,) = layer.active_adapters
    a = layer.lora_A[name].weight.detach().to("cpu")
    b = layer.lora_B[name].weight.detach().to("cpu")
    return a, b, float(layer.scaling[name])


def _hf_adapter(
    src: ExportSource, converted: bool
) -> tuple[nn.Module, Any, dict[str, tuple[Tensor, Tensor]]]:
    """(pristine model, LoraConfig, {full module name: (A, B)}) for a Hugging Face base
    (`converted`: the `CLIPModel` equivalent of an open_clip base)."""
    from peft import LoraConfig

    from .convert import hf_module_name
    from .hf import converted_clipmodel

    wrapper = src.wrapper
    prefix = _tower_prefix(wrapper.model, wrapper.encoder.image_tower)
    weights = {}
    for name, layer in lora_layers(wrapper.encoder.image_tower):
        a, b, _ = _lora_ab(layer)
        weights[hf_module_name(name) if converted else f"{prefix}.{name}"] = (a, b)
    cfg = wrapper.config
    config = LoraConfig(
        r=cfg.lora_rank,
        lora_alpha=cfg.lora_alpha,  # type: ignore[arg-type]
        lora_dropout=cfg.lora_dropout,
        target_modules=sorted(weights),
        bias="none",
        use_rslora=cfg.lora_scaling == "rslora",
    )
    if converted:
        return converted_clipmodel(src, merged=False), config, weights
    return pristine_copy(wrapper.model, fuse=False).to("cpu"), config, weights


def _attention_adapter(attn: SplitAttention, rank: int) -> dict[str, tuple[Tensor, Tensor]]:
    """The peft `MultiheadAttention` LoRA equal to the LoRA on `attn`'s q/k/v (and out)."""
    d = attn.embed_dim
    parts = [(i, _lora_ab(getattr(attn, n))) for i, n in enumerate(_QKV) if _is_lora(attn, n)]
    a_in = torch.zeros(rank, d, dtype=torch.float64)
    b_in = torch.zeros(3 * d, rank, dtype=torch.float64)
    col = 0
    for i, (a, b, s) in parts:
        r = a.shape[0]
        a_in[col : col + r] = a.double()
        b_in[i * d : (i + 1) * d, col : col + r] = s * b.double()
        col += r
    a_out = torch.zeros(rank, d, dtype=torch.float64)
    b_out = torch.zeros(d, rank, dtype=torch.float64)
    if _is_lora(attn, "out_proj"):
        a, b, s = _lora_ab(attn.out_proj)
        a_out[: a.shape[0]] = a.double()
        b_out[:, : a.shape[0]] = s * b.double()
    dtype = attn.q_proj.weight.dtype if isinstance(attn.q_proj, nn.Linear) else torch.float32
    return {
        "": (a_in.to(dtype), b_in.to(dtype)),
        ".base_layer.out_proj": (a_out.to(dtype), b_out.to(dtype)),
    }


def _is_lora(attn: nn.Module, name: str) -> bool:
    from peft.tuners.lora import LoraLayer

    return isinstance(getattr(attn, name), LoraLayer)


def _open_clip_adapter(
    src: ExportSource,
) -> tuple[nn.Module, Any, dict[str, tuple[Tensor, Tensor]]]:
    """(stock pristine open_clip model, LoraConfig, {peft module name: (A, B)})."""
    from peft import LoraConfig

    wrapper = src.wrapper
    model = wrapper.model
    cfg = wrapper.config
    attn_names = [
        n
        for n, m in model.named_modules()
        if isinstance(m, SplitAttention) and any(_is_lora(m, p) for p in (*_QKV, "out_proj"))
    ]
    attn_rank = 3 * cfg.lora_rank
    weights: dict[str, tuple[Tensor, Tensor]] = {}
    for name in attn_names:
        attn = model.get_submodule(name)
        assert isinstance(attn, SplitAttention)
        for suffix, ab in _attention_adapter(attn, attn_rank).items():
            weights[name + suffix] = ab
    inside = tuple(f"{n}." for n in attn_names)
    linear_targets = []
    for name, layer in lora_layers(model):
        if name.startswith(inside):
            continue
        a, b, s = _lora_ab(layer)
        weights[name] = (a, (s * b.double()).to(b.dtype))
        linear_targets.append(name)
    patterns = {re.escape(n): attn_rank for n in attn_names}
    config = LoraConfig(
        r=cfg.lora_rank,
        lora_alpha=cfg.lora_rank,  # scaling 1: the run's scaling is folded into B
        lora_dropout=cfg.lora_dropout,
        target_modules=sorted([*attn_names, *linear_targets]),
        bias="none",
        rank_pattern=patterns,
        alpha_pattern=dict(patterns),
    )
    return pristine_copy(model, fuse=True).to("cpu"), config, weights


def _fill(peft_model: nn.Module, weights: dict[str, tuple[Tensor, Tensor]]) -> None:
    with torch.no_grad():
        for name, (a, b) in weights.items():
            layer: Any = peft_model.get_submodule(f"base_model.model.{name}")
            la, lb = layer.lora_A["default"].weight, layer.lora_B["default"].weight
            if la.shape != a.shape or lb.shape != b.shape:
                raise ExportError(
                    f"peft built {name} with LoRA shapes {tuple(la.shape)}, {tuple(lb.shape)}; "
                    f"the export holds {tuple(a.shape)}, {tuple(b.shape)}"
                )
            la.copy_(a)
            lb.copy_(b)


def _base_info(src: ExportSource, base: str) -> dict[str, Any]:
    spec = src.bundle.spec if src.bundle is not None else None
    info: dict[str, Any] = {"format": "dgsnet.peft_base", "library": base, "spec": src.spec}
    if base == "hf" and src.kind == "hf":
        info["path"] = spec.name if spec is not None and spec.kind == "hf" else None
        return info
    if base == "hf":  # the CLIPModel equivalent of an open_clip base
        from .convert import OPENAI_HF_IDS

        name = spec.name.removesuffix("-quickgelu") if spec is not None else ""
        known = spec is not None and spec.pretrained == "openai" and name in OPENAI_HF_IDS
        info["path"] = OPENAI_HF_IDS[name] if known else None
        info["converted_from"] = src.spec
        if not known:
            info["note"] = (
                "the base is the CLIPModel equivalent of the open_clip model the run started "
                "from (dgsnet.export.convert); no Hub copy of it is known: convert it and pass "
                "it to PeftModel.from_pretrained"
            )
        return info
    from .open_clip import uses_quick_gelu

    if spec is not None and spec.kind == "open_clip":
        if spec.name.startswith("local-dir:"):
            info["local_dir"] = spec.name[len("local-dir:") :]
        else:
            import open_clip

            cfg = open_clip.get_model_config(spec.name) or {}
            quick = uses_quick_gelu(src.wrapper.model) and not cfg.get("quick_gelu", False)
            info.update(model_name=spec.name, pretrained=spec.pretrained, force_quick_gelu=quick)
    if "local_dir" not in info and "model_name" not in info:
        from .open_clip import open_clip_config

        info["model_cfg"] = open_clip_config(src, src.wrapper.model)[1]
        info["note"] = (
            "no loadable base model is recorded (a model built by hand): build the open_clip "
            "model the run started from (model_cfg is its architecture) with its weights and "
            "pass it to PeftModel.from_pretrained"
        )
    return info


def _features_fn(model: Any, base: str) -> Any:
    def features(x: Tensor) -> Tensor:
        if base == "open_clip":
            out: Tensor = model.encode_image(x)
            return out
        got = model.get_image_features(pixel_values=x)
        return got if isinstance(got, Tensor) else got.pooler_output

    return features


def _check(src: ExportSource, folder: Path, base: str, tolerance: float) -> dict[str, Any]:
    import copy

    from peft import PeftModel

    if base == "hf" and src.kind == "open_clip":
        from .hf import converted_clipmodel

        fresh = converted_clipmodel(src, merged=False)
    else:
        fresh = pristine_copy(src.wrapper.model, fuse=base == "open_clip").to("cpu")
    loaded = PeftModel.from_pretrained(fresh, os.fspath(folder)).eval()
    features = _features_fn(loaded, base)
    head = copy.deepcopy(src.wrapper.image_head).to("cpu")
    normalize = src.wrapper.config.normalize_features

    def run(x: Tensor) -> Tensor:
        f = features(x)
        out: Tensor = head(F.normalize(f, dim=-1) if normalize else f)
        return out

    return check_artefact(src, run, tolerance=tolerance, what="the peft adapter")


def export_peft(
    src: ExportSource,
    out: str | os.PathLike[str],
    *,
    check: bool = True,
    tolerance: float = 1e-5,
    base: str | None = None,
) -> dict[str, Any]:
    """Write the peft adapter export of `src` into `out` (see the module docstring).

    Args:
        src: the detector (`dgsnet.export.load_source`).
        out: the folder to create (must not exist).
        check: load the adapter with `PeftModel.from_pretrained` onto a copy of the base
            model and compare its scores with the wrapper's.
        tolerance: the largest score difference the check accepts.
        base: the library of the base model the adapter loads onto: `"open_clip"` (an
            open_clip run's default: the attention form) or `"hf"` (a Hugging Face run's
            only choice; for an open_clip run, the rank-r adapter of its `CLIPModel`
            equivalent, e.g. `openai/clip-vit-large-patch14` for `ViT-L-14@openai`).

    Returns:
        The manifest (`export.json`).

    Raises:
        ExportError: an encoder that is neither open_clip nor Hugging Face, a base that
            does not fit it, or the check fails.
    """
    from peft import get_peft_model

    if src.kind not in ("hf", "open_clip"):
        raise ExportError(
            f"the peft format supports open_clip and Hugging Face models, not {src.kind!r}"
        )
    base = base or src.kind
    if base not in ("hf", "open_clip") or (src.kind == "hf" and base != "hf"):
        raise ExportError(
            f"peft base {base!r} does not fit a {src.kind} model: a Hugging Face run's adapter "
            "loads onto its Hugging Face model; an open_clip run's onto open_clip or hf"
        )
    if base == "hf":
        pristine, config, weights = _hf_adapter(src, converted=src.kind == "open_clip")
    else:
        pristine, config, weights = _open_clip_adapter(src)
    peft_model = get_peft_model(pristine, config)
    _fill(peft_model, weights)
    with staged_folder(out) as tmp:
        peft_model.save_pretrained(os.fspath(tmp))
        del peft_model, pristine
        (tmp / "README.md").unlink(missing_ok=True)  # peft's empty model-card template
        atomic_write_json(tmp / BASE_INFO_NAME, _base_info(src, base))
        write_head(tmp, src.wrapper)
        result = _check(src, tmp, base, tolerance) if check else None
        return write_common(
            tmp,
            src,
            "peft",
            loader=loader_text("peft", base=base),
            check=result,
            extra={"peft": {"base": base, "target_modules": sorted(config.target_modules)}},
        )
