"""The output of `dgsnet predict`: one record per image, as CSV, a JSON array or JSON lines."""

from __future__ import annotations

import json
from collections.abc import Sequence

__all__ = ["FORMATS", "format_predictions"]

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
