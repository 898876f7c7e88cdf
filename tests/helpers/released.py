"""The released DGS-Net LoRA arithmetic, written for the tests from its description alone.

The released code (HorizonTEL/DGS-Net, ``models/loralib/utils.py`` calling the public
CLIP-LoRA ``loralib/layers.py``) replaces every vision block's ``nn.MultiheadAttention`` by
separate ``q_proj``, ``k_proj``, ``v_proj`` and ``proj`` linears; q, k and v compute
``W x + b + scaling * dropout(x) A^T B^T`` with ``scaling = alpha / sqrt(r)``, the dropout on
the LoRA branch's input only and in training mode only; the out projection and the MLP stay
as they are. Parameters are named ``w_lora_A`` (r x in) and ``w_lora_B`` (out x r). Switching
to eval mode merges: ``weight += scaling * B A`` in place.

Nothing here uses dgsnet or peft: the tests compare dgsnet against this. The last section
builds whole files in the released stage-2 layout from tiny OpenAI-style open_clip models
(`make_released`), for the interop and command-line tests.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

QKV = ("q_proj", "k_proj", "v_proj")


class ReleasedLoRALinear(nn.Linear):
    def __init__(self, weight: Tensor, bias: Tensor | None, r: int, alpha: float, dropout: float):
        out_f, in_f = weight.shape
        super().__init__(
            in_f, out_f, bias=bias is not None, device=weight.device, dtype=weight.dtype
        )
        with torch.no_grad():
            self.weight.copy_(weight)
            if bias is not None:
                self.bias.copy_(bias)
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        self.w_lora_A = nn.Parameter(weight.new_empty(r, in_f))
        self.w_lora_B = nn.Parameter(weight.new_zeros(out_f, r))
        nn.init.kaiming_uniform_(self.w_lora_A, a=math.sqrt(5))
        self.scaling = alpha / math.sqrt(r)
        self.lora_dropout = nn.Dropout(dropout)
        self.merged = False

    def delta(self) -> Tensor:
        return self.scaling * (self.w_lora_B @ self.w_lora_A)

    def merge(self) -> None:
        """What the released layer does on ``.train(False)``: fold the branch into weight."""
        with torch.no_grad():
            self.weight += self.delta()
        self.merged = True

    def forward(self, x: Tensor) -> Tensor:
        out = F.linear(x, self.weight, self.bias)
        if self.merged:
            return out
        xd = self.lora_dropout(x) if self.training else x
        return out + self.scaling * ((xd @ self.w_lora_A.T) @ self.w_lora_B.T)


class ReleasedAttention(nn.Module):
    """Self-attention with separate q/k/v (LoRA) and out (plain) projections, computed by hand."""

    def __init__(self, mha: nn.MultiheadAttention, r: int, alpha: float, dropout: float):
        super().__init__()
        d = mha.embed_dim
        self.num_heads = mha.num_heads
        self.batch_first = mha.batch_first
        w, b = mha.in_proj_weight.detach(), mha.in_proj_bias
        for i, name in enumerate(QKV):
            bias = b.detach()[i * d : (i + 1) * d] if b is not None else None
            setattr(self, name, ReleasedLoRALinear(w[i * d : (i + 1) * d], bias, r, alpha, dropout))
        self.proj = nn.Linear(
            d, d, bias=mha.out_proj.bias is not None, device=w.device, dtype=w.dtype
        )
        self.proj.load_state_dict(mha.out_proj.state_dict())
        self.proj.requires_grad_(False)

    def forward(self, query, key=None, value=None, need_weights=False, attn_mask=None, **_):
        key = query if key is None else key
        value = query if value is None else value
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        n, lq, d = query.shape
        h = self.num_heads
        hd = d // h
        q = self.q_proj(query).view(n, lq, h, hd).transpose(1, 2)
        k = self.k_proj(key).view(n, -1, h, hd).transpose(1, 2)
        v = self.v_proj(value).view(n, -1, h, hd).transpose(1, 2)
        scores = q @ k.transpose(-1, -2) / math.sqrt(hd)
        if attn_mask is not None:
            scores = scores + attn_mask
        out = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(n, lq, d)
        out = self.proj(out)
        if not self.batch_first:
            out = out.transpose(0, 1)
        return out, None


def released_clip(
    model: nn.Module, r: int = 6, alpha: float = 6.0, dropout: float = 0.8
) -> nn.Module:
    """A deep copy of an open_clip model with the released LoRA attention in every vision block."""
    model = copy.deepcopy(model)
    for blk in model.visual.transformer.resblocks:
        blk.attn = ReleasedAttention(blk.attn, r, alpha, dropout)
    for n, p in model.named_parameters():
        p.requires_grad_("w_lora_" in n)
    return model


def released_layers(model: nn.Module) -> dict[str, ReleasedLoRALinear]:
    """``{"transformer.resblocks.{i}.attn.{q,k,v}_proj": layer}`` (names relative to visual)."""
    return {n: m for n, m in model.visual.named_modules() if isinstance(m, ReleasedLoRALinear)}


def copy_lora_from_wrapper(released: nn.Module, wrapper) -> None:
    """Copy dgsnet's peft LoRA A/B into the released layers of the same names."""
    tower = wrapper.encoder.image_tower
    with torch.no_grad():
        for name, layer in released_layers(released).items():
            peft_layer = tower.get_submodule(name)
            layer.w_lora_A.copy_(peft_layer.lora_A["default"].weight)
            layer.w_lora_B.copy_(peft_layer.lora_B["default"].weight)


# -- whole released files from tiny OpenAI-style models ------------------------------------------
RANK, ALPHA = 4, 6.0
SIZE = 56  # 7 x 7 patches of 8 pixels: the patch-selection mosaic fits exactly


def openai_style_clip(seed=0, width=128, layers=2):
    """A tiny CLIP laid out like OpenAI's: head width 64, QuickGELU."""
    import open_clip

    torch.manual_seed(seed)
    return open_clip.CLIP(
        embed_dim=32,
        quick_gelu=True,
        vision_cfg=dict(image_size=SIZE, patch_size=8, width=width, layers=layers, head_width=64),
        text_cfg=dict(context_length=16, vocab_size=49408, width=64, heads=1, layers=1),
    ).eval()


def released_student(teacher: nn.Module, seed: int = 0) -> tuple[nn.Module, torch.Generator]:
    """The released LoRA model around a copy of `teacher` (rank `RANK`, alpha `ALPHA`) with
    non-zero A and B drawn from a generator seeded `seed + 1`; returns that generator too, for
    the heads to be drawn next."""
    student = released_clip(teacher, r=RANK, alpha=ALPHA, dropout=0.8)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for layer in released_layers(student).values():
            layer.w_lora_A.copy_(torch.randn(layer.w_lora_A.shape, generator=g) * 0.3)
            layer.w_lora_B.copy_(torch.randn(layer.w_lora_B.shape, generator=g) * 0.3)
    return student, g


def make_released(seed=0, merged=False, width=128, round_trips=0):
    """(state dict in the released stage-2 layout, the released model, the heads, the
    teacher). ``round_trips``: merge/unmerge cycles before saving, as the released script
    makes around each validation (float rounding drift)."""
    teacher = openai_style_clip(seed, width=width)
    student, g = released_student(teacher, seed)
    heads = {}
    for name in ("img_fc", "text_fc", "img_frozen_fc"):
        heads[name] = nn.Linear(32, 1)
        with torch.no_grad():
            # logits of order 1 (scores away from 0 and 1): a well-conditioned comparison
            heads[name].weight.normal_(0, 0.1, generator=g)
    for layer in released_layers(student).values():
        for _ in range(round_trips):
            with torch.no_grad():
                d = layer.delta()
                layer.weight += d
                layer.weight -= d
        if merged:
            layer.merge()
    sd = {f"clip_model.{k}": v for k, v in student.state_dict().items()}
    sd.update(
        {f"clip_model_frozen.clip_model_frozen.{k}": v for k, v in teacher.state_dict().items()}
    )
    sd.update(
        {
            f"clip_model_frozen.img_frozen_fc.{k}": v
            for k, v in heads["img_frozen_fc"].state_dict().items()
        }
    )
    for name in ("img_fc", "text_fc"):
        sd.update({f"{name}.{k}": v for k, v in heads[name].state_dict().items()})
    return sd, student.eval(), heads, teacher


def save_released(folder: Path, **kw: Any) -> tuple[Path, nn.Module, dict[str, nn.Linear]]:
    """`make_released(**kw)` saved as `folder/model_epoch_step2.pth` (the released file's
    name): `(its path, the released model, the heads)`."""
    sd, student, heads, _ = make_released(**kw)
    path = folder / "model_epoch_step2.pth"
    torch.save(sd, path)
    return path, student, heads


def released_scores(student, head, images):
    with torch.no_grad():
        return torch.sigmoid(head(student.encode_image(images))).flatten()
