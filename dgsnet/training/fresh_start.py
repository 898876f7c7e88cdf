"""What a run that starts over may delete from its output folder.

A run with nothing to resume (no `OUT/last/`) starts over and deletes an earlier run's
checkpoints, log and summary (`dgsnet.training.run_folder.FRESH_RUN_CLEARS`). `fresh_start_refusal`
says why not when that would destroy a finished run (its `final/` weights or `summary.json`)
that the caller did not ask to replace, or the weights `init_from` names.

Examples:
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     print(fresh_start_refusal(d, resume=None, init_from=None))  # empty: fine
    None
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import TrainingConfigError
from .run_folder import FINAL_DIR, FRESH_RUN_CLEARS, LAST_DIR, SUMMARY_NAME

__all__ = ["finished_run_parts", "fresh_start_refusal"]

#: the parts that make a folder hold a finished run
_FINISHED = (FINAL_DIR, SUMMARY_NAME)


def finished_run_parts(out: str | os.PathLike[str]) -> list[str]:
    """The parts of an earlier run that a fresh start in `out` would delete, when `out`
    holds a finished run (its `final/` or `summary.json`); else `[]`."""
    out = Path(out)
    present = [name for name in FRESH_RUN_CLEARS if os.path.lexists(out / name)]
    return present if any(name in present for name in _FINISHED) else []


def _inside_cleared_part(out: Path, init_from: str | os.PathLike[str]) -> bool:
    """Whether `init_from` is `out` itself (its `final/` or `last/` would be loaded) or lies
    in one of the parts a fresh start deletes."""
    out_r, init_r = out.resolve(), Path(init_from).resolve()
    if init_r == out_r:
        return True
    if out_r not in init_r.parents:
        return False
    return init_r.relative_to(out_r).parts[0] in FRESH_RUN_CLEARS


def fresh_start_refusal(
    out: str | os.PathLike[str],
    *,
    resume: bool | None,
    init_from: str | os.PathLike[str] | None,
) -> TrainingConfigError | None:
    """Why a run with nothing to resume in `out` may not clear it, or `None` when it may.

    Args:
        out: the output folder.
        resume: the run's `resume` option: `None` (resume when possible; a finished run
            without `last/` is then kept) or `False` (start over: delete it).
        init_from: the run's `init_from` option.

    Returns:
        The error to raise when `init_from` lies in what the fresh start deletes, or `out`
        holds a finished run and `resume` is not `False` (the message names its parts).
    """
    out = Path(out)
    if init_from is not None and _inside_cleared_part(out, init_from):
        return TrainingConfigError(
            f"init_from (--init-from) {init_from} lies inside the output folder {out}, whose "
            f"{FINAL_DIR}/ and {LAST_DIR}/ a run that starts over deletes before loading "
            f"them: copy it out of {out} first, or choose another --out"
        )
    parts = finished_run_parts(out)
    if parts and resume is not False:
        shown = ", ".join(p + "/" if (out / p).is_dir() else p for p in parts)
        return TrainingConfigError(
            f"{out} holds a finished run ({shown}) and no {LAST_DIR}/ to resume, so this run "
            "would start over and delete it: pass --no-resume (resume=False) to delete it "
            "and start over, or choose another --out"
        )
    return None
