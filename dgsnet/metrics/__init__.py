"""Scores of AI-generated-image detectors: the metrics, their tables, single-class subsets.

One home per name, all importable from here:

- `dgsnet.metrics.detection`: acc, r_acc, f_acc, AP and best-threshold accuracy in numpy
  (`compute_metrics`, `DetectionMetrics`, ...);
- `dgsnet.metrics.tables`: `MetricsTable` and the CSV / Markdown tables of `dgsnet eval` and
  `dgsnet predict`;
- `dgsnet.metrics.single_class`: the r_acc or f_acc row of a subset with one class
  (`dgsnet eval --allow-single-class`).

The conventions (label 1 = fake, a score is the probability of fake, predicted fake iff
`score > 0.5`) are those of the field; see `docs/metrics.md`.

Examples:
    >>> from dgsnet.metrics import compute_metrics
    >>> m = compute_metrics([0, 0, 1, 1], [0.2, 0.625, 0.875, 0.9])
    >>> m.acc, m.r_acc, m.f_acc, m.ap
    (0.75, 0.5, 1.0, 1.0)
    >>> m.best_acc, m.best_threshold
    (1.0, 0.75)
"""

from __future__ import annotations

from .detection import (
    DEFAULT_THRESHOLD,
    TABLE_COLUMNS,
    BestThreshold,
    DetectionMetrics,
    PathLike,
    accuracy,
    average_precision,
    best_threshold_accuracy,
    check_threshold,
    compute_metrics,
    fake_accuracy,
    real_accuracy,
)
from .single_class import SingleClassRow, single_class_markdown, split_single_class
from .tables import (
    MetricsTable,
    markdown_grid,
    roots_summary_markdown,
    scores_csv,
    tables_csv,
    write_tables_csv,
)

__all__ = [
    "DEFAULT_THRESHOLD",
    "TABLE_COLUMNS",
    "BestThreshold",
    "DetectionMetrics",
    "MetricsTable",
    "PathLike",
    "SingleClassRow",
    "accuracy",
    "average_precision",
    "best_threshold_accuracy",
    "check_threshold",
    "compute_metrics",
    "fake_accuracy",
    "markdown_grid",
    "real_accuracy",
    "roots_summary_markdown",
    "scores_csv",
    "single_class_markdown",
    "split_single_class",
    "tables_csv",
    "write_tables_csv",
]
