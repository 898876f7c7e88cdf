"""The exceptions dgsnet raises on purpose, in one place.

Every layer imports its error types from here, so a caller (the command line, a user's own
loop) can tell the cases apart by type, never by message text.
"""

from __future__ import annotations

__all__ = [
    "EncoderError",
    "ModelLoadError",
    "NonFiniteError",
    "NonFiniteInputError",
    "TrainingConfigError",
    "TrainingInterrupted",
]


class EncoderError(ValueError):
    """A model or head handed to `DGSWrapper` cannot play its part: a text tower that fails
    or gives features outside the joint embedding, or a head of the wrong width."""


class ModelLoadError(ValueError):
    """A model spec is malformed, or its weights cannot be loaded (not available locally)."""


class TrainingConfigError(ValueError):
    """An argument of `train` / `evaluate` is
    invalid, or a resumed run does not match the checkpoint it resumes."""


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


class NonFiniteInputError(ValueError):
    """A batch handed to `DGSWrapper` holds NaN/Inf images or text features
    (`DGSConfig(nonfinite="raise")`); the message names the batch positions."""


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on SIGINT/SIGTERM after saving a checkpoint (`handle_signals`)."""
