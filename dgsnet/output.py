"""`dgsnet.output`: an earlier path of `dgsnet.wrapper.output`, kept working.

This module re-exports the public names of `dgsnet.wrapper.output`; new code imports them
from there (or from `dgsnet` / `dgsnet.wrapper`).
"""

from .wrapper.output import (
    DGSOutput,
    SurgeryResult,
)

__all__ = [
    "DGSOutput",
    "SurgeryResult",
]
