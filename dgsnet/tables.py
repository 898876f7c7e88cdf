"""`dgsnet.tables`: an earlier path of `dgsnet.metrics.tables`, kept working.

This module re-exports the public names of `dgsnet.metrics.tables`; new code imports them
from `dgsnet.metrics`.
"""

from .metrics.tables import (
    MetricsTable,
    markdown_grid,
    roots_summary_markdown,
    scores_csv,
    tables_csv,
    write_tables_csv,
)

__all__ = [
    "MetricsTable",
    "markdown_grid",
    "roots_summary_markdown",
    "scores_csv",
    "tables_csv",
    "write_tables_csv",
]
