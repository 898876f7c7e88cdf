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

from tests.helpers.released import SIZE, openai_style_clip, released_student

__all__ = ["SIZE", "stage1_file", "stage2_file", "write_released_files"]
EMBED = 32


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
    student, g = released_student(teacher, seed)
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
