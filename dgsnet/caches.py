"""`dgsnet.caches`: an earlier path of `dgsnet.wrapper.caches`, kept working.

This module re-exports the public names of `dgsnet.wrapper.caches`; new code imports them
from there (or from `dgsnet` / `dgsnet.wrapper`).
"""

from .wrapper.caches import (
    MAX_INDEX,
    TeacherCache,
    TextCache,
)

__all__ = [
    "MAX_INDEX",
    "TeacherCache",
    "TextCache",
]
