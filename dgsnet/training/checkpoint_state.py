"""What the trainer writes about a run: a checkpoint's `trainer_state.json` and the summary.

`Trainer` writes the files (atomically, through `dgsnet.training.state` and `dgsnet.io`);
the functions here only assemble their contents from the trainer's attributes.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..io import sha256_file
from ..wrapper import WEIGHTS_NAME
from .data import ResumableSampler
from .precision import scaler_state
from .seeding import rng_state
from .state import STATE_FORMAT, STATE_VERSION

if TYPE_CHECKING:
    from .trainer import Trainer

__all__ = ["checkpoint_state", "run_summary"]


def checkpoint_state(
    trainer: Trainer,
    phase: str,
    epoch: int,
    batch: int,
    tmp: Path,
    opt_meta: dict[str, Any] | None,
    cache_meta: dict[str, Any] | None,
) -> dict[str, Any]:
    """The body of a checkpoint's `trainer_state.json`, taken now (RNG states, time).

    Args:
        trainer: the trainer being checkpointed.
        phase: `"stage2"` (stage 2 still to run or under way) or `"done"`.
        epoch: epochs done.
        batch: batches done in the current epoch.
        tmp: the staging folder, which already holds the weights (their sha256 is recorded).
        opt_meta: what saving the optimizer returned, or `None` without one.
        cache_meta: what saving the teacher cache returned, or `None`.

    Returns:
        The JSON-ready mapping.
    """
    o, ts = trainer.options, trainer.ts
    return {
        "format": STATE_FORMAT,
        "format_version": STATE_VERSION,
        "phase": phase,
        "teacher_cache": cache_meta,
        "stage1_done": trainer.stage1_done,
        "epoch": epoch,
        "batch": batch,
        "global_step": ts.global_step,
        "skipped_steps": ts.skipped_steps,
        "stage1_history": ts.stage1_history,
        "sampler": {
            "seed": o.seed,
            "epoch": epoch,
            "start_batch": batch,
            "batch_size": o.batch_size,
            "permutation_seed": ResumableSampler(1, o.seed).permutation_seed(epoch),
            "shuffle": o.shuffle,
            "world_size": trainer.dist.world_size,
        },
        "rng": rng_state(),
        "optimizer": opt_meta,
        "scheduler": trainer.scheduler.state_dict() if trainer.scheduler is not None else None,
        "precision": trainer.options.precision,
        "grad_scaler": scaler_state(trainer.scaler),
        "resume_key": trainer.resume_key,
        "dataset": trainer.fingerprint,
        "weights_sha256": sha256_file(tmp / WEIGHTS_NAME),
        "log_offset": trainer.log.offset() if trainer.log.fh else 0,
        "time": time.time(),
    }


def run_summary(trainer: Trainer, final_dir: Path | None) -> dict[str, Any]:
    """The `summary` event of a finished run, logged and written as `summary.json`.

    Args:
        trainer: the finished trainer (`elapsed` set).
        final_dir: the `final/` folder written (rank 0), or `None`.

    Returns:
        The summary mapping.
    """
    return {
        "event": "summary",
        "stage": trainer.options.stage,
        "global_step": trainer.ts.global_step,
        "skipped_steps": trainer.ts.skipped_steps,
        "epochs": trainer.options.epochs,
        "stage1_history": trainer.ts.stage1_history,
        "resumed_from": trainer.resumed_from,
        "final_dir": os.fspath(final_dir) if final_dir else None,
        "elapsed_s": trainer.elapsed,
        "num_images": trainer.fingerprint["num_images"],
    }
