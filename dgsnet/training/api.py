"""`train`: one call that validates the options and runs a `Trainer`."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch.utils.data import Dataset

from ..errors import TrainingConfigError
from ..wrapper import DGSWrapper
from .options import TrainOptions
from .trainer import Trainer, TrainResult, TrainState

__all__ = ["train"]


def train(
    wrapper: DGSWrapper,
    data: Dataset | Sequence[Dataset],
    out_dir: str | os.PathLike[str],
    *,
    stage: int | str = "both",
    epochs: int = 1,
    stage1_epochs: int = 3,
    batch_size: int = 32,
    lr: float = 1e-4,
    stage1_lr: float = 1e-4,
    betas: tuple[float, float] = (0.9, 0.999),
    lr_step: int = 10,
    lr_gamma: float = 0.9,
    seed: int = 0,
    shuffle: bool = True,
    resume: bool | None = None,
    init_from: str | os.PathLike[str] | None = None,
    save_every: int = 500,
    log_every: int = 1,
    on_nonfinite: str = "raise",
    num_workers: int = 0,
    deterministic_transform: bool = False,
    deterministic: bool = False,
    progress: bool = True,
    callbacks: Sequence[Callable[[str, TrainState], None]] = (),
    model_info: Mapping[str, Any] | None = None,
    run_info: Mapping[str, Any] | None = None,
    handle_signals: bool = False,
    precompute_text: bool = True,
    tensorboard: bool = False,
    precision: str = "fp32",
    compile: bool = False,
    val_data: Dataset | Sequence[Dataset] | None = None,
    val_fraction: float = 0.0,
    val_every: int = 0,
    val_metric: str = "auto",
    patience: int = 0,
) -> TrainResult:
    """Two-stage DGS-Net training with resumable checkpoints (see `dgsnet.training`).

    Every other parameter (`out_dir`, `stage`, `epochs`, ...) is the field of
    `TrainOptions` of the same name, documented there and checked once by it.

    Args:
        wrapper: the `DGSWrapper` to train (in place), on its device.
        data: a dataset of `dgsnet.data.Sample` items (e.g. a
            `DetectionFolder` with a training transform and captions), or a
            list of them.
        callbacks: `callback(event, TrainState)` functions (rank 0 and others alike).
        val_data: a validation dataset (or list) of `Sample` items, scored after every
            epoch or every `val_every` steps (`dgsnet.training.monitor`); exclusive with
            `val_fraction`.

    Returns:
        The `TrainResult` (steps, skipped steps, stage-1 losses, `final/`).

    Raises:
        TrainingConfigError: an option is invalid, the data is empty, or a resumed run's
            settings or data differ from its checkpoint's.
        CheckpointError: the checkpoint to resume is damaged.
        NonFiniteError: a non-finite loss or gradient with `on_nonfinite="raise"`.
        TrainingInterrupted: SIGINT/SIGTERM with `handle_signals` (after a checkpoint).

    Under `torchrun` (`WORLD_SIZE > 1`) the process group is joined, stage 2 runs under
    `DistributedDataParallel` on sharded batches (`batch_size` per process), stage 1 runs
    the (cheap) linear probe on the full data on every rank and keeps rank 0's head, and only
    rank 0 logs, shows progress and writes checkpoints (between barriers).
    """
    if not isinstance(wrapper, DGSWrapper):
        raise TrainingConfigError(f"train needs a DGSWrapper, got {type(wrapper).__name__}")
    options = TrainOptions(
        out_dir,
        stage=stage,
        epochs=epochs,
        stage1_epochs=stage1_epochs,
        batch_size=batch_size,
        lr=lr,
        stage1_lr=stage1_lr,
        betas=betas,
        lr_step=lr_step,
        lr_gamma=lr_gamma,
        seed=seed,
        shuffle=shuffle,
        resume=resume,
        init_from=init_from,
        save_every=save_every,
        log_every=log_every,
        on_nonfinite=on_nonfinite,
        num_workers=num_workers,
        deterministic_transform=deterministic_transform,
        deterministic=deterministic,
        progress=progress,
        model_info=model_info,
        run_info=run_info,
        handle_signals=handle_signals,
        precompute_text=precompute_text,
        tensorboard=tensorboard,
        precision=precision,
        compile=compile,
        val_fraction=val_fraction,
        val_every=val_every,
        val_metric=val_metric,
        patience=patience,
    )
    return Trainer(wrapper, data, options, callbacks=callbacks, val_data=val_data).run()
