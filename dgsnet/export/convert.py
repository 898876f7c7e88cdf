"""Converting CLIP weights between open_clip's layout and transformers' `CLIPModel`.

Both libraries implement the same OpenAI CLIP ViT: pre-norm transformer blocks with
LayerNorm (eps 1e-5), a class token, learned position embeddings, a LayerNorm before and
after the vision transformer, and linear projections into the joint space. The names and two
layouts differ:

| open_clip | transformers `CLIPModel` |
|---|---|
| `visual.conv1` | `vision_model.embeddings.patch_embedding` |
| `visual.class_embedding` | `vision_model.embeddings.class_embedding` |
| `visual.positional_embedding` | `vision_model.embeddings.position_embedding.weight` |
| `visual.ln_pre`, `visual.ln_post` | `vision_model.pre_layrnorm`, `.post_layernorm` |
| `visual.proj` `(D, E)` | `visual_projection.weight` `(E, D)`, transposed |
| `attn.in_proj_weight` `(3D, D)` | `self_attn.q_proj`, `k_proj`, `v_proj` weights, stacked |
| `attn.out_proj` | `self_attn.out_proj` |
| `ln_1`, `ln_2` | `layer_norm1`, `layer_norm2` |
| `mlp.c_fc`, `mlp.c_proj` | `mlp.fc1`, `mlp.fc2` |
| `token_embedding`, `positional_embedding` | `text_model.embeddings.*` |
| `ln_final`, `text_projection` `(W, E)` | `text_model.final_layer_norm`, `text_projection` |
| `logit_scale` | `logit_scale` |

(The block names sit under `visual.transformer.resblocks.N` / `transformer.resblocks.N` and
`vision_model.encoder.layers.N` / `text_model.encoder.layers.N`.)

QuickGELU (OpenAI's weights) is `hidden_act="quick_gelu"`, `nn.GELU` is `"gelu"`. The text
towers pool at the end-of-text token: open_clip at the largest token id, transformers at the
first `eos_token_id`, which is the same position for text tokenised with the CLIP BPE (whose
end-of-text id is the largest); the config written here sets `eos_token_id` to the last
vocabulary id accordingly. Only plain ViT CLIPs convert (no LayerScale, attentional pooler,
SigLIP or custom text tower); anything else is refused.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .source import ExportError

__all__ = [
    "OPENAI_HF_IDS",
    "check_plain_open_clip",
    "hf_config",
    "hf_module_name",
    "hf_to_open_clip",
    "open_clip_config_of_hf",
    "open_clip_to_hf",
]

# (open_clip suffix, transformers suffix) inside one transformer block
_BLOCK = (
    ("ln_1", "layer_norm1"),
    ("ln_2", "layer_norm2"),
    ("mlp.c_fc", "mlp.fc1"),
    ("mlp.c_proj", "mlp.fc2"),
    ("attn.out_proj", "self_attn.out_proj"),
)
_TOP = (
    ("visual.conv1.weight", "vision_model.embeddings.patch_embedding.weight"),
    ("visual.class_embedding", "vision_model.embeddings.class_embedding"),
    ("visual.positional_embedding", "vision_model.embeddings.position_embedding.weight"),
    ("visual.ln_pre.weight", "vision_model.pre_layrnorm.weight"),
    ("visual.ln_pre.bias", "vision_model.pre_layrnorm.bias"),
    ("visual.ln_post.weight", "vision_model.post_layernorm.weight"),
    ("visual.ln_post.bias", "vision_model.post_layernorm.bias"),
    ("token_embedding.weight", "text_model.embeddings.token_embedding.weight"),
    ("positional_embedding", "text_model.embeddings.position_embedding.weight"),
    ("ln_final.weight", "text_model.final_layer_norm.weight"),
    ("ln_final.bias", "text_model.final_layer_norm.bias"),
    ("logit_scale", "logit_scale"),
)
_TRANSPOSED = (
    ("visual.proj", "visual_projection.weight"),
    ("text_projection", "text_projection.weight"),
)
_TOWERS = (
    ("visual.transformer.resblocks", "vision_model.encoder.layers"),
    ("transformer.resblocks", "text_model.encoder.layers"),
)


#: the Hub repositories of OpenAI's CLIP weights in transformers' format, by open_clip name
#: (open_clip's `<name>@openai` weights are the same release)
OPENAI_HF_IDS = {
    "ViT-B-32": "openai/clip-vit-base-patch32",
    "ViT-B-16": "openai/clip-vit-base-patch16",
    "ViT-L-14": "openai/clip-vit-large-patch14",
    "ViT-L-14-336": "openai/clip-vit-large-patch14-336",
}

_MODULES = {
    "attn.q_proj": "self_attn.q_proj",
    "attn.k_proj": "self_attn.k_proj",
    "attn.v_proj": "self_attn.v_proj",
    "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}


def hf_module_name(name: str) -> str:
    """The `CLIPModel` module of an open_clip image-tower module with dgsnet's split
    attention (`transformer.resblocks.3.attn.q_proj` ->
    `vision_model.encoder.layers.3.self_attn.q_proj`).

    Raises:
        ExportError: a module with no `CLIPModel` counterpart.
    """
    parts = name.split(".")
    if parts[:2] == ["transformer", "resblocks"] and len(parts) >= 4:
        leaf = ".".join(parts[3:])
        if leaf in _MODULES:
            return f"vision_model.encoder.layers.{parts[2]}.{_MODULES[leaf]}"
    raise ExportError(f"the image-tower module {name!r} has no CLIPModel counterpart")


def _layers(state: Mapping[str, Tensor], prefix: str) -> int:
    found = {int(k[len(prefix) + 1 :].split(".")[0]) for k in state if k.startswith(prefix + ".")}
    return max(found) + 1 if found else 0


def _pairs(state: Mapping[str, Tensor], hf: bool) -> Iterator[tuple[str, str]]:
    """(open_clip key, transformers key) of every one-to-one tensor."""
    yield from _TOP
    for oc_prefix, hf_prefix in _TOWERS:
        n = _layers(state, hf_prefix if hf else oc_prefix)
        for i in range(n):
            for oc, tr in _BLOCK:
                for leaf in ("weight", "bias"):
                    yield f"{oc_prefix}.{i}.{oc}.{leaf}", f"{hf_prefix}.{i}.{tr}.{leaf}"


def _renamed(state: Mapping[str, Tensor], hf: bool) -> tuple[dict[str, Tensor], set[str]]:
    """The one-to-one and the transposed tensors of `state` (transformers' with `hf`, else
    open_clip's) under the other library's names, and the keys of `state` they used."""
    out: dict[str, Tensor] = {}
    used = set()
    for oc, tr in _pairs(state, hf=hf):
        src, dst = (tr, oc) if hf else (oc, tr)
        out[dst] = state[src]
        used.add(src)
    for oc, tr in _TRANSPOSED:
        src, dst = (tr, oc) if hf else (oc, tr)
        out[dst] = state[src].t().contiguous()
        used.add(src)
    return out, used


def _refuse_unused(state: Mapping[str, Tensor], used: set[str], message: str) -> None:
    """Raise `ExportError(message)`, with the first unused keys in its `{}`, when a key of
    `state` was not converted."""
    extra = sorted(set(state) - used)
    if extra:
        raise ExportError(message.format(extra[:4]))


def open_clip_to_hf(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """An open_clip CLIP state dict in transformers' `CLIPModel` names and layouts.

    Args:
        state: the open_clip state dict (stock layout: fused `in_proj_weight`).

    Returns:
        The `CLIPModel` state dict (new tensors where a layout changes).

    Raises:
        ExportError: a key the conversion does not know (not a plain ViT CLIP).
    """
    out, used = _renamed(state, hf=False)
    for oc_prefix, hf_prefix in _TOWERS:
        for i in range(_layers(state, oc_prefix)):
            for leaf in ("weight", "bias"):
                fused = state[f"{oc_prefix}.{i}.attn.in_proj_{leaf}"]
                for part, name in zip(fused.chunk(3, dim=0), ("q", "k", "v"), strict=True):
                    out[f"{hf_prefix}.{i}.self_attn.{name}_proj.{leaf}"] = part.contiguous()
                used.add(f"{oc_prefix}.{i}.attn.in_proj_{leaf}")
    _refuse_unused(state, used, "cannot convert open_clip weights {} to a CLIPModel")
    return out


def hf_to_open_clip(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A transformers `CLIPModel` state dict in open_clip's names and layouts.

    Args:
        state: the `CLIPModel` state dict.

    Returns:
        The open_clip state dict (q/k/v stacked into `in_proj_weight`).

    Raises:
        ExportError: a key the conversion does not know.
    """
    state = {k: v for k, v in state.items() if not k.endswith("position_ids")}
    out, used = _renamed(state, hf=True)
    for oc_prefix, hf_prefix in _TOWERS:
        for i in range(_layers(state, hf_prefix)):
            for leaf in ("weight", "bias"):
                names = [f"{hf_prefix}.{i}.self_attn.{p}_proj.{leaf}" for p in ("q", "k", "v")]
                out[f"{oc_prefix}.{i}.attn.in_proj_{leaf}"] = torch.cat([state[n] for n in names])
                used.update(names)
    _refuse_unused(state, used, "cannot convert CLIPModel weights {} to open_clip")
    return out


def check_plain_open_clip(model: nn.Module) -> None:
    """Raise unless `model` is an `open_clip.CLIP` ViT that `CLIPModel` can express.

    Raises:
        ExportError: another class, LayerScale, an attentional pooler, pooling other than
            the class token, no pre-LayerNorm, a biased projection, or a text tower that does
            not pool at the end-of-text token.
    """
    import open_clip

    m: Any = model
    if type(model) is not open_clip.CLIP:
        raise ExportError(
            f"only a plain open_clip.CLIP converts to a CLIPModel, not {type(model).__name__}"
        )
    v = m.visual
    problems = []
    if getattr(v, "attn_pool", None) is not None or getattr(v, "pool_type", "tok") != "tok":
        problems.append("its image tower does not pool the class token")
    if isinstance(getattr(v, "ln_pre", None), nn.Identity):
        problems.append("its image tower has no LayerNorm before the transformer")
    if getattr(v, "final_ln_after_pool", False):
        problems.append("its image tower applies the last LayerNorm after pooling")
    if getattr(m, "text_pool_type", "argmax") != "argmax":
        problems.append("its text tower does not pool at the end-of-text token")
    blocks = [*v.transformer.resblocks, *m.transformer.resblocks]
    if any(not isinstance(b.ls_1, nn.Identity) for b in blocks):
        problems.append("it uses LayerScale")
    if problems:
        raise ExportError(
            "this open_clip model has no CLIPModel equivalent: " + "; ".join(problems)
        )


def hf_config(model_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The `transformers.CLIPConfig` arguments of an open_clip `model_cfg` (plain ViT CLIP).

    Args:
        model_cfg: the open_clip config (`embed_dim`, `vision_cfg`, `text_cfg`, `quick_gelu`).

    Returns:
        Keyword arguments for `CLIPConfig`.
    """
    act = "quick_gelu" if model_cfg.get("quick_gelu") else "gelu"
    v, t = model_cfg["vision_cfg"], model_cfg["text_cfg"]
    vw, tw = int(v["width"]), int(t["width"])
    vocab = int(t.get("vocab_size", 49408))
    return {
        "projection_dim": int(model_cfg["embed_dim"]),
        "vision_config": {
            "hidden_size": vw,
            "intermediate_size": int(vw * float(v.get("mlp_ratio", 4.0))),
            "num_hidden_layers": int(v["layers"]),
            "num_attention_heads": vw // int(v.get("head_width", 64)),
            "image_size": int(v["image_size"]),
            "patch_size": int(v["patch_size"]),
            "hidden_act": act,
            "layer_norm_eps": 1e-5,
        },
        "text_config": {
            "hidden_size": tw,
            "intermediate_size": int(tw * float(t.get("mlp_ratio", 4.0))),
            "num_hidden_layers": int(t["layers"]),
            "num_attention_heads": int(t.get("heads", 8)),
            "max_position_embeddings": int(t.get("context_length", 77)),
            "vocab_size": vocab,
            "hidden_act": act,
            "layer_norm_eps": 1e-5,
            "bos_token_id": vocab - 2,
            "eos_token_id": vocab - 1,
            "pad_token_id": 0,
        },
    }


def open_clip_config_of_hf(config: Any) -> dict[str, Any]:
    """The open_clip `model_cfg` of a transformers `CLIPConfig`.

    Args:
        config: the `CLIPConfig` (with `vision_config` and `text_config`).

    Returns:
        The open_clip config dict.

    Raises:
        ExportError: an activation open_clip's CLIP does not offer.
    """
    v, t = config.vision_config, config.text_config
    acts = {v.hidden_act, t.hidden_act}
    if not acts <= {"gelu", "quick_gelu"} or len(acts) != 1:
        raise ExportError(
            f"a CLIPModel with activations {sorted(acts)} has no open_clip equivalent"
        )
    return {
        "embed_dim": int(config.projection_dim),
        "quick_gelu": acts == {"quick_gelu"},
        "vision_cfg": {
            "image_size": int(v.image_size),
            "patch_size": int(v.patch_size),
            "width": int(v.hidden_size),
            "layers": int(v.num_hidden_layers),
            "head_width": int(v.hidden_size) // int(v.num_attention_heads),
            "mlp_ratio": v.intermediate_size / v.hidden_size,
        },
        "text_cfg": {
            "context_length": int(t.max_position_embeddings),
            "vocab_size": int(t.vocab_size),
            "width": int(t.hidden_size),
            "heads": int(t.num_attention_heads),
            "layers": int(t.num_hidden_layers),
            "mlp_ratio": t.intermediate_size / t.hidden_size,
        },
    }
