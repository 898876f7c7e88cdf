"""The trainer's resumable run state: where a run stands, and how it is saved and restored.

A run's progress (`RunProgress`: stage, epoch, batch, step, skipped steps, the stage-1 losses,
and the positions of the sampler and the random number generators) is written into
`OUT/last/trainer_state.json` at every checkpoint, beside the weights, the optimizer
(`optimizer.safetensors`) and the teacher cache when indices were passed. The file also holds
the scheduler, the settings that must not change and the data fingerprint, with its own
sha256. A resumed run reads it back (`load_training_state`, `RunProgress.from_state`) and
finishes with exactly the weights of an uninterrupted run.

This is one of three things dgsnet calls a checkpoint; the other two are the wrapper's
checkpoint files (`dgsnet.wrapper.checkpoint`: `save_pretrained` / `from_pretrained`) and the
checkpoints published with the released DGS-Net code (`dgsnet.interop` imports them). The
folder layout of a run is `dgsnet.training.run_folder`.

The functions here take values, never the trainer (as accelerate's `save_accelerator_state`
takes the model, optimizer and step it saves).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import CheckpointError, TrainingConfigError
from ..io import atomic_write_json, json_safe, load_tensors, save_tensors, sha256_file
from ..wrapper import WEIGHTS_NAME, DGSWrapper
from .data import ResumableSampler
from .options import TrainOptions
from .precision import DEFAULT_PRECISION
from .run_folder import OPTIMIZER_NAME, STATE_NAME, TEACHER_CACHE_NAME
from .seeding import rng_state

__all__ = [
    "STATE_FORMAT",
    "STATE_VERSION",
    "RunProgress",
    "canonical_json",
    "checkpoint_state",
    "load_training_state",
    "optimizer_payload",
    "read_state_json",
    "restore_optimizer",
    "resume_key",
    "run_summary",
    "save_optimizer",
    "save_teacher_cache",
    "write_state_json",
]

STATE_FORMAT = "dgsnet.trainer_state"
"""The `format` of `trainer_state.json`."""

STATE_VERSION = 1
"""The `format_version` of `trainer_state.json` this dgsnet writes."""


@dataclass
class RunProgress:
    """Where a run stands: what a resumed run starts from.

    At a checkpoint `epoch` is the number of stage-2 epochs done and `batch` the number of
    batches done in the epoch under way (so a resumed run starts at batch `batch` of epoch
    `epoch`); during stage 2 they follow the loop.

    Args:
        stage1_done: stage 1 (the teacher head) is trained.
        stage: the stage under way, 1 or 2.
        epoch: stage-2 epochs done.
        batch: batches done in the current epoch.
        step: the global stage-2 step (optimisation steps taken, skipped ones included).
        skipped: steps skipped for a non-finite loss or gradient.
        stage1_history: the stage-1 loss of each epoch.

    Examples:
        >>> p = RunProgress(stage1_done=True, stage=2, epoch=1, batch=3, step=7)
        >>> RunProgress.from_state(p.to_state(seed=0, batch_size=4)) == p
        True
    """

    stage1_done: bool = False
    """Stage 1 (the teacher head) is trained."""
    stage: int = 1
    """The stage under way, 1 or 2."""
    epoch: int = 0
    """Stage-2 epochs done."""
    batch: int = 0
    """Batches done in the current epoch."""
    step: int = 0
    """The global stage-2 step (optimisation steps taken, skipped ones included)."""
    skipped: int = 0
    """Steps skipped for a non-finite loss or gradient."""
    stage1_history: list[float] = field(default_factory=list)
    """The stage-1 loss of each epoch."""

    def to_state(
        self, *, seed: int, batch_size: int, shuffle: bool = True, world_size: int = 1
    ) -> dict[str, Any]:
        """The progress entries of `trainer_state.json`, JSON-ready: the counters, the
        sampler's position (its settings are the arguments) and the RNG states taken now."""
        return {
            "stage1_done": self.stage1_done,
            "epoch": self.epoch,
            "batch": self.batch,
            "global_step": self.step,
            "skipped_steps": self.skipped,
            "stage1_history": self.stage1_history,
            "sampler": {
                "seed": seed,
                "epoch": self.epoch,
                "start_batch": self.batch,
                "batch_size": batch_size,
                "permutation_seed": ResumableSampler(1, seed).permutation_seed(self.epoch),
                "shuffle": shuffle,
                "world_size": world_size,
            },
            "rng": rng_state(),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> RunProgress:
        """The progress recorded in a `trainer_state.json` (the RNG states are restored
        apart, by `dgsnet.training.seeding.set_rng_state`)."""
        return cls(
            stage1_done=bool(state["stage1_done"]),
            stage=2 if state["stage1_done"] else 1,
            epoch=int(state["epoch"]),
            batch=int(state["batch"]),
            step=int(state["global_step"]),
            skipped=int(state["skipped_steps"]),
            stage1_history=list(state.get("stage1_history", [])),
        )


def resume_key(options: TrainOptions, config: Mapping[str, Any], world_size: int) -> dict[str, Any]:
    """The settings a resumed run must share with its checkpoint (`load_training_state`
    compares them): the stage, the DGS config (`config`, as `DGSConfig.to_dict()`), the
    schedule, the seed, the world size, the model spec and the precision.

    Args:
        options: the run's options.
        config: the wrapper's DGS config as a dict.
        world_size: the number of processes.

    Returns:
        The JSON-ready mapping (recorded in `trainer_state.json` and `run.json`).
    """
    o = options
    return {
        "stage": o.stage,
        "config": dict(config),
        "batch_size": o.batch_size,
        "lr": o.lr,
        "stage1_lr": o.stage1_lr,
        "stage1_epochs": o.stage1_epochs,
        "betas": list(o.betas),
        "lr_step": o.lr_step,
        "lr_gamma": o.lr_gamma,
        "seed": o.seed,
        "shuffle": o.shuffle,
        "world_size": world_size,
        "deterministic_transform": bool(o.deterministic_transform),
        "model": (o.model_info or {}).get("spec"),
        "precision": o.precision,
    }


def canonical_json(obj: Any) -> str:
    """Canonical JSON text of `obj` (sorted keys, NaN kept), for checksums and comparison."""
    return json.dumps(json_safe(obj, finite=False), sort_keys=True, allow_nan=True)


def optimizer_payload(
    opt: torch.optim.Optimizer, names: list[str]
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Split `opt`'s state into its tensors, keyed `"PARAM_NAME/slot"` (detached, on the
    CPU), and the JSON part: the parameter names, the groups and the non-tensor values."""
    sd = opt.state_dict()
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        name = names[int(idx)]
        for key, value in st.items():
            if isinstance(value, Tensor):
                tensors[f"{name}/{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(name, {})[key] = value
    groups = [
        {k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()}
        for g in sd["param_groups"]
    ]
    return tensors, {"param_names": names, "param_groups": groups, "scalars": scalars}


def restore_optimizer(
    opt: torch.optim.Optimizer,
    names: list[str],
    tensors: dict[str, Tensor],
    meta: Mapping[str, Any],
    where: Path,
) -> None:
    """Load into `opt` the state `optimizer_payload` split (its tensors and JSON part), read
    from `where`.

    Raises:
        CheckpointError: the state was saved for other parameters, or does not fit `opt`.
    """
    saved = list(meta.get("param_names", []))
    if saved != names:
        raise CheckpointError(
            f"{where}: the optimizer state was saved for other parameters ({len(saved)} saved, "
            f"{len(names)} now); the model or LoRA settings changed"
        )
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        name, _, slot = key.rpartition("/")
        if name not in names:
            raise CheckpointError(f"{where}: optimizer tensor {key!r} names no parameter")
        state.setdefault(names.index(name), {})[slot] = value
    for name, extra in (meta.get("scalars") or {}).items():
        state.setdefault(names.index(name), {}).update(extra)
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    try:
        opt.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError, RuntimeError) as exc:
        raise CheckpointError(f"{where}: the optimizer state does not fit: {exc}") from exc


def write_state_json(path: Path, state: dict[str, Any]) -> None:
    """Write the training state to `path` atomically, with the sha256 of its canonical JSON
    as `checksum` (what `read_state_json` verifies)."""
    body = dict(state)
    body.pop("checksum", None)
    body["checksum"] = hashlib.sha256(canonical_json(body).encode()).hexdigest()
    atomic_write_json(path, json.loads(canonical_json(body)))


def read_state_json(path: Path) -> dict[str, Any]:
    """Read a training state written by `write_state_json`; return it without its checksum.

    Raises:
        CheckpointError: missing, not JSON, not a dgsnet training state, a newer format, or a
            checksum that does not match.
    """
    if not path.is_file():
        raise CheckpointError(
            f"{path.parent} holds no {STATE_NAME}: not a complete training checkpoint"
        )
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(
            f"{path} is not valid JSON ({exc}): the checkpoint is truncated or damaged"
        ) from exc
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path} is not a dgsnet training state")
    if state.get("format_version", 0) > STATE_VERSION:
        raise CheckpointError(
            f"{path} has format_version {state.get('format_version')}; this dgsnet reads "
            f"{STATE_VERSION}"
        )
    recorded = state.pop("checksum", None)
    if recorded != hashlib.sha256(canonical_json(state).encode()).hexdigest():
        raise CheckpointError(
            f"{path} does not match its own checksum: the checkpoint was modified or damaged"
        )
    return state


def load_training_state(
    ckpt: Path,
    wrapper: DGSWrapper,
    resume_key: Mapping[str, Any],
    fingerprint: Mapping[str, Any],
    epochs: int,
) -> dict[str, Any]:
    """Check that the checkpoint folder `ckpt` can resume this run, load its weights and
    teacher cache into `wrapper`, and return its training state.

    Raises:
        TrainingConfigError: the run's settings (`resume_key`), its data (`fingerprint`) or
            `epochs` no longer fit the checkpoint.
        CheckpointError: a file is missing, damaged or does not match its checksum.
    """
    state = read_state_json(ckpt / STATE_NAME)
    # a run folder written before the precision option existed trained in float32
    saved_key = {"precision": DEFAULT_PRECISION, **state.get("resume_key", {})}
    diff = sorted(
        k
        for k in set(saved_key) | set(resume_key)
        if canonical_json(saved_key.get(k)) != canonical_json(resume_key.get(k))
    )
    if diff:
        shown = "; ".join(
            f"{k}: checkpoint {saved_key.get(k)!r}, now {resume_key.get(k)!r}"
            for k in diff
            if k != "config"
        )
        if "config" in diff:
            a, b = saved_key.get("config") or {}, resume_key.get("config") or {}
            fields = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            shown = "; ".join(filter(None, [shown, f"DGS config fields {fields}"]))
        raise TrainingConfigError(
            f"cannot resume from {ckpt}: the run's settings changed ({shown}); use the same "
            "settings, or start over with --no-resume (resume=False)"
        )
    saved_fp = state.get("dataset", {})
    if saved_fp.get("sha256") != fingerprint.get("sha256"):
        raise TrainingConfigError(
            f"cannot resume from {ckpt}: the training data changed ({saved_fp.get('num_images')} "
            f"images then, {fingerprint.get('num_images')} now, or other files/labels/captions); "
            "start over with --no-resume (resume=False)"
        )
    if int(state.get("epoch", 0)) > epochs:
        raise TrainingConfigError(
            f"cannot resume from {ckpt}: it already completed {state['epoch']} epochs, more "
            f"than epochs={epochs}"
        )
    if state.get("weights_sha256") and (ckpt / WEIGHTS_NAME).is_file():
        if sha256_file(ckpt / WEIGHTS_NAME) != state["weights_sha256"]:
            raise CheckpointError(
                f"{ckpt / WEIGHTS_NAME} does not match the training state's checksum"
            )
    wrapper.load_checkpoint(ckpt)
    if state.get("teacher_cache"):
        meta = state["teacher_cache"]
        tensors = load_tensors(ckpt / TEACHER_CACHE_NAME, meta.get("sha256"))
        if "index" in tensors and "rows" in tensors and tensors["index"].numel():
            wrapper.teacher_cache.restore(tensors)
    if state.get("optimizer"):
        opt_file = ckpt / OPTIMIZER_NAME
        if not opt_file.is_file():
            raise CheckpointError(f"{ckpt} lacks {OPTIMIZER_NAME}: the checkpoint is incomplete")
        load_tensors(opt_file, state["optimizer"].get("sha256"))  # validate now (clear early error)
    return state


def save_optimizer(folder: Path, opt: torch.optim.Optimizer, names: list[str]) -> dict[str, Any]:
    """Write `opt`'s tensors as `OPTIMIZER_NAME` in `folder`; return the JSON part
    of its state (parameter names, groups, scalars, the file's sha256) for the state file."""
    tensors, meta = optimizer_payload(opt, names)
    meta["sha256"] = save_tensors(
        folder / OPTIMIZER_NAME, tensors, metadata={"format": "dgsnet.optimizer"}
    )
    return meta


def save_teacher_cache(folder: Path, wrapper: DGSWrapper) -> dict[str, Any] | None:
    """Write the wrapper's teacher cache as `TEACHER_CACHE_NAME` in `folder`; return
    its entry of the state file (row count, sha256), `None` (and no file) when it is empty."""
    cached = wrapper.teacher_cache.export()
    if not cached["index"].numel():
        return None
    return {
        "rows": int(cached["index"].numel()),
        "sha256": save_tensors(
            folder / TEACHER_CACHE_NAME,
            {"index": cached["index"], "rows": cached["rows"]},
            metadata={"format": "dgsnet.teacher_cache"},
        ),
    }


def checkpoint_state(
    progress: Mapping[str, Any],
    *,
    phase: str,
    resume_key: Mapping[str, Any],
    dataset: Mapping[str, Any],
    precision: str,
    weights_sha256: str,
    optimizer: Mapping[str, Any] | None = None,
    scheduler: Mapping[str, Any] | None = None,
    grad_scaler: Mapping[str, Any] | None = None,
    teacher_cache: Mapping[str, Any] | None = None,
    log_offset: int = 0,
) -> dict[str, Any]:
    """The body of a checkpoint's `trainer_state.json`, stamped with the time now.

    Args:
        progress: `RunProgress.to_state(...)` of the run at this checkpoint.
        phase: `"stage2"` (stage 2 still to run or under way) or `"done"`.
        resume_key: the settings a resumed run must share.
        dataset: the training data's fingerprint.
        precision: the run's precision policy (`"fp32"`, ...).
        weights_sha256: the sha256 of the weights file saved beside the state.
        optimizer: what `save_optimizer` returned; `None` before stage 2.
        scheduler: the learning-rate schedule's `state_dict()`; `None` before stage 2.
        grad_scaler: the `GradScaler`'s state (`precision.scaler_state`), or `None`.
        teacher_cache: what `save_teacher_cache` returned, or `None`.
        log_offset: the log's length in bytes at the checkpoint (a resumed run cuts it back
            to this).

    Returns:
        The JSON-ready mapping (`write_state_json` adds its checksum).
    """
    return {
        "format": STATE_FORMAT,
        "format_version": STATE_VERSION,
        "phase": phase,
        "teacher_cache": teacher_cache,
        **progress,
        "optimizer": optimizer,
        "scheduler": scheduler,
        "precision": precision,
        "grad_scaler": grad_scaler,
        "resume_key": resume_key,
        "dataset": dataset,
        "weights_sha256": weights_sha256,
        "log_offset": log_offset,
        "time": time.time(),
    }


def run_summary(
    progress: RunProgress,
    *,
    stage: int | str,
    epochs: int,
    resumed_from: int | None,
    final_dir: Path | None,
    elapsed_s: float,
    num_images: int,
) -> dict[str, Any]:
    """The `summary` event of a finished run, logged and written as `summary.json`.

    Args:
        progress: the run's progress at its end.
        stage: the stages run (`"1"`, `"2"` or `"both"`).
        epochs: the stage-2 epochs asked for.
        resumed_from: the step the run resumed from, `None` for a fresh run.
        final_dir: the `final/` folder written (rank 0), or `None`.
        elapsed_s: the run's wall time in seconds.
        num_images: the training images.

    Returns:
        The summary mapping.
    """
    return {
        "event": "summary",
        "stage": stage,
        "global_step": progress.step,
        "skipped_steps": progress.skipped,
        "epochs": epochs,
        "stage1_history": progress.stage1_history,
        "resumed_from": resumed_from,
        "final_dir": os.fspath(final_dir) if final_dir else None,
        "elapsed_s": elapsed_s,
        "num_images": num_images,
    }
