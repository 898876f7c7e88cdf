"""`dgsnet train`'s error messages in the user's terms: the flag, not the option field.

`TrainOptions` names its fields (`batch_size must be an integer >=
1, got 0`); a command-line user typed `--batch-size`. `flag_error` rewrites the
message's leading field name into the flag that sets it.

Examples:
    >>> from dgsnet.errors import TrainingConfigError
    >>> str(flag_error(TrainingConfigError("batch_size must be an integer >= 1, got 0")))
    '--batch-size must be an integer >= 1, got 0'
"""

from __future__ import annotations

from ..errors import UsageError

__all__ = ["FIELD_FLAGS", "flag_error"]

#: TrainOptions field -> the `dgsnet train` flag that sets it
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
}


def flag_error(exc: Exception) -> UsageError:
    """A `UsageError` (exit 2) with `exc`'s message, its leading
    TrainOptions field name replaced by the flag (the message unchanged when it starts with
    no known field)."""
    text = str(exc)
    field, sep, rest = text.partition(" ")
    if sep and field in FIELD_FLAGS:
        text = f"{FIELD_FLAGS[field]} {rest}"
    return UsageError(text)
