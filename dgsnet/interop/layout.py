"""The layout of the released DGS-Net checkpoints and what an import records.

The key prefixes of the two released stages (`model_epoch_step1.pth`,
`model_epoch_step2.pth` of HorizonTEL/DGS-Net), the released LoRA settings, the names of a run
folder's parts, and the two records: `ReleasedImport` (what was found) and
`ReleasedCheckpoint` (the validated parts).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

__all__ = [
    "BASE_DIR",
    "FINAL_DIR",
    "HEADS",
    "IMPORT_NAME",
    "RELEASED_ALPHA",
    "RELEASED_DROPOUT",
    "RELEASED_RANK",
    "STUDENT",
    "TEACHER1",
    "TEACHER2",
    "TEACHER_HEAD1",
    "TEACHER_HEAD2",
    "ReleasedCheckpoint",
    "ReleasedImport",
]

RELEASED_ALPHA = 6.0
"""A checkpoint (only the rank can, from the shapes of A and B)."""
RELEASED_DROPOUT = 0.8
RELEASED_RANK = 6  # used for a stage-1 file only, which holds no LoRA

STUDENT = "clip_model."
"""Prefixes of the two released layouts."""
TEACHER2 = "clip_model_frozen.clip_model_frozen."
TEACHER_HEAD2 = "clip_model_frozen.img_frozen_fc."
TEACHER1 = "clip_model_frozen."
TEACHER_HEAD1 = "img_frozen_fc."
HEADS = ("img_fc.", "text_fc.")

#: scalar entries of OpenAI's own checkpoints that are no weights (its loader drops them too)
OPENAI_META_KEYS = ("input_resolution", "context_length", "vocab_size")
QKV_NAMES = ("q_proj", "k_proj", "v_proj")
BLOCK_PATTERN = re.compile(r"^visual\.transformer\.resblocks\.(\d+)\.attn\.")

BASE_DIR = "base_model"
FINAL_DIR = "final"
IMPORT_NAME = "released_import.json"


@dataclass(frozen=True)
class ReleasedImport:
    """What was found in a released checkpoint (stored as `wrapper.released_import` and in
    the run folder's `released_import.json`).

    Attributes:
        source: the file read.
        sha256: its SHA-256.
        stage: 1 (teacher head only) or 2 (student LoRA and the three heads).
        merged: stage 2: `True` if the file holds merged q/k/v weights (saved in eval mode),
            `False` if unmerged; `None` for stage 1 or when every `B` is zero (the two
            cases are then the same weights).
        rank: the LoRA rank (from the shape of `w_lora_A`; stage 1: the released default).
        alpha: the LoRA alpha used (not stored in the file).
        scaling: `alpha / sqrt(rank)`, the released layers' factor.
        model_config: the open_clip model config of the CLIP in the file.
        weight_deviation: the largest absolute difference between the student's q/k/v
            weights and what the case found predicts (pristine weight, or pristine + scaling
            * B A): float rounding, `0.0` when bit-exact. The import always uses the
            pristine weight plus the LoRA branch.
    """

    source: str
    sha256: str
    stage: int
    merged: bool | None
    rank: int
    alpha: float
    scaling: float
    model_config: dict[str, Any] = field(default_factory=dict)
    weight_deviation: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class ReleasedCheckpoint:
    """A validated released checkpoint, split into its parts (see `read_released`).

    `base`: the pristine CLIP's state dict (open_clip / OpenAI names); `lora`:
    `{"transformer.resblocks.{i}.attn.{q,k,v}_proj": (A, B)}` (names relative to the image
    tower; empty for stage 1); `teacher_head`, `image_head`, `text_head`: `(weight,
    bias)` (the last two `None` for stage 1).
    """

    info: ReleasedImport
    base: dict[str, Tensor]
    lora: dict[str, tuple[Tensor, Tensor]]
    teacher_head: tuple[Tensor, Tensor]
    image_head: tuple[Tensor, Tensor] | None = None
    text_head: tuple[Tensor, Tensor] | None = None
