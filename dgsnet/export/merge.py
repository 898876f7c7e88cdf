"""LoRA folded into the base weights, and open_clip's split attention fused back.

A trained wrapper holds peft LoRA layers in its image tower: each adapted linear layer computes
`W x + b + s * B A x` with `s = alpha / r` (`lora_scaling="standard"`) or
`alpha / sqrt(r)` (`"rslora"`). peft stores `s` per layer (`layer.scaling`), so the merged
weight `W + s * B A` is read from the layer itself and matches whichever scaling the run used.
The product is formed in float64 and rounded once to the weight's dtype.

For open_clip models dgsnet replaces each `nn.MultiheadAttention` of the image tower by
`dgsnet.encoders.SplitAttention` (separate `q_proj`, `k_proj`, `v_proj`, `out_proj`).
PyTorch's `nn.MultiheadAttention` keeps the three input projections stacked in one
`in_proj_weight` of shape `(3 D, D)` (rows `0:D` the query, `D:2D` the key, `2D:3D` the
value; the same for `in_proj_bias`), so `fuse_attention` stacks the merged q, k and v
weights in that order and rebuilds a stock `nn.MultiheadAttention`: the model's state dict then
has the key names and shapes of an unmodified open_clip model.

Nothing here changes the wrapper: every function works on a deep copy of its model.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any, cast

import torch
from torch import Tensor, nn

from ..encoders import SplitAttention

__all__ = [
    "fuse_attention",
    "lora_layers",
    "merged_copy",
    "merged_linear",
    "pristine_copy",
    "strip_lora",
]


def lora_layers(module: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """The peft LoRA layers inside `module`, as `(name, layer)` in module order.

    Args:
        module: the module to search.

    Yields:
        `(qualified name, peft LoRA layer)`.
    """
    from peft.tuners.lora import LoraLayer

    for name, child in module.named_modules():
        if isinstance(child, LoraLayer):
            yield name, cast(nn.Module, child)


def _base(layer: nn.Module) -> nn.Module:
    base = layer.get_base_layer()  # type: ignore[operator]
    if not isinstance(base, nn.Module):  # pragma: no cover - peft contract
        raise TypeError(f"peft layer {type(layer).__name__} has no base module")
    return base


def merged_linear(layer: nn.Module) -> tuple[Tensor, Tensor | None]:
    """The weight and bias of a peft LoRA `Linear` with its active adapters folded in.

    Args:
        layer: a peft LoRA layer around an `nn.Linear`.

    Returns:
        `(weight, bias)`: new tensors in the base weight's dtype; `bias` is the base bias
        (LoRA with `bias="none"` leaves it unchanged) or `None`.

    Raises:
        ValueError: the layer is not around an `nn.Linear`, or uses a LoRA variant whose
            merge is not `W + s B A` (DoRA, `fan_in_fan_out`).
    """
    base = _base(layer)
    if not isinstance(base, nn.Linear):
        raise ValueError(
            f"only LoRA on nn.Linear layers can be merged here, got {type(base).__name__}"
        )
    if getattr(layer, "fan_in_fan_out", False) or any(
        bool(v) for v in getattr(layer, "use_dora", {}).values()
    ):
        raise ValueError("DoRA and fan_in_fan_out LoRA layers are not supported by the export")
    weight = base.weight.detach()
    bias = base.bias.detach().clone() if base.bias is not None else None
    if getattr(layer, "merged", False) or getattr(layer, "disable_adapters", False):
        # already folded in (peft's merge_adapter), or switched off: the base holds the answer
        return weight.clone(), bias
    lora: Any = layer
    delta = torch.zeros(weight.shape, dtype=torch.float64, device=weight.device)
    for name in lora.active_adapters:
        a = lora.lora_A[name].weight.detach().double()
        b = lora.lora_B[name].weight.detach().double()
        delta += float(lora.scaling[name]) * (b @ a)
    merged = (weight.double() + delta).to(weight.dtype)
    return merged, bias


def _set_child(root: nn.Module, name: str, child: nn.Module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, leaf, child)


def _plain_linear(weight: Tensor, bias: Tensor | None) -> nn.Linear:
    out_f, in_f = weight.shape
    lin = nn.Linear(in_f, out_f, bias=bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        lin.weight.copy_(weight)
        if bias is not None:
            lin.bias.copy_(bias)
    return lin.requires_grad_(False)


def strip_lora(model: nn.Module, merge: bool) -> nn.Module:
    """Replace every peft LoRA layer of `model` (in place) by a plain `nn.Linear`.

    Args:
        model: the module to edit (pass a copy to keep the original).
        merge: fold the LoRA into the weight (`True`: the fine-tuned model) or drop it
            (`False`: the base model before fine-tuning).

    Returns:
        `model`.
    """
    for name, layer in list(lora_layers(model)):
        base = _base(layer)
        if merge:
            weight, bias = merged_linear(layer)
        elif getattr(layer, "merged", False):
            raise ValueError(
                f"{name}: the LoRA is merged into the base weight; the base model cannot be "
                "recovered from it (unmerge the adapters first)"
            )
        else:
            if not isinstance(base, nn.Linear):
                raise ValueError(f"{name}: LoRA on {type(base).__name__} is not supported")
            weight = base.weight.detach().clone()
            bias = base.bias.detach().clone() if base.bias is not None else None
        _set_child(model, name, _plain_linear(weight, bias))
    return model


def _fused(attn: SplitAttention) -> nn.MultiheadAttention:
    q, k, v, out = attn.q_proj, attn.k_proj, attn.v_proj, attn.out_proj
    for lin in (q, k, v, out):
        if not isinstance(lin, nn.Linear):
            raise ValueError(
                f"SplitAttention holds a {type(lin).__name__}; strip or merge the LoRA first"
            )
    w = q.weight
    has_bias = q.bias is not None
    mha = nn.MultiheadAttention(
        attn.embed_dim,
        attn.num_heads,
        dropout=attn.dropout,
        bias=has_bias,
        batch_first=attn.batch_first,
        device=w.device,
        dtype=w.dtype,
    )
    with torch.no_grad():
        assert mha.in_proj_weight is not None
        mha.in_proj_weight.copy_(torch.cat([q.weight, k.weight, v.weight], dim=0))
        if has_bias:
            assert mha.in_proj_bias is not None and q.bias is not None
            assert k.bias is not None and v.bias is not None
            mha.in_proj_bias.copy_(torch.cat([q.bias, k.bias, v.bias], dim=0))
        mha.out_proj.weight.copy_(out.weight)
        if out.bias is not None:
            mha.out_proj.bias.copy_(out.bias)
    return mha.requires_grad_(False)


def fuse_attention(model: nn.Module) -> int:
    """Replace every `SplitAttention` inside `model` (in place) by a stock
    `nn.MultiheadAttention` with `in_proj_weight = cat(q, k, v)` (the inverse of
    `dgsnet.encoders.split_attention`).

    Args:
        model: the module to edit; its LoRA layers must be stripped first (`strip_lora`).

    Returns:
        How many attentions were fused.
    """
    names = [n for n, m in model.named_modules() if isinstance(m, SplitAttention)]
    for name in names:
        attn = model.get_submodule(name)
        assert isinstance(attn, SplitAttention)
        _set_child(model, name, _fused(attn))
    return len(names)


def _stripped_copy(model: nn.Module, *, merge: bool, fuse: bool) -> nn.Module:
    """A deep copy of `model` without its LoRA layers (folded in with `merge`, else dropped),
    with stock attention when `fuse`, in eval mode and with `requires_grad` off."""
    out = strip_lora(copy.deepcopy(model), merge=merge)
    if fuse:
        fuse_attention(out)
    return out.eval().requires_grad_(False)


def merged_copy(model: nn.Module, *, fuse: bool = True) -> nn.Module:
    """A deep copy of `model` with every LoRA folded in and, with `fuse`, every split
    attention fused back (the fine-tuned model in its library's own layout), in eval mode.

    Args:
        model: the wrapper's model (left unchanged).
        fuse: fuse `SplitAttention` back into `nn.MultiheadAttention`.

    Returns:
        The copy, with `requires_grad` off.
    """
    return _stripped_copy(model, merge=True, fuse=fuse)


def pristine_copy(model: nn.Module, *, fuse: bool = True) -> nn.Module:
    """A deep copy of `model` without its LoRA (the base model the run started from; the
    LoRA is dropped, not merged) and, with `fuse`, with stock attention, in eval mode.

    Args:
        model: the wrapper's model (left unchanged).
        fuse: fuse `SplitAttention` back into `nn.MultiheadAttention`.

    Returns:
        The copy, with `requires_grad` off.
    """
    return _stripped_copy(model, merge=False, fuse=fuse)
