"""open_clip and OpenAI-CLIP style models (`encode_image` / `encode_text` / `visual`).

Both libraries build their ViT attention from `nn.MultiheadAttention`, whose query, key and
value projections live in one fused `in_proj_weight`. peft can only adapt such a module by
adding the LoRA delta to that weight in place and subtracting it afterwards, which drifts the
base weights a little at every step (so a teacher that is "the same weights with the adapters
off" would slowly stop being the pre-trained model). `SplitAttention` is an exact
re-parametrisation with separate `q_proj`/`k_proj`/`v_proj`/`out_proj` linear layers;
peft's `Linear` LoRA then adds `B A x` beside an untouched base layer.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any, Protocol, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import DualEncoder, Tokens, first_param

QKV = ("q_proj", "k_proj", "v_proj")


class _CLIPModel(Protocol):
    """The members of an open_clip / OpenAI CLIP model that the adapter calls."""

    visual: nn.Module

    def encode_image(self, image: Tensor) -> Tensor: ...

    def encode_text(self, text: Tensor) -> Tensor: ...


class _Transformer(Protocol):
    """open_clip's `Transformer`: the block list of the image tower."""

    resblocks: nn.ModuleList


class _VisionTower(Protocol):
    """open_clip's `VisionTransformer`, the members the split forward uses."""

    transformer: _Transformer
    proj: Tensor | None

    def _embeds(self, x: Tensor) -> Tensor: ...

    def _pool(self, x: Tensor) -> tuple[Tensor, Tensor]: ...


class _ResidualBlock(Protocol):
    """open_clip's `ResidualAttentionBlock`, the members `_class_token_block` uses."""

    ln_1: nn.Module
    ln_2: nn.Module
    ls_1: nn.Module
    ls_2: nn.Module
    mlp: nn.Module

    def attention(self, q_x: Tensor, k_x: Tensor, v_x: Tensor) -> Tensor: ...


class SplitAttention(nn.Module):
    """Drop-in replacement of a self-attention `nn.MultiheadAttention` with separate q/k/v.

    The same call signature and the same result (up to float rounding), with the fused
    `in_proj_weight` split into `q_proj`, `k_proj` and `v_proj` linear layers beside
    `out_proj`. The authors' released DGS-Net code does the same split: its LoRA layers are
    those of the public CLIP-LoRA code (`loralib/layers.py`), which replace each attention of
    the vision blocks by separate q, k, v and output projections.

    Args:
        mha: the attention to replace (its weights are copied).

    Raises:
        ValueError: not self-attention with equal q/k/v dimensions, or `add_bias_kv` /
            `add_zero_attn` set.
    """

    # registered with setattr in __init__; declared for the type checker
    q_proj: nn.Linear
    k_proj: nn.Linear
    v_proj: nn.Linear
    out_proj: nn.Linear

    def __init__(self, mha: nn.MultiheadAttention) -> None:
        super().__init__()
        if not mha._qkv_same_embed_dim or mha.in_proj_weight is None:
            raise ValueError(
                "SplitAttention supports self-attention with equal q/k/v dimensions only"
            )
        if mha.bias_k is not None or mha.add_zero_attn:
            raise ValueError("SplitAttention does not support add_bias_kv or add_zero_attn")
        d = mha.embed_dim
        self.embed_dim = d
        self.num_heads = mha.num_heads
        self.batch_first = mha.batch_first
        self.dropout = mha.dropout
        has_bias = mha.in_proj_bias is not None
        w = mha.in_proj_weight.detach()
        b = mha.in_proj_bias.detach() if has_bias else None
        for i, name in enumerate(QKV):
            lin = nn.Linear(d, d, bias=has_bias, device=w.device, dtype=w.dtype)
            with torch.no_grad():
                lin.weight.copy_(w[i * d : (i + 1) * d])
                if b is not None:
                    lin.bias.copy_(b[i * d : (i + 1) * d])
            lin.weight.requires_grad_(mha.in_proj_weight.requires_grad)
            if lin.bias is not None:
                lin.bias.requires_grad_(mha.in_proj_weight.requires_grad)
            setattr(self, name, lin)
        out = nn.Linear(d, d, bias=mha.out_proj.bias is not None, device=w.device, dtype=w.dtype)
        out.load_state_dict(mha.out_proj.state_dict())
        out.requires_grad_(mha.out_proj.weight.requires_grad)
        self.out_proj = out

    def forward(
        self,
        query: Tensor,
        key: Tensor | None = None,
        value: Tensor | None = None,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = False,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, None]:
        if key_padding_mask is not None:
            raise ValueError("SplitAttention (image tower) does not support key_padding_mask")
        if need_weights:
            raise ValueError("SplitAttention does not return attention weights (need_weights=True)")
        key = query if key is None else key
        value = query if value is None else value
        if not self.batch_first:  # (L, N, E) -> (N, L, E)
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        n, lq, _ = query.shape
        h, hd = self.num_heads, self.embed_dim // self.num_heads
        q = self.q_proj(query).view(n, lq, h, hd).transpose(1, 2)
        k = self.k_proj(key).view(n, key.shape[1], h, hd).transpose(1, 2)
        v = self.v_proj(value).view(n, value.shape[1], h, hd).transpose(1, 2)
        if attn_mask is not None and attn_mask.dtype == torch.bool:
            # nn.MultiheadAttention: True = masked out; SDPA: True = attend.
            attn_mask = ~attn_mask
        if attn_mask is not None and attn_mask.dim() == 3:
            attn_mask = attn_mask.view(n, h, lq, -1)
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attn_mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=is_causal,
        )
        out = self.out_proj(out.transpose(1, 2).reshape(n, lq, self.embed_dim))
        if not self.batch_first:
            out = out.transpose(0, 1)
        return out, None


def split_attention(module: nn.Module) -> int:
    """Replace every `nn.MultiheadAttention` inside `module` by `SplitAttention`, in place.

    Args:
        module: the module to walk (recursively).

    Returns:
        How many attentions were replaced.
    """
    count = 0
    for name, child in list(module.named_children()):
        if isinstance(child, nn.MultiheadAttention):
            setattr(module, name, SplitAttention(child))
            count += 1
        else:
            count += split_attention(child)
    return count


class OpenCLIPEncoder(DualEncoder):
    """Adapter for open_clip `CLIP` / `CustomTextCLIP` and OpenAI `clip` models.

    LoRA targets `q_proj`, `k_proj`, `v_proj` (after `SplitAttention`), `c_fc` and
    `c_proj`; the DGS-Net reference adapts q, k and v only (`DGSConfig.reference()`).

    Args:
        model: the open_clip or OpenAI CLIP model.
        tokenizer: e.g. `open_clip.get_tokenizer(name)` or OpenAI `clip.tokenize`.
    """

    kind = "open_clip"
    block_pattern = "resblocks"
    default_lora_targets = ("q_proj", "k_proj", "v_proj", "c_fc", "c_proj")

    @property
    def _clip(self) -> _CLIPModel:
        return cast(_CLIPModel, self.model)

    @property
    def _vision(self) -> _VisionTower:
        return cast(_VisionTower, self.image_tower)

    @property
    def image_tower(self) -> nn.Module:
        return self._clip.visual

    @property
    def image_size(self) -> tuple[int, int] | None:
        size = getattr(self.model.visual, "image_size", None)
        if size is None:
            res = getattr(self.model.visual, "input_resolution", None)  # OpenAI clip
            size = res
        if size is None:
            return None
        if isinstance(size, int):
            return (size, size)
        return (int(size[0]), int(size[1]))

    @property
    def context_length(self) -> int:
        n: Any = getattr(self.model, "context_length", None)
        if n is None:
            n = getattr(getattr(self.model, "text", None), "context_length", 77)
        return int(n)

    def encode_image(self, pixels: Tensor) -> Tensor:
        return self._clip.encode_image(pixels)

    def encode_text(self, tokens: Tokens) -> Tensor:
        if not isinstance(tokens, Tensor):
            raise TypeError(
                f"open_clip text tokens must be a LongTensor, got {type(tokens).__name__}"
            )
        if tokens.dim() != 2 or tokens.shape[1] != self.context_length:
            raise ValueError(
                f"open_clip text tokens must have shape (B, {self.context_length}) (the model's "
                f"context length), got {tuple(tokens.shape)}"
            )
        return self._clip.encode_text(tokens)

    def tokenize(self, texts: Sequence[str]) -> Tokens:
        if self.tokenizer is None:
            raise ValueError(
                "captions were given as strings but no tokenizer was passed: use "
                "DGSWrapper(model, tokenizer=open_clip.get_tokenizer(name)) or pass token ids"
            )
        params = _call_params(self.tokenizer)
        kwargs: dict[str, Any] = {}
        if "context_length" in params:
            kwargs["context_length"] = self.context_length
        if "truncate" in params:  # OpenAI clip.tokenize raises on long captions unless asked
            kwargs["truncate"] = True
        tokens: Tensor = self.tokenizer(list(texts), **kwargs)
        return tokens[:, : self.context_length]

    @property
    def text_entry(self) -> str:
        return f"{type(self.model).__name__}.encode_text"

    def probe_tokens(self) -> Tokens:
        if self.tokenizer is not None:
            return self.tokenize(["a photo"])
        device = first_param(self.model).device
        return torch.zeros(1, self.context_length, dtype=torch.long, device=device)

    def prepare_for_lora(self, targets: Sequence[str]) -> None:
        if any(t in QKV for t in targets):
            # only the transformer blocks: an attentional pooler may be cross-attention
            tower = getattr(self.image_tower, "transformer", self.image_tower)
            split_attention(tower)

    def blocks(self) -> Sequence[nn.Module] | None:
        tr = getattr(self.image_tower, "transformer", None)
        return getattr(tr, "resblocks", None)

    def _supports_split(self) -> bool:
        v = self.image_tower
        return all(hasattr(v, a) for a in ("_embeds", "_pool", "proj", "transformer"))

    def encode_image_split(self, pixels: Tensor, start: int) -> tuple[Tensor, Any]:
        if not self._supports_split():
            raise NotImplementedError("this image tower does not expose _embeds/_pool")
        v = self._vision
        x = v._embeds(pixels)
        batch_first = getattr(v.transformer, "batch_first", True)
        if not batch_first:
            x = x.transpose(0, 1).contiguous()
        for blk in v.transformer.resblocks[:start]:
            x = blk(x)
        return x, batch_first

    def _class_token_pooling(self) -> bool:
        """True when the features read only the class token of the last block's output.

        That is `pool_type="tok"`, no attentional pooler, and a plain residual block at the
        end.
        """
        from open_clip.transformer import ResidualAttentionBlock

        v = self._vision
        if not self._supports_split() or getattr(v, "attn_pool", None) is not None:
            return False
        if getattr(v, "pool_type", None) != "tok":
            return False
        if getattr(v.transformer, "grad_checkpointing", False):
            return False
        last = v.transformer.resblocks[-1]
        return type(last) is ResidualAttentionBlock and not hasattr(last, "ln_1_kv")

    def encode_image_from(
        self, hidden: Tensor, state: Any, start: int, pooled_only: bool = False
    ) -> Tensor:
        v = self._vision
        blocks = v.transformer.resblocks
        class_only = pooled_only and start < len(blocks) and self._class_token_pooling()
        x = hidden
        for blk in blocks[start : len(blocks) - 1 if class_only else len(blocks)]:
            x = blk(x)
        if class_only:
            last = cast(_ResidualBlock, blocks[-1])
            x = _class_token_block(last, x, batch_first=bool(state))
        if not state:
            x = x.transpose(0, 1)
        pooled, _ = v._pool(x)
        if v.proj is not None:
            pooled = pooled @ v.proj
        return pooled

    def encode_image_pooled(self, pixels: Tensor) -> Tensor:
        if not self._class_token_pooling():
            return self.encode_image(pixels)
        hidden, state = self.encode_image_split(pixels, 0)
        return self.encode_image_from(hidden, state, 0, pooled_only=True)

    def feature_dim(self, device: torch.device | None = None) -> int:
        proj = getattr(self.image_tower, "proj", None)
        if isinstance(proj, Tensor):
            return int(proj.shape[1])
        dim = getattr(self.image_tower, "output_dim", None)
        if dim is not None:
            return int(dim)
        p = first_param(self.image_tower)
        h, w = self.image_size or (224, 224)
        with torch.no_grad():
            probe = torch.zeros(1, 3, h, w, device=p.device, dtype=p.dtype)
            return int(self.encode_image(probe).shape[-1])

    def describe(self) -> dict[str, Any]:
        blocks = self.blocks()
        return {
            "kind": self.kind,
            "image_size": self.image_size,
            "num_blocks": len(blocks) if blocks is not None else None,
            "feature_dim": self.feature_dim(),
        }


def _class_token_block(blk: _ResidualBlock, x: Tensor, batch_first: bool) -> Tensor:
    """The last residual block evaluated for the class token only.

    Its query attends to every token, but only its own row is computed (the pooled features
    read nothing else). The same math as `blk(x)[:, :1]`; about 1/L of the block's cost.
    """
    kv = blk.ln_1(x)
    q = kv[:, :1] if batch_first else kv[:1]
    res = x[:, :1] if batch_first else x[:1]
    out: Tensor = res + blk.ls_1(blk.attention(q_x=q, k_x=kv, v_x=kv))
    return out + blk.ls_2(blk.mlp(blk.ln_2(out)))


def _call_params(fn: Any) -> set[str]:
    try:
        target = fn if inspect.isfunction(fn) or inspect.ismethod(fn) else fn.__call__
        return set(inspect.signature(target).parameters)
    except (TypeError, ValueError):
        return set()
