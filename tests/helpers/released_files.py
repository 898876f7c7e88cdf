"""Synthetic files in the layout of the released DGS-Net checkpoints (`model_epoch_step1.pth`,
`model_epoch_step2.pth`), from a tiny OpenAI-style open_clip model with random LoRA factors:
what the docs' import commands read in the docs tests."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from tests.helpers.released import released_clip, released_layers

IMAGE_SIZE = 56  # 7 x 7 patches of 8 pixels: the patch-selection mosaic fits exactly


def _openai_style_clip(seed: int) -> nn.Module:
    import open_clip

    torch.manual_seed(seed)
    return open_clip.CLIP(
        embed_dim=32,
        quick_gelu=True,
        vision_cfg=dict(image_size=IMAGE_SIZE, patch_size=8, width=128, layers=2, head_width=64),
        text_cfg=dict(context_length=16, vocab_size=49408, width=64, heads=1, layers=1),
    ).eval()


def _head(g: torch.Generator) -> nn.Linear:
    head = nn.Linear(32, 1)
    with torch.no_grad():
        head.weight.normal_(0, 0.1, generator=g)
    return head


def write_released_files(folder: Path, seed: int = 0, rank: int = 6, alpha: float = 6.0) -> None:
    """Write `folder/model_epoch_step1.pth` and `folder/model_epoch_step2.pth` (state dicts
    saved with `torch.save`, as the released code does), unmerged LoRA of rank `rank`."""
    folder.mkdir(parents=True, exist_ok=True)
    teacher = _openai_style_clip(seed)
    student = released_clip(teacher, r=rank, alpha=alpha, dropout=0.8)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for layer in released_layers(student).values():
            layer.w_lora_A.copy_(torch.randn(layer.w_lora_A.shape, generator=g) * 0.3)
            layer.w_lora_B.copy_(torch.randn(layer.w_lora_B.shape, generator=g) * 0.3)
    teacher_head, img_fc, text_fc = _head(g), _head(g), _head(g)
    pristine = teacher.state_dict()
    step1 = {f"clip_model_frozen.{k}": v for k, v in pristine.items()}
    step1.update({f"img_frozen_fc.{k}": v for k, v in teacher_head.state_dict().items()})
    torch.save(step1, folder / "model_epoch_step1.pth")
    step2 = {f"clip_model.{k}": v for k, v in student.state_dict().items()}
    step2.update({f"clip_model_frozen.clip_model_frozen.{k}": v for k, v in pristine.items()})
    step2.update(
        {f"clip_model_frozen.img_frozen_fc.{k}": v for k, v in teacher_head.state_dict().items()}
    )
    step2.update({f"img_fc.{k}": v for k, v in img_fc.state_dict().items()})
    step2.update({f"text_fc.{k}": v for k, v in text_fc.state_dict().items()})
    torch.save(step2, folder / "model_epoch_step2.pth")
