"""The layout of a training run's output folder, and the moves that keep it complete.

A run writes into one folder `OUT`:

| name | what |
|---|---|
| `last/` (`LAST_DIR`) | the resumable run state (`dgsnet.training.run_state`) |
| `final/` (`FINAL_DIR`) | the trained weights of a finished run |
| `train_log.jsonl` (`LOG_NAME`) | one JSON record per logged step and event |
| `run.json` (`RUN_NAME`) | the model, the options, the settings and the data fingerprint |
| `summary.json` (`SUMMARY_NAME`) | the summary of a finished run |

Inside `last/` and `final/`, beside the wrapper's checkpoint files
(`dgsnet.wrapper.checkpoint`, which also names `MODEL_INFO_NAME`), `dgsnet_model.json` names
the base model that rebuilds it. A folder is written beside its target (`staging_dir`) and put
in place by `commit_dir`, so a crash at any moment leaves a complete one.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from ..errors import CheckpointError
from ..io import atomic_write_json, fsync_dir, json_safe
from ..wrapper import CONFIG_NAME, DGSWrapper
from ..wrapper.checkpoint import MODEL_INFO_NAME
from ..wrapper.locate import resolve_checkpoint as resolve_hub_checkpoint

__all__ = [
    "FINAL_DIR",
    "FRESH_RUN_CLEARS",
    "LAST_DIR",
    "LOG_NAME",
    "OPTIMIZER_NAME",
    "RUN_NAME",
    "STATE_NAME",
    "SUMMARY_NAME",
    "TEACHER_CACHE_NAME",
    "clear_run_state",
    "commit_dir",
    "find_resume_checkpoint",
    "RELEASED_IMPORT_NAME",
    "model_info_records",
    "recorded_model_info",
    "resolve_checkpoint",
    "save_model_dir",
    "stage1_result",
    "staging_dir",
    "write_run_json",
]

# sub-folders and files of a training output directory
LAST_DIR = "last"
"""The training state to resume from (replaced atomically)."""

FINAL_DIR = "final"
"""The trained weights, written at the end."""

LOG_NAME = "train_log.jsonl"
"""The run log, one JSON object per line."""

RUN_NAME = "run.json"
"""The run's record: options, model, training settings, data fingerprint."""

SUMMARY_NAME = "summary.json"
"""The run's summary: steps, skipped steps, stage-1 losses, time."""

STATE_NAME = "trainer_state.json"
"""The trainer's state inside a checkpoint folder."""

OPTIMIZER_NAME = "optimizer.safetensors"
"""The optimizer's tensors inside a checkpoint folder."""

TEACHER_CACHE_NAME = "teacher_cache.safetensors"
"""The cached teacher logits inside a checkpoint folder (deterministic transforms only)."""

#: the record `dgsnet.interop` writes beside an imported released checkpoint (its
#: `IMPORT_NAME`; named here because interop builds on the training package)
RELEASED_IMPORT_NAME = "released_import.json"


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
    """An empty folder `.<name>.tmp` beside `target` to write its next version into."""
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


def resolve_checkpoint(path: str | os.PathLike[str]) -> Path:
    """A checkpoint folder (`dgs_config.json` inside), or a training output folder (its
    `final/`, else its `last/`); a `hf-hub:org/name[@revision]` id is first resolved to
    its local snapshot through huggingface_hub (`dgsnet.hub.resolve_checkpoint`)."""
    if os.fspath(path).startswith("hf-hub:"):
        path = resolve_hub_checkpoint(path)
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint {p} does not exist")
    if (p / CONFIG_NAME).is_file():
        return p
    for name in (FINAL_DIR, LAST_DIR, LAST_DIR + ".prev"):
        if (p / name / CONFIG_NAME).is_file():
            return p / name
    raise CheckpointError(
        f"{p} is neither a dgsnet checkpoint (no {CONFIG_NAME}) nor a training folder with "
        f"{FINAL_DIR}/ or {LAST_DIR}/"
    )


def model_info_records(ckpt: Path) -> Iterator[dict[str, Any]]:
    """The base-model records of the checkpoint folder `ckpt`, first to last: its
    `dgsnet_model.json`, then the `model` entry of the run's `run.json` beside it, each when
    the file exists and holds a JSON object. Lazy: `run.json` is read only when the caller
    asks for the record after the first.

    Raises:
        CheckpointError: one of the files read is not valid JSON.
    """
    for candidate in (ckpt / MODEL_INFO_NAME, ckpt.parent / RUN_NAME):
        if candidate.is_file():
            try:
                data = json.loads(candidate.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise CheckpointError(f"{candidate} is not valid JSON ({exc})") from exc
            info = data.get("model", data) if candidate.name == RUN_NAME else data
            if isinstance(info, dict):
                yield info


def recorded_model_info(ckpt: Path) -> dict[str, Any] | None:
    """The base model recorded for the checkpoint folder `ckpt`: its `dgsnet_model.json`,
    else the `model` entry of the run's `run.json` beside it; `None` when neither names a
    model spec.

    Raises:
        CheckpointError: one of the files is not valid JSON.
    """
    return next((info for info in model_info_records(ckpt) if info.get("spec")), None)


def _read_json_or_none(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def stage1_result(ckpt: str | os.PathLike[str]) -> str | None:
    """Why the checkpoint folder `ckpt` holds a stage-1 result (only its teacher head was
    trained), or `None`.

    Read from the run folder around it: `run.json` of a `train --stage 1` run, or
    `released_import.json` of an imported released stage-1 file. A folder copied out of
    its run folder carries neither and counts as a stage-2 result."""
    parent = Path(ckpt).parent
    run = _read_json_or_none(parent / RUN_NAME)
    if isinstance(run, dict) and isinstance(run.get("training"), dict):
        if str(run["training"].get("stage")) == "1":
            return f"{RUN_NAME}: a stage-1 training run"
    imported = _read_json_or_none(parent / RELEASED_IMPORT_NAME)
    if isinstance(imported, dict) and imported.get("stage") == 1:
        return f"{RELEASED_IMPORT_NAME}: a released stage-1 checkpoint"
    return None


def save_model_dir(folder: Path, wrapper: DGSWrapper, model_info: Mapping[str, Any] | None) -> None:
    """The wrapper's `save_pretrained` files in `folder`, and `model_info` (the spec that
    rebuilds the base model) as `MODEL_INFO_NAME` beside them when given."""
    wrapper.save_pretrained(folder)
    if model_info:
        atomic_write_json(folder / MODEL_INFO_NAME, dict(model_info))


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
