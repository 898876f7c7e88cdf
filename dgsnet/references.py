"""`dgsnet.references`: an earlier path of `dgsnet.wrapper.references`, kept working.

This module re-exports the public names of `dgsnet.wrapper.references`; new code imports them
from there (or from `dgsnet` / `dgsnet.wrapper`).
"""

from .wrapper.references import (
    guard_help,
    help_reference,
    text_reference,
)

__all__ = [
    "guard_help",
    "help_reference",
    "text_reference",
]
