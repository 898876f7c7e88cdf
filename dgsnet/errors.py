"""The exceptions and warnings dgsnet raises on purpose, in one place.

Every layer imports its error types from here, so a caller (the command line, a user's own
loop) can tell the cases apart by type, never by message text. The modules that first defined
some of them (`dgsnet.io`, `dgsnet.data`, `dgsnet.surgery`, `dgsnet.training.lock`,
`dgsnet.cli.errors`) still re-export them, so those import paths keep working.

This module imports nothing from dgsnet.
"""

from __future__ import annotations

import os

__all__ = [
    "CaptionError",
    "CaptionFallbackWarning",
    "CheckpointError",
    "CorruptImageError",
    "DatasetError",
    "EncoderError",
    "ImageRangeWarning",
    "ModelLoadError",
    "NonFiniteError",
    "NonFiniteInputError",
    "RuleOutputError",
    "RunLockedError",
    "TrainingConfigError",
    "TrainingInterrupted",
    "UsageError",
]


# --------------------------------------------------------------------------------------------
# the method and the wrapper
# --------------------------------------------------------------------------------------------


class RuleOutputError(TypeError, ValueError):
    """A rule returned something other than a tensor of the gradient's shape, dtype and
    device (for instance `None`, a list, a flattened or a float64 tensor). The message names
    the rule's class, what was expected and what arrived. A `TypeError` and a `ValueError`
    at once, so either `except` catches it."""


class EncoderError(ValueError):
    """A model or head handed to `DGSWrapper` cannot play its part: a text tower that fails
    or gives features outside the joint embedding, or a head of the wrong width."""


class NonFiniteInputError(ValueError):
    """A batch handed to `DGSWrapper` holds NaN/Inf images or text features
    (`DGSConfig(nonfinite="raise")`); the message names the batch positions."""


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated, tampered with or does not fit the model."""


class ModelLoadError(ValueError):
    """A model spec is malformed, or its weights cannot be loaded (not available locally)."""


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------


class DatasetError(ValueError):
    """A dataset folder, an image file or a caption file is not what was expected.

    The message always names the folder or file concerned and what was expected there.
    """


class CorruptImageError(DatasetError):
    """An image file cannot be decoded (unreadable, truncated, not an image).

    `path` holds the file, `reason` what the decoder said.

    Args:
        path: the image file.
        reason: what the decoder said.
    """

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"cannot read image {self.path}: {reason}")

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        # survive pickling across DataLoader worker processes with path and reason intact
        return (type(self), (self.path, self.reason))


class CaptionError(DatasetError):
    """Captions are missing for some images, ambiguous, or a caption file is malformed.

    `missing` lists the image paths that have no caption (possibly empty).

    Args:
        message: what is wrong.
        missing: the image paths without a caption.
    """

    def __init__(self, message: str, missing: list[str] | None = None) -> None:
        self.missing = list(missing or [])
        super().__init__(message)


class ImageRangeWarning(UserWarning):
    """A float image held values outside 0..1, which `load_image` clipped."""


class CaptionFallbackWarning(UserWarning):
    """A template caption stands in for a real (BLIP) caption.

    The training still runs, but the text branch then carries no per-image semantic content,
    so Orthogonal Suppression no longer does what the method intends (see `docs/captions.md`).
    Turn it into an error with `warnings.simplefilter("error", CaptionFallbackWarning)`.
    """


# --------------------------------------------------------------------------------------------
# training and the command line
# --------------------------------------------------------------------------------------------


class TrainingConfigError(ValueError):
    """An argument of `train` / `evaluate` is
    invalid, or a resumed run does not match the checkpoint it resumes."""


class RunLockedError(TrainingConfigError):
    """Another live process holds the lock on the output folder."""


class NonFiniteError(FloatingPointError):
    """The loss or a gradient was NaN/Inf (`on_nonfinite="raise"`); the message names the
    stage, epoch and step. `step` holds the global stage-2 step number.

    Args:
        message: what was non-finite, and where.
        step: the global stage-2 step, when known.
    """

    def __init__(self, message: str, step: int | None = None) -> None:
        super().__init__(message)
        self.step = step


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on SIGINT/SIGTERM after saving a checkpoint (`handle_signals`)."""


class UsageError(ValueError):
    """A command-line option or input is invalid (exit status 2)."""
