"""The layout of a training output folder and its resumable state.

`OUT/last/` holds everything a resumed run needs: the `save_pretrained` weights, the
optimizer (`optimizer.safetensors`), the teacher cache when indices were passed, and
`trainer_state.json` (epoch, step, sampler, RNG states, scheduler, the settings that must
not change, the data fingerprint; with its own sha256). A checkpoint folder is written
beside its target and put in place by `commit_dir`, so a crash at any moment leaves a
complete one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import CheckpointError, TrainingConfigError
from ..io import (
    atomic_write_json,
    fsync_dir,
    json_safe,
    load_tensors,
    save_tensors,
    sha256_file,
)
from ..wrapper import WEIGHTS_NAME, DGSWrapper
from ..wrapper.checkpoint import MODEL_INFO_NAME
from .precision import DEFAULT_PRECISION

__all__ = [
    "FINAL_DIR",
    "LAST_DIR",
    "LOG_NAME",
    "MODEL_INFO_NAME",
    "OPTIMIZER_NAME",
    "RUN_NAME",
    "STATE_NAME",
    "SUMMARY_NAME",
    "TEACHER_CACHE_NAME",
    "canonical_json",
    "clear_run_state",
    "commit_dir",
    "find_resume_checkpoint",
    "load_training_state",
    "read_state_json",
    "restore_optimizer",
    "save_model_dir",
    "save_optimizer",
    "save_teacher_cache",
    "staging_dir",
    "write_run_json",
    "write_state_json",
]

#: sub-folders and files of a training output directory
LAST_DIR = "last"

FINAL_DIR = "final"

LOG_NAME = "train_log.jsonl"

RUN_NAME = "run.json"

SUMMARY_NAME = "summary.json"

STATE_NAME = "trainer_state.json"

OPTIMIZER_NAME = "optimizer.safetensors"

TEACHER_CACHE_NAME = "teacher_cache.safetensors"

STATE_FORMAT = "dgsnet.trainer_state"

STATE_VERSION = 1


def commit_dir(tmp: Path, target: Path) -> None:
    """Put the complete folder `tmp` in place of `target`: the old `target` is renamed
    to `<target>.prev` first and deleted only after the new one is in place, so a crash at
    any moment leaves a complete `target` or a complete `<target>.prev`."""
    prev = target.with_name(target.name + ".prev")
    if target.exists():
        if prev.exists():
            shutil.rmtree(prev)
        os.replace(target, prev)
    # (no target but a prev: a crash came between the renames last time; prev stays until
    # the new target is in place)
    os.replace(tmp, target)
    fsync_dir(target.parent)
    shutil.rmtree(prev, ignore_errors=True)


def staging_dir(target: Path) -> Path:
    tmp = target.with_name(f".{target.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def find_resume_checkpoint(out_dir: str | os.PathLike[str]) -> Path | None:
    """`OUT/last`, or `OUT/last.prev` when a crash came between the two renames of a
    checkpoint commit; `None` when there is nothing to resume."""
    out = Path(out_dir)
    for name in (LAST_DIR, LAST_DIR + ".prev"):
        if (out / name).is_dir():
            return out / name
    return None


def canonical_json(obj: Any) -> str:
    """Canonical JSON text of `obj` (sorted keys, NaN kept), for checksums and comparison."""
    return json.dumps(json_safe(obj, finite=False), sort_keys=True, allow_nan=True)


def optimizer_payload(
    opt: torch.optim.Optimizer, names: list[str]
) -> tuple[dict[str, Tensor], dict[str, Any]]:
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
    body = dict(state)
    body.pop("checksum", None)
    body["checksum"] = hashlib.sha256(canonical_json(body).encode()).hexdigest()
    atomic_write_json(path, json.loads(canonical_json(body)))


def read_state_json(path: Path) -> dict[str, Any]:
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


def save_model_dir(folder: Path, wrapper: DGSWrapper, model_info: Mapping[str, Any] | None) -> None:
    """The wrapper's `save_pretrained` files in `folder`, and `model_info` (the spec that
    rebuilds the base model) as `MODEL_INFO_NAME` beside them when given."""
    wrapper.save_pretrained(folder)
    if model_info:
        atomic_write_json(folder / MODEL_INFO_NAME, dict(model_info))


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


#: what a fresh run (nothing to resume) deletes from the output folder
FRESH_RUN_CLEARS = (
    LAST_DIR,
    LAST_DIR + ".prev",
    f".{LAST_DIR}.tmp",
    FINAL_DIR,
    LOG_NAME,
    SUMMARY_NAME,
    "tensorboard",  # dgsnet.training.tensorboard.TENSORBOARD_DIR
)


def clear_run_state(out: Path) -> None:
    """Delete an earlier run's checkpoints, log and summary from `out`
    (`FRESH_RUN_CLEARS`), for a run that starts over."""
    for name in FRESH_RUN_CLEARS:
        p = out / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def write_run_json(
    out: Path,
    model_info: Mapping[str, Any] | None,
    run_info: Mapping[str, Any] | None,
    resume_key: Mapping[str, Any],
    fingerprint: Mapping[str, Any],
) -> None:
    """`OUT/run.json`: the model, the caller's options, the training settings and the data
    fingerprint of the run."""
    atomic_write_json(
        out / RUN_NAME,
        json_safe(
            {
                "format": "dgsnet.run",
                "model": dict(model_info or {}),
                "options": dict(run_info or {}),
                "training": resume_key,
                "dataset": fingerprint,
            }
        ),
    )
