"""Metrics of test subsets that hold one class only (`dgsnet eval --allow-single-class`).

On a subset of real images only, the real accuracy `r_acc` (the fraction scored
`<= threshold`) is defined, but the fake accuracy, the average precision and the oracle
accuracy are not (they need both classes); on a fake-only subset only `f_acc` is. Such a
subset gets a `SingleClassRow` instead of a row of the two-class
`MetricsTable`.

Examples:
    >>> split_single_class({"a": ([0, 0], [0.2, 0.9])})[1]["a"]
    SingleClassRow(metric='r_acc', value=0.5, n=2)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["SingleClassRow", "single_class_markdown", "split_single_class"]


@dataclass(frozen=True)
class SingleClassRow:
    """The one defined rate of a single-class subset: `metric` is `"r_acc"` (real images
    only) or `"f_acc"` (fake images only), `value` a fraction, `n` the image count."""

    metric: str
    value: float
    n: int

    def to_dict(self) -> dict[str, float | int | str]:
        return {"metric": self.metric, "value": self.value, "n": self.n}


def split_single_class(
    predictions: Mapping[str, tuple[Sequence[int], Sequence[float]]], threshold: float = 0.5
) -> tuple[dict[str, tuple[Sequence[int], Sequence[float]]], dict[str, SingleClassRow]]:
    """Split `{subset: (labels, scores)}` into the two-class subsets (unchanged) and a
    `SingleClassRow` for each subset with one class (a score `> threshold` is a
    "fake" prediction, as in `compute_metrics`)."""
    two: dict[str, tuple[Sequence[int], Sequence[float]]] = {}
    single: dict[str, SingleClassRow] = {}
    for name, (labels, scores) in predictions.items():
        kinds = {int(y) for y in labels}
        if len(kinds) == 2 or not labels:
            two[name] = (labels, scores)
            continue
        fake = kinds == {1}
        right = sum(1 for s in scores if (float(s) > threshold) == fake)
        metric = "f_acc" if fake else "r_acc"
        single[name] = SingleClassRow(metric, right / len(scores), len(scores))
    return two, single


def single_class_markdown(rows: Mapping[str, SingleClassRow]) -> str:
    """A markdown table: subset, images, the metric and its value x100."""
    lines = ["| subset | images | metric | value |", "|---|---:|---|---:|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r.n} | {r.metric} | {100.0 * r.value:.1f} |")
    return "\n".join(lines)
