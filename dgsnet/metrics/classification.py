"""Top-1 and per-class accuracy of a classifier with more than two classes.

The detection metrics (`acc`, `r_acc`, `f_acc`, AP) describe a binary real/fake head: a
probability of "fake" against a threshold. A head with `C` classes has no such probability;
its prediction is the most probable class, and its metrics are the top-1 accuracy (the
fraction of images whose predicted class is their label), the accuracy within each class
(the fraction of that class's images predicted as it, the class's recall) and their mean
(balanced accuracy, which a large class cannot dominate).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .tables import markdown_grid

__all__ = ["ClassificationReport", "reports_csv", "reports_json"]


@dataclass(frozen=True)
class ClassificationReport:
    """Top-1 and per-class accuracy of one test set.

    Examples:
        >>> r = ClassificationReport.from_predictions([0, 0, 1, 2], [0, 1, 1, 2], ["a", "b", "c"])
        >>> r.top1, r.class_accuracy, r.mean_class_accuracy
        (0.75, {'a': 0.5, 'b': 1.0, 'c': 1.0}, 0.8333333333333334)
    """

    classes: tuple[str, ...]
    """The class names, in label order."""
    correct: tuple[int, ...]
    """Per class: its images predicted as it."""
    counts: tuple[int, ...]
    """Per class: its images in the test set."""

    def __post_init__(self) -> None:
        if not (len(self.classes) == len(self.correct) == len(self.counts)):
            raise ValueError(
                f"classes, correct and counts differ in length: {len(self.classes)}, "
                f"{len(self.correct)}, {len(self.counts)}"
            )
        if any(c < 0 or c > n for c, n in zip(self.correct, self.counts, strict=True)):
            raise ValueError("each class needs 0 <= correct <= count")

    @classmethod
    def from_predictions(
        cls, labels: Sequence[int] | Any, predicted: Sequence[int] | Any, classes: Sequence[str]
    ) -> ClassificationReport:
        """The report of integer labels against predicted classes.

        Args:
            labels: the true class of every image, in `0..len(classes)-1`.
            predicted: the predicted class of every image (e.g. the argmax of the logits).
            classes: the class names, in label order.

        Returns:
            The report.

        Raises:
            ValueError: lengths differ, or a label or prediction is not a valid class index.
        """
        y = np.asarray(labels).reshape(-1)
        p = np.asarray(predicted).reshape(-1)
        k = len(classes)
        if y.shape != p.shape:
            raise ValueError(f"{y.size} labels but {p.size} predictions")
        for name, v in (("label", y), ("prediction", p)):
            if v.size and (not np.issubdtype(v.dtype, np.integer) or v.min() < 0 or v.max() >= k):
                raise ValueError(f"every {name} must be a class index in 0..{k - 1}")
        counts = np.bincount(y.astype(np.int64), minlength=k) if y.size else np.zeros(k, int)
        hits = y[y == p].astype(np.int64)
        correct = np.bincount(hits, minlength=k) if hits.size else np.zeros(k, int)
        return cls(tuple(map(str, classes)), tuple(map(int, correct)), tuple(map(int, counts)))

    @property
    def n(self) -> int:
        """Number of images."""
        return sum(self.counts)

    @property
    def top1(self) -> float:
        """The fraction of images whose predicted class is their label (NaN without images)."""
        return sum(self.correct) / self.n if self.n else float("nan")

    @property
    def class_accuracy(self) -> dict[str, float | None]:
        """Per class, the fraction of its images predicted as it; `None` for a class without
        images in the test set."""
        return {
            name: (c / n if n else None)
            for name, c, n in zip(self.classes, self.correct, self.counts, strict=True)
        }

    @property
    def mean_class_accuracy(self) -> float:
        """The mean of the per-class accuracies over the classes with images (balanced
        accuracy)."""
        values = [v for v in self.class_accuracy.values() if v is not None]
        return float(np.mean(values)) if values else float("nan")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: the counts, and the accuracies they give."""
        return {
            "format": "dgsnet.classification_report",
            "version": 1,
            "top1": self.top1,
            "mean_class_accuracy": self.mean_class_accuracy,
            "n": self.n,
            "classes": [
                {"class": name, "accuracy": acc, "correct": c, "n": n}
                for (name, acc), c, n in zip(
                    self.class_accuracy.items(), self.correct, self.counts, strict=True
                )
            ],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ClassificationReport:
        """The report `to_dict` wrote."""
        rows = d["classes"]
        return cls(
            tuple(r["class"] for r in rows),
            tuple(int(r["correct"]) for r in rows),
            tuple(int(r["n"]) for r in rows),
        )

    def to_markdown(self) -> str:
        """The per-class table (x100, one decimal) and the top-1 and mean rows."""

        def pct(v: float | None) -> str:
            return "-" if v is None or v != v else f"{100 * v:.1f}"

        rows = [
            [name, pct(acc), str(n)]
            for (name, acc), n in zip(self.class_accuracy.items(), self.counts, strict=True)
        ]
        rows += [
            ["top-1", pct(self.top1), str(self.n)],
            ["mean per class", pct(self.mean_class_accuracy), str(self.n)],
        ]
        return markdown_grid(["class", "acc", "n"], rows) + "\n"

    def csv_rows(self) -> list[dict[str, Any]]:
        """One row per class (`class`, `accuracy`, `correct`, `n`), then `top-1` and `mean`."""
        rows: list[dict[str, Any]] = [
            {"class": r["class"], "accuracy": r["accuracy"], "correct": r["correct"], "n": r["n"]}
            for r in self.to_dict()["classes"]
        ]
        rows.append({"class": "top-1", "accuracy": self.top1, "correct": sum(self.correct),
                     "n": self.n})  # fmt: skip
        rows.append({"class": "mean", "accuracy": self.mean_class_accuracy, "correct": "",
                     "n": self.n})  # fmt: skip
        return rows

    def __str__(self) -> str:
        return self.to_markdown()


def reports_csv(reports: Mapping[str, ClassificationReport], degradation: str = "clean") -> str:
    """Several reports as one CSV: `root,degradation,class,accuracy,correct,n`."""
    buf = io.StringIO()
    writer = csv.DictWriter(
        buf, ["root", "degradation", "class", "accuracy", "correct", "n"], lineterminator="\n"
    )
    writer.writeheader()
    for root, report in reports.items():
        for row in report.csv_rows():
            writer.writerow({"root": root, "degradation": degradation, **row})
    return buf.getvalue()


def reports_json(reports: Mapping[str, ClassificationReport], degradation: str = "clean") -> str:
    """Several reports as JSON: `{"degradation": ..., "reports": {root: report dict}}`."""
    body = {"degradation": degradation, "reports": {k: r.to_dict() for k, r in reports.items()}}
    return json.dumps(body, indent=1) + "\n"
