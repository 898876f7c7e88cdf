"""The output of `dgsnet predict`: one record per image, as CSV, a JSON array or JSON lines."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence

__all__ = ["FORMATS", "format_class_predictions", "format_predictions"]

FORMATS = ("csv", "json", "jsonl")
"""The values of `dgsnet predict --format`."""


def format_predictions(
    paths: Sequence[str], scores: Sequence[float], threshold: float, fmt: str = "csv"
) -> str:
    """The records `path, score, label_pred` of a binary detector as text.

    `score` is the probability of fake, `label_pred` 1 when `score > threshold`, else 0.
    CSV has a header and 6-decimal scores (`dgsnet.metrics.scores_csv`); the JSON forms keep
    every digit of the float.

    Args:
        paths: the image paths.
        scores: one score per path.
        threshold: an image is predicted fake iff `score > threshold`.
        fmt: `"csv"`, `"json"` (one array of objects) or `"jsonl"` (one object per line).

    Returns:
        The text, ending with a newline.

    Raises:
        ValueError: an unknown `fmt`, or paths and scores of different lengths.

    Examples:
        >>> print(format_predictions(["a.png"], [0.75], 0.5, "jsonl"), end="")
        {"path": "a.png", "score": 0.75, "label_pred": 1}
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    if len(paths) != len(scores):
        raise ValueError(f"{len(paths)} paths but {len(scores)} scores")
    if fmt == "csv":
        from ..metrics import scores_csv

        return scores_csv(paths, scores, threshold)
    t = float(threshold)
    records = [
        {"path": p, "score": float(s), "label_pred": int(s > t)}
        for p, s in zip(paths, scores, strict=True)
    ]
    if fmt == "jsonl":
        return "".join(json.dumps(r) + "\n" for r in records)
    return json.dumps(records, indent=1) + "\n"


def format_class_predictions(
    paths: Sequence[str], probabilities: Sequence[Sequence[float]], fmt: str = "csv"
) -> str:
    """The records of a classifier with `C > 1` classes: one probability per class and the
    most probable class, `label_pred`.

    CSV columns are `path, prob_0, ..., prob_{C-1}, label_pred` (6 decimals); the JSON
    forms hold `{"path", "probabilities": [C floats], "label_pred"}`. No column is called a
    score: a class's probability is no probability of fake.

    Args:
        paths: the image paths.
        probabilities: one row of `C` class probabilities per path.
        fmt: `"csv"`, `"json"` or `"jsonl"`.

    Returns:
        The text, ending with a newline.

    Raises:
        ValueError: an unknown `fmt`, rows of different lengths, or lengths that differ.

    Examples:
        >>> print(format_class_predictions(["a.png"], [[0.25, 0.5, 0.25]]), end="")
        path,prob_0,prob_1,prob_2,label_pred
        a.png,0.250000,0.500000,0.250000,1
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    rows = [[float(v) for v in row] for row in probabilities]
    if len(paths) != len(rows):
        raise ValueError(f"{len(paths)} paths but {len(rows)} rows of probabilities")
    k = len(rows[0]) if rows else 0
    if any(len(r) != k for r in rows):
        raise ValueError("every row needs one probability per class")
    labels = [max(range(k), key=row.__getitem__) for row in rows]
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["path", *(f"prob_{c}" for c in range(k)), "label_pred"])
        for path, row, label in zip(paths, rows, labels, strict=True):
            writer.writerow([path, *(f"{v:.6f}" for v in row), label])
        return buf.getvalue()
    records = [
        {"path": p, "probabilities": row, "label_pred": label}
        for p, row, label in zip(paths, rows, labels, strict=True)
    ]
    if fmt == "jsonl":
        return "".join(json.dumps(r) + "\n" for r in records)
    return json.dumps(records, indent=1) + "\n"
