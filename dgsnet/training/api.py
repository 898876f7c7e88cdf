"""``train``: one call that validates the options and runs a :class:`Trainer`."""

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
) -> TrainResult:
    """Two-stage DGS-Net training with resumable checkpoints (see the module docstring).

    Args:
        wrapper: the :class:`DGSWrapper` to train (in place), on its device.
        data: a dataset of :class:`dgsnet.data.Sample` items (e.g. a
            :class:`~dgsnet.data.DetectionFolder` with a training transform and captions), or a
            list of them.
        out_dir: output folder: ``last/`` (training state, replaced atomically), ``final/``
            (``save_pretrained`` weights), ``train_log.jsonl``, ``run.json``, ``summary.json``.
        stage: ``1`` (teacher head only), ``2`` (LoRA + heads; needs a teacher head from
            ``init_from`` unless alignment is off) or ``"both"``.
        epochs / stage1_epochs / batch_size / lr / stage1_lr / betas: stage 2 uses Adam(lr,
            betas) with the learning rate multiplied by ``lr_gamma`` every ``lr_step`` epochs.
        seed: drives the permutation, the augmentation and the LoRA dropout (reproducible).
        resume: ``None`` (default) resumes from ``out_dir/last`` when it exists, ``True``
            requires it, ``False`` deletes any previous training state and starts over.
        init_from: a checkpoint folder (``save_pretrained`` format) whose weights initialise a
            fresh run, e.g. a stage-1 run's ``final/`` for ``stage=2``.
        save_every: write ``last/`` every this many stage-2 steps (0: at epoch ends only); it
            is also written after stage 1 and at every epoch end.
        on_nonfinite: ``"raise"`` (:class:`NonFiniteError` naming the step) or ``"skip"``
            (the step's update is dropped: weights and optimizer state untouched; counted).
        num_workers: DataLoader worker processes.
        deterministic_transform: declare that the training transform is deterministic; only
            then are dataset indices passed to the wrapper (teacher cache). A random flip or
            patch shuffle makes it non-deterministic (:attr:`ModelBundle.deterministic_train`).
        deterministic: ``torch.use_deterministic_algorithms(True)`` during the run.
        progress: tqdm progress bars (rank 0 only).
        callbacks: ``callback(event, TrainState)`` functions (rank 0 and others alike).
        model_info: JSON stored as ``dgsnet_model.json`` beside the weights so that
            :func:`load_trained` can rebuild the model (:meth:`ModelBundle.info`).
        run_info: extra JSON stored in ``run.json`` (e.g. the command-line options).
        handle_signals: on SIGINT/SIGTERM finish the step, checkpoint and raise
            :class:`TrainingInterrupted`.
        precompute_text: compute the text features of every caption once before stage 2
            (fixed order and chunking; ``U x D`` floats in CPU memory for ``U`` distinct
            captions) and feed them to the wrapper; this makes resumed runs bitwise exact and
            saves text-tower work. ``False`` passes the captions (the wrapper's LRU cache).

    Under ``torchrun`` (``WORLD_SIZE > 1``) the process group is joined, stage 2 runs under
    ``DistributedDataParallel`` on sharded batches (``batch_size`` per process), stage 1 runs
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
    )
    return Trainer(wrapper, data, options, callbacks=callbacks).run()
