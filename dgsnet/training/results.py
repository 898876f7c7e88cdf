"""The values a run hands out: `TrainState` (to callbacks, during the run) and `TrainResult`
(what `train` and `Trainer.run` return)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..wrapper import DGSWrapper

__all__ = ["TrainResult", "TrainState"]


@dataclass
class TrainState:
    """Handed to callbacks `callback(event, state)`. Events: `"train_begin"`,
    `"stage1_end"`, `"step_end"`, `"checkpoint"`, `"epoch_end"`, `"train_end"`."""

    wrapper: DGSWrapper
    """The wrapper being trained."""
    out_dir: Path
    """The run's output folder."""
    rank: int = 0
    """This process's rank (0 without torchrun)."""
    stage: int = 1
    """The stage running: 1 (the teacher head) or 2 (LoRA and the heads)."""
    epoch: int = 0
    """The stage-2 epoch, counted from 0."""
    batch: int = 0
    """The batch within the epoch, counted from 1 (0 before the first)."""
    global_step: int = 0
    """Stage-2 steps done so far (skipped ones included)."""
    skipped_steps: int = 0
    """Stage-2 steps skipped for a non-finite loss or gradient (or an fp16 overflow)."""
    optimizer: torch.optim.Optimizer | None = None
    """The stage-2 Adam optimizer, once stage 2 starts."""
    scheduler: Any = None
    """The stage-2 learning-rate schedule, once stage 2 starts."""
    model: nn.Module | None = None
    """The module the step calls: the wrapper, or its `DistributedDataParallel`."""
    record: dict[str, Any] = field(default_factory=dict)
    """The last step's log record (loss, its parts, the surgery statistics, lr)."""
    stage1_history: list[float] = field(default_factory=list)
    """The stage-1 teacher-head loss of each epoch."""


@dataclass
class TrainResult:
    """What `train` returns."""

    wrapper: DGSWrapper
    """The trained wrapper."""
    out_dir: Path
    """The run's output folder."""
    final_dir: Path | None
    """`out_dir/final`, the trained weights (`None` on ranks other than 0)."""
    global_step: int
    """Stage-2 steps done."""
    skipped_steps: int
    """Stage-2 steps skipped (non-finite, or an fp16 overflow)."""
    epochs: int
    """The stage-2 epochs of the run's options."""
    stage1_history: list[float]
    """The stage-1 teacher-head loss of each epoch."""
    resumed_from: int | None
    """The global step the run resumed from, or `None` for a fresh run."""
    elapsed_s: float
    """Wall-clock seconds of this call."""
