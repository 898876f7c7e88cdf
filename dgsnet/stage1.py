"""`dgsnet.stage1`: an earlier path of `dgsnet.wrapper.stage1`, kept working.

This module re-exports the public names of `dgsnet.wrapper.stage1`; new code imports them
from there (or from `dgsnet` / `dgsnet.wrapper`).
"""

from .wrapper.stage1 import (
    Stage1Batch,
    Stage1Model,
    fit_teacher_head,
)

__all__ = [
    "Stage1Batch",
    "Stage1Model",
    "fit_teacher_head",
]
