"""State dicts in the layout of the released DGS-Net checkpoints, built from tiny OpenAI-style
open_clip models, for the tests of `dgsnet.interop` that need a valid file to damage.

The layout (keys under `clip_model.`, `clip_model_frozen.clip_model_frozen.`,
`clip_model_frozen.img_frozen_fc.`, `img_fc.`, `text_fc.` for stage 2;
`clip_model_frozen.` and `img_frozen_fc.` for stage 1) is described in
docs/released-checkpoints.md.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from tests.helpers.released import released_clip, released_layers

RANK, ALPHA = 4, 6.0
SIZE = 56  # 7 x 7 patches of 8 pixels: the released patch-selection mosaic fits exactly
EMBED = 32


def openai_style_clip(seed: int = 0) -> nn.Module:
    """A tiny CLIP laid out like OpenAI's (head width 64, QuickGELU), in eval mode."""
    import open_clip

    torch.manual_seed(seed)
    return open_clip.CLIP(
        embed_dim=EMBED,
        quick_gelu=True,
        vision_cfg=dict(image_size=SIZE, patch_size=8, width=128, layers=2, head_width=64),
        text_cfg=dict(context_length=16, vocab_size=49408, width=64, heads=1, layers=1),
    ).eval()


def _head(g: torch.Generator) -> nn.Linear:
    head = nn.Linear(EMBED, 1)
    with torch.no_grad():
        head.weight.normal_(0, 0.1, generator=g)  # logits of order 1: unsaturated scores
    return head


def stage1_file(seed: int = 0) -> tuple[dict[str, Tensor], nn.Module, nn.Linear]:
    """`(state dict of a released stage-1 file, its CLIP, its teacher head)`."""
    clip = openai_style_clip(seed)
    head = _head(torch.Generator().manual_seed(seed + 1))
    sd = {f"clip_model_frozen.{k}": v for k, v in clip.state_dict().items()}
    sd.update({f"img_frozen_fc.{k}": v for k, v in head.state_dict().items()})
    return sd, clip, head


def stage2_file(seed: int = 0) -> dict[str, Tensor]:
    """The state dict of a released stage-2 file (unmerged LoRA, non-zero factors)."""
    teacher = openai_style_clip(seed)
    student = released_clip(teacher, r=RANK, alpha=ALPHA, dropout=0.8)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for layer in released_layers(student).values():
            layer.w_lora_A.copy_(torch.randn(layer.w_lora_A.shape, generator=g) * 0.3)
            layer.w_lora_B.copy_(torch.randn(layer.w_lora_B.shape, generator=g) * 0.3)
    sd = {f"clip_model.{k}": v for k, v in student.state_dict().items()}
    pristine = "clip_model_frozen.clip_model_frozen."
    sd.update({pristine + k: v for k, v in teacher.state_dict().items()})
    for prefix in ("clip_model_frozen.img_frozen_fc.", "img_fc.", "text_fc."):
        sd.update({prefix + k: v for k, v in _head(g).state_dict().items()})
    return sd


def write_released_files(folder: Path, seed: int = 0) -> None:
    """Write `folder/model_epoch_step1.pth` and `folder/model_epoch_step2.pth` (state dicts
    saved with `torch.save`, as the released code does): what the docs' import commands read
    in the docs tests."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(stage1_file(seed)[0], folder / "model_epoch_step1.pth")
    torch.save(stage2_file(seed), folder / "model_epoch_step2.pth")
