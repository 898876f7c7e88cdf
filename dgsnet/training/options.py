"""The options of a training run, checked once: :class:`TrainOptions`.

The command line and :func:`dgsnet.training.train` both build one; the trainer trusts it.

>>> TrainOptions("runs/x", epochs=2, stage="BOTH").stage
'both'
>>> TrainOptions("runs/x", epochs=0)
Traceback (most recent call last):
...
dgsnet.errors.TrainingConfigError: epochs must be an integer >= 1, got 0
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import TrainingConfigError

__all__ = ["TrainOptions", "check_int_at_least", "check_positive_float", "parse_stage"]


def check_int_at_least(name: str, value: Any, minimum: int = 1) -> int:
    """``value`` as an ``int`` if it is an integer (not a bool) ``>= minimum``.

    Raises:
        TrainingConfigError: naming ``name``, the bound and the value given.
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise TrainingConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_positive_float(name: str, value: Any) -> float:
    """``value`` as a ``float`` if it is a finite number ``> 0`` (not a bool).

    Raises:
        TrainingConfigError: naming ``name`` and the value given.
    """
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise TrainingConfigError(f"{name} must be a positive number, got {value!r}")
    return float(value)


def parse_stage(stage: Any) -> str:
    """``"1"``, ``"2"`` or ``"both"`` from ``1``, ``2``, ``"both"`` (any case).

    Raises:
        TrainingConfigError: any other value.
    """
    s = str(stage).lower()
    if s not in ("1", "2", "both"):
        raise TrainingConfigError(f"stage must be 1, 2 or 'both', got {stage!r}")
    return s


@dataclass(frozen=True)
class TrainOptions:
    """Every option of a training run that is a value (not a live object), validated once in
    ``__post_init__`` and normalised (``stage`` to ``"1"``/``"2"``/``"both"``, counts to
    ``int``, rates to ``float``, ``betas`` to a tuple of floats, ``out_dir`` to a ``Path``).

    The fields mean what the parameters of :func:`dgsnet.training.train` of the same names
    mean. Bad values raise :class:`~dgsnet.errors.TrainingConfigError` naming the field, what
    it expects and what it got.

    Raises:
        TrainingConfigError: a field is out of range or of the wrong type.
    """

    out_dir: str | os.PathLike[str]
    stage: int | str = "both"
    epochs: int = 1
    stage1_epochs: int = 3
    batch_size: int = 32
    lr: float = 1e-4
    stage1_lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    lr_step: int = 10
    lr_gamma: float = 0.9
    seed: int = 0
    shuffle: bool = True
    resume: bool | None = None
    init_from: str | os.PathLike[str] | None = None
    save_every: int = 500
    log_every: int = 1
    on_nonfinite: str = "raise"
    num_workers: int = 0
    deterministic_transform: bool = False
    deterministic: bool = False
    progress: bool = True
    model_info: Mapping[str, Any] | None = None
    run_info: Mapping[str, Any] | None = None
    handle_signals: bool = False
    precompute_text: bool = True

    def __post_init__(self) -> None:
        checked: dict[str, Any] = {
            "stage": parse_stage(self.stage),
            "epochs": check_int_at_least("epochs", self.epochs),
            "stage1_epochs": check_int_at_least("stage1_epochs", self.stage1_epochs),
            "batch_size": check_int_at_least("batch_size", self.batch_size),
            "lr": check_positive_float("lr", self.lr),
            "stage1_lr": check_positive_float("stage1_lr", self.stage1_lr),
            "lr_step": check_int_at_least("lr_step", self.lr_step),
            "lr_gamma": check_positive_float("lr_gamma", self.lr_gamma),
            "save_every": check_int_at_least("save_every", self.save_every, 0),
            "log_every": check_int_at_least("log_every", self.log_every),
            "num_workers": check_int_at_least("num_workers", self.num_workers, 0),
            "seed": check_int_at_least("seed", self.seed, 0),
        }
        if self.on_nonfinite not in ("raise", "skip"):
            raise TrainingConfigError(
                f"on_nonfinite must be 'raise' or 'skip', got {self.on_nonfinite!r}"
            )
        betas = self.betas
        if len(betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas):
            raise TrainingConfigError(f"betas must be two numbers in [0, 1), got {betas!r}")
        checked["betas"] = (float(betas[0]), float(betas[1]))
        checked["out_dir"] = Path(self.out_dir)
        for name, value in checked.items():
            object.__setattr__(self, name, value)

    @property
    def runs_stage1(self) -> bool:
        """Whether the run trains the teacher head (stage ``1`` or ``"both"``)."""
        return self.stage in ("1", "both")

    @property
    def runs_stage2(self) -> bool:
        """Whether the run trains LoRA and the heads (stage ``2`` or ``"both"``)."""
        return self.stage in ("2", "both")
