"""`dgsnet.single_class`: an earlier path of `dgsnet.metrics.single_class`, kept working.

This module re-exports the public names of `dgsnet.metrics.single_class`; new code imports
them from `dgsnet.metrics`.
"""

from .metrics.single_class import SingleClassRow, single_class_markdown, split_single_class

__all__ = ["SingleClassRow", "single_class_markdown", "split_single_class"]
