"""`dgsnet train`'s error messages in the user's terms: the flag, not the option field.

`TrainOptions` names its fields (`batch_size must be an integer >=
1, got 0`); a command-line user typed `--batch-size`. `flag_error` rewrites the
message's leading field name into the flag that sets it (`dgsnet eval` passes it
the flags of its degradation options).

Examples:
    >>> from dgsnet.errors import TrainingConfigError
    >>> str(flag_error(TrainingConfigError("batch_size must be an integer >= 1, got 0")))
    '--batch-size must be an integer >= 1, got 0'
"""

from __future__ import annotations

from collections.abc import Mapping

from ..errors import UsageError

__all__ = ["FIELD_FLAGS", "flag_error"]

FIELD_FLAGS = {
    "stage": "--stage",
    "epochs": "--epochs",
    "stage1_epochs": "--stage1-epochs",
    "batch_size": "--batch-size",
    "lr": "--lr",
    "stage1_lr": "--stage1-lr",
    "lr_step": "--lr-step",
    "lr_gamma": "--lr-gamma",
    "save_every": "--save-every",
    "log_every": "--log-every",
    "num_workers": "--workers",
    "seed": "--seed",
    "on_nonfinite": "--on-nonfinite",
    "init_from": "--init-from",
    "out_dir": "--out",
    "val_fraction": "--val-fraction",
    "val_every": "--val-every",
    "val_metric": "--val-metric",
    "patience": "--patience",
}
"""TrainOptions field -> the `dgsnet train` flag that sets it."""


def flag_error(exc: Exception, flags: Mapping[str, str] = FIELD_FLAGS) -> UsageError:
    """A `UsageError` (exit 2) with `exc`'s message, its leading field name replaced by the
    flag that sets it (the message unchanged when it starts with no field of `flags`).

    Args:
        exc: the error whose message names a field first.
        flags: field -> flag (default: `FIELD_FLAGS`, the TrainOptions fields).
    """
    text = str(exc)
    field, sep, rest = text.partition(" ")
    if sep and field in flags:
        text = f"{flags[field]} {rest}"
    return UsageError(text)
