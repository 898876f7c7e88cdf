"""`dgsnet.config`: an earlier path of `dgsnet.wrapper.config`, kept working.

This module re-exports the public names of `dgsnet.wrapper.config`; new code imports them
from there (or from `dgsnet` / `dgsnet.wrapper`).
"""

from .wrapper.config import (
    DGSConfig,
)

__all__ = [
    "DGSConfig",
]
