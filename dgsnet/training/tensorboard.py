"""TensorBoard event files from the run log: `TensorBoardSink`.

With `TrainOptions(tensorboard=True)` (`dgsnet train --tensorboard`) rank 0 hands every
record it writes to `OUT/train_log.jsonl` to a `TensorBoardSink` as well, so the
event files and the log hold the same values. The scalars (`record_scalars`):

* each stage-2 step (`"step"` records), at its global step: `loss/total` and
  `loss/<part>` for every loss part (`image`, `text`, `align`, `teacher`,
  `distill` when present), `surgery/<name>` for every surgery statistic
  (`removed_fraction`, `cos_harm`, `cos_help`, `grad_norm_in`, `grad_norm_out`),
  `lr`, and `skipped` (1 for a skipped non-finite step, else 0);
* each stage-2 epoch end, at the global step it ends on: `epoch/epoch` and
  `epoch/skipped_steps`; any other record with numbers (an evaluation, say) likewise as
  `<event>/<key>`;
* the stage-1 teacher-head loss per epoch, `stage1/loss` at step = epoch, in the
  sub-folder `stage1/` (a run of its own in TensorBoard, so that the stage-2 step axis
  starts clean).

The event files go to `OUT/tensorboard/`; view them with `tensorboard --logdir OUT`. A
resumed run drops what the interrupted one wrote after its checkpoint (`purge_step`), as
the run log does. Needs the `tensorboard` extra (`pip install 'dgsnet[tensorboard]'`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

__all__ = ["TENSORBOARD_DIR", "TensorBoardSink", "record_scalars", "require_tensorboard"]

TENSORBOARD_DIR = "tensorboard"
"""The folder of the event files inside the run folder."""
_HINT = "pip install 'dgsnet[tensorboard]'"
#: records that hold bookkeeping, not curves
_NOT_SCALARS = frozenset({"start", "resume", "checkpoint", "summary"})


def require_tensorboard() -> Any:
    """`torch.utils.tensorboard.SummaryWriter`.

    Raises:
        ImportError: the `tensorboard` package is missing (the message names the extra).
    """
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ImportError(
            f"TensorBoard logging needs the tensorboard package, which is not installed: {_HINT}"
        ) from None
    return SummaryWriter


def _number(value: Any) -> float | None:
    """`value` as a float if it is a number (bools count, as 0/1); the run log's `"nan"`,
    `"inf"` and `"-inf"` strings too; otherwise `None`."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str) and value in ("nan", "inf", "-inf"):
        return float(value)
    return None


def _flat(
    prefix: str, record: Mapping[str, Any], skip: tuple[str, ...] = ()
) -> Iterator[tuple[str, float]]:
    for key, value in record.items():
        if key in skip:
            continue
        if isinstance(value, Mapping):
            yield from _flat(f"{prefix}/{key}", value)
            continue
        v = _number(value)
        if v is not None:
            yield f"{prefix}/{key}", v


def record_scalars(record: Mapping[str, Any]) -> tuple[str, int, dict[str, float]] | None:
    """The TensorBoard scalars of one run-log record: `(writer, step, {tag: value})`, where
    `writer` is `""` (the main folder) or `"stage1"`; `None` for a record without
    curves (`start`, `resume`, `checkpoint`, `summary`, or no step).

    Examples:
        >>> writer, step, scalars = record_scalars({"event": "step", "step": 3, "loss": 0.5,
        ...     "losses": {"image": 0.4}, "stats": {"cos_harm": 0.1}, "lr": 1e-3})
        >>> step, sorted(scalars)
        (3, ['loss/image', 'loss/total', 'lr', 'skipped', 'surgery/cos_harm'])
    """
    event = record.get("event")
    if event == "step":
        out = {"loss/total": _number(record.get("loss"))}
        out.update(_flat("loss", record.get("losses", {})))
        out.update(_flat("surgery", record.get("stats", {})))
        out["lr"] = _number(record.get("lr"))
        out["skipped"] = float(bool(record.get("skipped")))
        return "", int(record["step"]), {k: v for k, v in out.items() if v is not None}
    if event == "stage1_epoch":
        loss = _number(record.get("loss"))
        return "stage1", int(record["epoch"]), {} if loss is None else {"stage1/loss": loss}
    if not isinstance(event, str) or event in _NOT_SCALARS or _number(record.get("step")) is None:
        return None
    name = "epoch" if event == "epoch_end" else event
    return "", int(record["step"]), dict(_flat(name, record, skip=("event", "step", "time")))


class TensorBoardSink:
    """Writes the scalars of run-log records (`record_scalars`) to TensorBoard event
    files under `log_dir`; a sink of `RunLog`.

    The writers open on the first record that needs them. A `"resume"` record at step
    `G` makes the main writer purge the steps after `G` that an interrupted run wrote
    (they are trained again).

    Args:
        log_dir: the folder of the event files (created).

    Raises:
        ImportError: the `tensorboard` package is missing (the message names the extra).
    """

    def __init__(self, log_dir: str | os.PathLike[str]) -> None:
        self.writer_class = require_tensorboard()
        """The `SummaryWriter` class (imported when the sink is made)."""
        self.log_dir = Path(log_dir)
        """The folder of the event files."""
        self.writers: dict[str, Any] = {}
        """One open writer per sub-folder (`""` for stage 2, `"stage1"`), by name."""
        self.purge_step: int | None = None
        """On resume, the step after the checkpoint: events from there on are dropped from the
        files."""

    def _writer(self, name: str) -> Any:
        if name not in self.writers:
            path = self.log_dir / name if name else self.log_dir
            purge = self.purge_step if not name else None
            self.writers[name] = self.writer_class(os.fspath(path), purge_step=purge)
        return self.writers[name]

    def write(self, record: Mapping[str, Any]) -> None:
        """Add the scalars of `record`; flush at checkpoints and epoch ends."""
        event = record.get("event")
        if event == "resume" and "" not in self.writers:
            self.purge_step = int(record.get("step", 0)) + 1
        found = record_scalars(record)
        if found is not None and found[2]:
            name, step, scalars = found
            writer = self._writer(name)
            for tag, value in scalars.items():
                writer.add_scalar(tag, value, global_step=step)
        if event in ("checkpoint", "epoch_end", "summary"):
            self.flush()

    def flush(self) -> None:
        """Write what the writers hold to disk."""
        for w in self.writers.values():
            w.flush()

    def close(self) -> None:
        """Flush and close the writers; later records open new ones."""
        for w in self.writers.values():
            w.close()
        self.writers.clear()
