"""The options of a training run, checked once: `TrainOptions`.

The command line and `dgsnet.training.train` both build one; the trainer trusts it.

Examples:
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
from .precision import parse_precision

__all__ = [
    "MAX_SEED",
    "TrainOptions",
    "check_int_at_least",
    "check_positive_float",
    "check_seed",
    "parse_stage",
]


def check_int_at_least(name: str, value: Any, minimum: int = 1) -> int:
    """`value` as an `int` if it is an integer (not a bool) `>= minimum`.

    Raises:
        TrainingConfigError: naming `name`, the bound and the value given.
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise TrainingConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


#: the largest seed: torch's generators take 64-bit seeds; a run's seeds stay signed int64
MAX_SEED = 2**63 - 1


def check_seed(value: Any) -> int:
    """`value` as an `int` if it is an integer in `[0, MAX_SEED]` (not a bool).

    Raises:
        TrainingConfigError: naming `seed`, the range and the value given.
    """
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, np.integer))
        or not 0 <= value <= MAX_SEED
    ):
        raise TrainingConfigError(f"seed must be an integer in [0, 2**63 - 1], got {value!r}")
    return int(value)


def check_positive_float(name: str, value: Any) -> float:
    """`value` as a `float` if it is a finite number `> 0` (not a bool).

    Raises:
        TrainingConfigError: naming `name` and the value given.
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
    """`"1"`, `"2"` or `"both"` from `1`, `2`, `"both"` (any case).

    Raises:
        TrainingConfigError: any other value.
    """
    s = str(stage).lower()
    if s not in ("1", "2", "both"):
        raise TrainingConfigError(f"stage must be 1, 2 or 'both', got {stage!r}")
    return s


BINARY_METRICS = ("acc", "ap", "best_acc", "r_acc", "f_acc")
"""The validation metrics of a binary real/fake head (the first is the default)."""
CLASS_METRICS = ("top1", "mean_class_accuracy")
"""The validation metrics of a head with more than one class (the first is the default)."""
VAL_METRICS = ("auto", *BINARY_METRICS, *CLASS_METRICS)
"""The values of `TrainOptions.val_metric`."""


def _check_fraction(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise TrainingConfigError(f"val_fraction must be a number in [0, 1), got {value!r}")
    return float(value)


@dataclass(frozen=True)
class TrainOptions:
    """Every option of a training run that is a value (not a live object), validated once in
    `__post_init__` and normalised (`stage` to `"1"`/`"2"`/`"both"`, counts to
    `int`, rates to `float`, `betas` to a tuple of floats, `out_dir` to a `Path`).

    `dgsnet.training.train` takes the same names as keyword arguments. Bad values raise
    `TrainingConfigError` naming the field, what it expects and what it
    got.

    Raises:
        TrainingConfigError: a field is out of range or of the wrong type.
    """

    out_dir: str | os.PathLike[str]
    """Output folder: `last/` (training state, replaced atomically), `final/` (`save_pretrained`
    weights), `train_log.jsonl`, `run.json`, `summary.json`."""
    stage: int | str = "both"
    """`1` (teacher head only), `2` (LoRA + heads; needs a teacher head from `init_from` unless
    alignment is off) or `"both"`."""
    epochs: int = 1
    """Stage-2 epochs; stage 2 uses Adam(`lr`, `betas`) with the learning rate multiplied by
    `lr_gamma` every `lr_step` epochs."""
    stage1_epochs: int = 3
    """Stage-1 epochs (the teacher head's linear probe)."""
    batch_size: int = 32
    """Images per step (per process under torchrun)."""
    lr: float = 1e-4
    """Stage-2 learning rate."""
    stage1_lr: float = 1e-4
    """Stage-1 learning rate."""
    betas: tuple[float, float] = (0.9, 0.999)
    """Adam's betas, both stages."""
    lr_step: int = 10
    """Multiply the stage-2 learning rate by `lr_gamma` every this many epochs."""
    lr_gamma: float = 0.9
    """The factor of the step schedule (0.9 in the reference)."""
    seed: int = 0
    """Drives the permutation, the augmentation and the LoRA dropout (reproducible)."""
    shuffle: bool = True
    """A new permutation of the data every epoch (`False`: dataset order)."""
    resume: bool | None = None
    """`None` (default) resumes from `out_dir/last` when it exists, `True` requires it, `False`
    deletes any previous training state and starts over."""
    init_from: str | os.PathLike[str] | None = None
    """A checkpoint folder (`save_pretrained` format) whose weights initialise a fresh run, e.g. a
    stage-1 run's `final/` for `stage=2`."""
    save_every: int = 500
    """Write `last/` every this many stage-2 steps (0: at epoch ends only); it is also written after
    stage 1 and at every epoch end."""
    log_every: int = 1
    """Write a step record to `train_log.jsonl` every this many stage-2 steps."""
    on_nonfinite: str = "raise"
    """`"raise"` (`NonFiniteError` naming the step) or `"skip"` (the step's update is dropped:
    weights and optimizer state untouched; counted)."""
    num_workers: int = 0
    """DataLoader worker processes."""
    deterministic_transform: bool = False
    """Declare that the training transform is deterministic; only then are dataset indices passed to
    the wrapper (teacher cache). A random flip or patch shuffle makes it non-deterministic
    (`ModelBundle.deterministic_train`)."""
    deterministic: bool = False
    """`torch.use_deterministic_algorithms(True)` during the run."""
    progress: bool = True
    """Progress bars (tqdm; rank 0 only)."""
    model_info: Mapping[str, Any] | None = None
    """JSON stored as `dgsnet_model.json` beside the weights so that `load_trained` can rebuild the
    model (`ModelBundle.info`)."""
    run_info: Mapping[str, Any] | None = None
    """Extra JSON stored in `run.json` (e.g. the command-line options)."""
    handle_signals: bool = False
    """On SIGINT/SIGTERM finish the step, checkpoint and raise `TrainingInterrupted`."""
    precompute_text: bool = True
    """Compute the text features of every caption once before stage 2 (fixed order and chunking; `U
    x D` floats in CPU memory for `U` distinct captions) and feed them to the wrapper; this makes
    resumed runs bitwise exact and saves text-tower work. `False` passes the captions (the
    wrapper's LRU cache)."""
    tensorboard: bool = False
    """Also write the run log's records as TensorBoard scalars to `out_dir/tensorboard` (rank 0;
    `dgsnet.training.tensorboard`; needs the `tensorboard` extra)."""
    precision: str = "fp32"
    """`"fp32"` (default; TF32 off), `"tf32"` (TF32 matmuls and convolutions on CUDA), `"bf16"`
    (bfloat16 autocast of the forward passes) or `"fp16"` (float16 autocast and a
    `torch.amp.GradScaler` whose state is checkpointed); see `dgsnet.training.precision`.
    Recorded in `run.json`; a run resumes only in the precision it started in."""
    compile: bool = False
    """`torch.compile` the image tower (the student encoder) before stage 2 (`compile_image_tower`);
    opt-in."""
    val_fraction: float = 0.0
    """Hold out this share of the training data (per label, seeded) for validation during
    training; 0: none. Exclusive with validation data given to `train` / `Trainer`."""
    val_every: int = 0
    """Validate every this many stage-2 steps; 0: at the end of every epoch."""
    val_metric: str = "auto"
    """The validation metric that picks `best/` and decides the early stop (higher is
    better): `acc`, `ap`, `best_acc`, `r_acc` or `f_acc` for a binary head, `top1` or
    `mean_class_accuracy` with more classes; `auto`: `acc` or `top1`."""
    patience: int = 0
    """Stop after this many validations without improvement of `val_metric`; 0: never."""

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
            "seed": check_seed(self.seed),
        }
        checked["val_every"] = check_int_at_least("val_every", self.val_every, 0)
        checked["patience"] = check_int_at_least("patience", self.patience, 0)
        checked["val_fraction"] = _check_fraction(self.val_fraction)
        if not isinstance(self.val_metric, str) or self.val_metric not in VAL_METRICS:
            raise TrainingConfigError(
                f"val_metric must be one of {', '.join(VAL_METRICS)}, got {self.val_metric!r}"
            )
        if self.on_nonfinite not in ("raise", "skip"):
            raise TrainingConfigError(
                f"on_nonfinite must be 'raise' or 'skip', got {self.on_nonfinite!r}"
            )
        checked["precision"] = parse_precision(self.precision)
        if not isinstance(self.compile, bool):
            raise TrainingConfigError(f"compile must be True or False, got {self.compile!r}")
        betas = self.betas
        if len(betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas):
            raise TrainingConfigError(f"betas must be two numbers in [0, 1), got {betas!r}")
        checked["betas"] = (float(betas[0]), float(betas[1]))
        checked["out_dir"] = Path(self.out_dir)
        for name, value in checked.items():
            object.__setattr__(self, name, value)

    @property
    def runs_stage1(self) -> bool:
        """Whether the run trains the teacher head (stage `1` or `"both"`)."""
        return self.stage in ("1", "both")

    @property
    def runs_stage2(self) -> bool:
        """Whether the run trains LoRA and the heads (stage `2` or `"both"`)."""
        return self.stage in ("2", "both")
