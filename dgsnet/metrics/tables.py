"""Tables of detection metrics: `MetricsTable` (one row per subset and a mean row),
the Markdown grid, and the CSV text of `dgsnet eval` (several roots) and `dgsnet predict`
(per-image scores).

Every name here is also importable from `dgsnet.metrics`; the numbers themselves come from
`dgsnet.metrics.detection`.

Examples:
    >>> from dgsnet.metrics import MetricsTable
    >>> t = MetricsTable.from_predictions({"a": ([0, 1], [0.2, 0.9])})
    >>> t.mean()["acc"]
    1.0
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from .detection import (
    DEFAULT_THRESHOLD,
    TABLE_COLUMNS,
    DetectionMetrics,
    PathLike,
    check_threshold,
    compute_metrics,
)

__all__ = [
    "MetricsTable",
    "markdown_grid",
    "roots_summary_markdown",
    "scores_csv",
    "tables_csv",
    "write_tables_csv",
]

_TABLE_FORMAT = "dgsnet.metrics_table"
_TABLE_VERSION = 1
_CSV_COLUMNS = ("subset", *TABLE_COLUMNS, "best_threshold", "n_real", "n_fake")
_MEAN_ROW = "mean"


def _check_subset_name(name: Any) -> str:
    if not isinstance(name, str):
        raise TypeError(f"subset names must be strings; got {name!r}")
    if not name.strip():
        raise ValueError(f"subset names must be non-empty; got {name!r}")
    if "\n" in name or "\r" in name:
        raise ValueError(f"subset names must be on one line; got {name!r}")
    if name == _MEAN_ROW:
        raise ValueError(f"{_MEAN_ROW!r} is reserved for the mean row; rename that subset")
    return name


def _pairs(items: Mapping[str, Any] | Iterable[tuple[str, Any]], what: str):
    pairs = items.items() if isinstance(items, Mapping) else items
    seen: set[str] = set()
    for pair in pairs:
        try:
            name, value = pair
        except (TypeError, ValueError):
            raise TypeError(
                f"{what} must be a mapping or (name, value) pairs; got {pair!r}"
            ) from None
        name = _check_subset_name(name)
        if name in seen:
            raise ValueError(f"duplicate subset name {name!r}")
        seen.add(name)
        yield name, value


def _write_text(path: PathLike, text: str) -> None:
    """Atomically, with `dgsnet.io.atomic_write_text` (imported here, so that this
    module still loads on its own with numpy only)."""
    from ..io import atomic_write_text

    atomic_write_text(Path(path), text)


def markdown_grid(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table with padded columns: the first left-aligned, the others right-aligned
    (the layout of `MetricsTable.to_markdown`). Cells are strings, already escaped.

    Args:
        header: the column names.
        rows: the cells, one list per row.

    Returns:
        The table, one line per row, without a final newline.
    """
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) for i in range(len(header))]

    def line(row: list[str]) -> str:
        parts = [row[0].ljust(widths[0])] + [
            v.rjust(w) for v, w in zip(row[1:], widths[1:], strict=True)
        ]
        return "| " + " | ".join(parts) + " |"

    rule = "|:" + "-" * (widths[0] + 1) + "|"
    rule += "".join("-" * (w + 1) + ":|" for w in widths[1:])
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


class MetricsTable:
    """Per-subset `DetectionMetrics` in a fixed order, with a mean row.

    The mean row is the plain (unweighted) mean over subsets of each column of
    `TABLE_COLUMNS`, computed from the unrounded values.

    Args:
        rows: `{subset: metrics}` or `(subset, metrics)` pairs, in table order.
        threshold: the threshold the metrics were computed at (recorded with the table).

    Examples:
        >>> preds = {"a": ([0, 1], [0.2, 0.9]), "b": ([0, 1], [0.6, 0.7])}
        >>> t = MetricsTable.from_predictions(preds)
        >>> print(t.to_markdown())
        | subset |   acc | r_acc | f_acc |    ap | best_acc |
        |:-------|------:|------:|------:|------:|---------:|
        | a      | 100.0 | 100.0 | 100.0 | 100.0 |    100.0 |
        | b      |  50.0 |   0.0 | 100.0 | 100.0 |    100.0 |
        | mean   |  75.0 |  50.0 | 100.0 | 100.0 |    100.0 |
    """

    def __init__(
        self,
        rows: Mapping[str, DetectionMetrics] | Iterable[tuple[str, DetectionMetrics]],
        *,
        threshold: float = DEFAULT_THRESHOLD,
    ) -> None:
        self._rows: dict[str, DetectionMetrics] = {}
        for name, m in _pairs(rows, "rows"):
            if not isinstance(m, DetectionMetrics):
                raise TypeError(f"row {name!r} must be a DetectionMetrics; got {type(m).__name__}")
            self._rows[name] = m
        if not self._rows:
            raise ValueError("a MetricsTable needs at least one subset")
        self.threshold = check_threshold(threshold)

    @classmethod
    def from_predictions(
        cls,
        predictions: Mapping[str, tuple[Any, Any]] | Iterable[tuple[str, tuple[Any, Any]]],
        *,
        threshold: float = DEFAULT_THRESHOLD,
    ) -> MetricsTable:
        """Build a table from `{subset: (y_true, scores)}`, keeping the subsets' order.
        An invalid subset raises with the subset's name in the message.

        Args:
            predictions: `{subset: (y_true, scores)}` or `(subset, (y_true, scores))` pairs.
            threshold: an image is predicted fake iff `score > threshold`.

        Returns:
            The table.

        Raises:
            ValueError: a subset's labels or scores are invalid.
        """
        rows = {}
        for name, pred in _pairs(predictions, "predictions"):
            if not (isinstance(pred, (tuple, list)) and len(pred) == 2):
                raise TypeError(f"subset {name!r}: expected a (y_true, scores) pair")
            try:
                rows[name] = compute_metrics(pred[0], pred[1], threshold=threshold)
            except (ValueError, TypeError) as exc:
                raise type(exc)(f"subset {name!r}: {exc}") from exc
        return cls(rows, threshold=threshold)

    # -- container protocol ------------------------------------------------------------------

    @property
    def subsets(self) -> tuple[str, ...]:
        return tuple(self._rows)

    @property
    def rows(self) -> dict[str, DetectionMetrics]:
        """A copy of the rows, in order."""
        return dict(self._rows)

    def __getitem__(self, subset: str) -> DetectionMetrics:
        return self._rows[subset]

    def __iter__(self) -> Iterator[str]:
        return iter(self._rows)

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, subset: object) -> bool:
        return subset in self._rows

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MetricsTable):
            return NotImplemented
        return self.threshold == other.threshold and list(self._rows.items()) == list(
            other._rows.items()
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"MetricsTable(subsets={list(self._rows)!r}, threshold={self.threshold!r})"

    def __str__(self) -> str:
        return self.to_markdown()

    def mean(self) -> dict[str, float]:
        """The plain mean over subsets of each column of `TABLE_COLUMNS`."""
        n = len(self._rows)
        return {c: math.fsum(getattr(m, c) for m in self._rows.values()) / n for c in TABLE_COLUMNS}

    # -- output ------------------------------------------------------------------------------

    def to_markdown(self, path: PathLike | None = None) -> str:
        """The table as Markdown: columns subset / acc / r_acc / f_acc / ap / best_acc, values
        x100 with one decimal, a final `mean` row. Written atomically to `path` if given.
        A `|` in a subset name is escaped as `\\|`.

        Args:
            path: where to write the table as well, or `None`.

        Returns:
            The Markdown text.
        """
        body = [
            [name.replace("|", "\\|"), *(getattr(m, c) for c in TABLE_COLUMNS)]
            for name, m in self._rows.items()
        ]
        mean = self.mean()
        body.append([_MEAN_ROW, *(mean[c] for c in TABLE_COLUMNS)])
        cells = [[r[0], *(f"{100.0 * v:.1f}" for v in r[1:])] for r in body]
        text = markdown_grid(["subset", *TABLE_COLUMNS], cells)
        if path is not None:
            _write_text(path, text + "\n")
        return text

    def _csv_text(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(_CSV_COLUMNS)
        for name, m in self._rows.items():
            w.writerow(
                [
                    name,
                    *(repr(float(getattr(m, c))) for c in _CSV_COLUMNS[1:-2]),
                    m.n_real,
                    m.n_fake,
                ]
            )
        mean = self.mean()
        w.writerow([_MEAN_ROW, *(repr(mean[c]) for c in TABLE_COLUMNS), "", "", ""])
        return buf.getvalue()

    def to_csv(self, path_or_file: PathLike | IO[str]) -> None:
        """Write the table as CSV: columns subset, acc, r_acc, f_acc, ap, best_acc,
        best_threshold, n_real, n_fake; rates as fractions in [0, 1] at full precision (not
        x100); a final `mean` row whose best_threshold/n_real/n_fake cells are empty.

        `path_or_file` is a path (written atomically) or an open text file (written in
        place; open it with `newline=""`).

        Args:
            path_or_file: a path or an open text file.
        """
        text = self._csv_text()
        if isinstance(path_or_file, (str, os.PathLike)):
            _write_text(path_or_file, text)
        elif hasattr(path_or_file, "write"):
            path_or_file.write(text)
        else:
            raise TypeError(
                f"to_csv needs a path or an open text file; got {type(path_or_file).__name__}"
            )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: format tag, version, threshold, the subsets in order (a list),
        and the mean row (informative; `from_dict` recomputes it)."""
        return {
            "format": _TABLE_FORMAT,
            "version": _TABLE_VERSION,
            "threshold": self.threshold,
            "subsets": [{"subset": name, **m.to_dict()} for name, m in self._rows.items()],
            "mean": self.mean(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MetricsTable:
        """Read back a table written by `to_dict`.

        Args:
            d: the record.

        Returns:
            The table.

        Raises:
            ValueError: not a dgsnet metrics table, an unsupported version, or a bad subset record.
        """
        if not isinstance(d, Mapping) or d.get("format") != _TABLE_FORMAT:
            raise ValueError(f"not a dgsnet metrics table (expected format {_TABLE_FORMAT!r})")
        if d.get("version") != _TABLE_VERSION:
            raise ValueError(
                f"unsupported metrics table version {d.get('version')!r} "
                f"(this dgsnet reads version {_TABLE_VERSION})"
            )
        subsets = d.get("subsets")
        if not isinstance(subsets, list):
            raise ValueError("metrics table: 'subsets' must be a list of records")
        rows = []
        for rec in subsets:
            if not isinstance(rec, Mapping) or "subset" not in rec:
                raise ValueError(f"metrics table: bad subset record {rec!r}")
            rec = dict(rec)
            name = rec.pop("subset")
            try:
                rows.append((name, DetectionMetrics.from_dict(rec)))
            except ValueError as exc:
                raise ValueError(f"metrics table, subset {name!r}: {exc}") from exc
        return cls(rows, threshold=d.get("threshold", DEFAULT_THRESHOLD))

    def to_json(self, path: PathLike, *, indent: int | None = 2) -> None:
        """Write `to_dict` as JSON, atomically.

        Args:
            path: the file to write.
            indent: JSON indentation (`None`: one line).
        """
        text = json.dumps(self.to_dict(), indent=indent, allow_nan=False)
        _write_text(path, text + "\n")

    @classmethod
    def from_json(cls, path: PathLike) -> MetricsTable:
        """Read back a table written by `to_json`.

        Args:
            path: the file written by `to_json`.

        Returns:
            The table.

        Raises:
            ValueError: as for `from_dict`, or the file is not JSON.
        """
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))


# --------------------------------------------------------------------------------------------
# several roots: the eval command's summary table and CSV; per-image scores
# --------------------------------------------------------------------------------------------


def roots_summary_markdown(tables: Mapping[str, MetricsTable]) -> str:
    """One Markdown row per root: its number of subsets and its mean row (the plain mean over
    its subsets, x100, one decimal), i.e. one row per benchmark when each root is one.

    Args:
        tables: `{root: table}`, in row order.

    Returns:
        The Markdown text.

    Examples:
        >>> t = MetricsTable.from_predictions({"a": ([0, 1], [0.2, 0.9])})
        >>> print(roots_summary_markdown({"bench": t}))
        | root  | subsets |   acc | r_acc | f_acc |    ap | best_acc |
        |:------|--------:|------:|------:|------:|------:|---------:|
        | bench |       1 | 100.0 | 100.0 | 100.0 | 100.0 |    100.0 |
    """
    rows = [
        [
            root.replace("|", "\\|"),
            str(len(table)),
            *(f"{100.0 * table.mean()[c]:.1f}" for c in TABLE_COLUMNS),
        ]
        for root, table in tables.items()
    ]
    return markdown_grid(["root", "subsets", *TABLE_COLUMNS], rows)


def tables_csv(tables: Mapping[str, MetricsTable], degradation: str) -> str:
    """Several tables as one CSV text: columns root, degradation, then those of
    `MetricsTable.to_csv` (each table's rows, its mean row included).

    Args:
        tables: `{root: table}`.
        degradation: the value of the degradation column.

    Returns:
        The CSV text.
    """
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["root", "degradation", *_CSV_COLUMNS])
    for root, table in tables.items():
        rows = list(csv.reader(io.StringIO(table._csv_text())))
        for row in rows[1:]:
            writer.writerow([root, degradation, *row])
    return buf.getvalue()


def write_tables_csv(path: PathLike, tables: Mapping[str, MetricsTable], degradation: str) -> None:
    """Write `tables_csv` to `path`, atomically.

    Args:
        path: the file to write.
        tables: `{root: table}`.
        degradation: the value of the degradation column.
    """
    _write_text(path, tables_csv(tables, degradation))


def scores_csv(paths: Iterable[str], scores: Iterable[float], threshold: float) -> str:
    """Per-image scores as CSV text: columns path, score (6 decimals), label_pred (1 when
    `score > threshold`, else 0).

    Args:
        paths: the image paths.
        scores: one score per path.
        threshold: an image is predicted fake iff `score > threshold`.

    Returns:
        The CSV text.
    """
    t = float(threshold)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "score", "label_pred"])
    for path, score in zip(paths, scores, strict=True):
        writer.writerow([path, f"{score:.6f}", int(score > t)])
    return buf.getvalue()
