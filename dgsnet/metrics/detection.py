"""Evaluation metrics of the AI-generated-image detection field, in plain numpy.

The conventions are those of UnivFD, CNNDetection, AIGCDetectBenchmark, NPR and DGS-Net
(see `docs/metrics.md`):

* label `0` = real, label `1` = fake;
* a *score* is the detector's probability that the image is fake, i.e. `sigmoid(logit)`;
* an image is predicted fake iff `score > threshold` (strictly greater; `threshold = 0.5`),
  exactly as the reference code computes `accuracy_score(y_true, y_pred > 0.5)`;
* `acc` is the accuracy over the whole subset, `r_acc` / `f_acc` the same on the real /
  fake images only, `ap` the average precision of scikit-learn's `average_precision_score`
  (fake = positive class), `best_acc` the oracle accuracy at the best threshold;
* per-benchmark tables list one row per subset and a final `mean` row, the plain mean over
  subsets, printed x100 with one decimal.

This module imports numpy only (no scikit-learn, no torch); torch tensors are accepted by duck
typing (`.detach().cpu()`). Tables of these numbers (`MetricsTable`, the Markdown
grid, the CSV files of `dgsnet eval` and `dgsnet predict`) live in `dgsnet.metrics.tables`;
every public name of both is importable from `dgsnet.metrics`.

Examples:
    >>> from dgsnet.metrics import compute_metrics
    >>> m = compute_metrics([0, 0, 1, 1], [0.2, 0.625, 0.875, 0.9])
    >>> m.acc, m.r_acc, m.f_acc, m.ap
    (0.75, 0.5, 1.0, 1.0)
    >>> m.best_acc, m.best_threshold
    (1.0, 0.75)
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, NamedTuple, Union

import numpy as np

__all__ = [
    "DEFAULT_THRESHOLD",
    "TABLE_COLUMNS",
    "BestThreshold",
    "DetectionMetrics",
    "PathLike",
    "accuracy",
    "average_precision",
    "best_threshold_accuracy",
    "check_threshold",
    "compute_metrics",
    "fake_accuracy",
    "real_accuracy",
]

#: The decision threshold of the field: predicted fake iff `score > 0.5`.
DEFAULT_THRESHOLD = 0.5

#: The metric columns of a `MetricsTable` (Markdown table and mean row), in order.
TABLE_COLUMNS = ("acc", "r_acc", "f_acc", "ap", "best_acc")

_MAX_SHOWN = 8  # offending values listed in an error message

PathLike = Union[str, "os.PathLike[str]"]


# --------------------------------------------------------------------------------------------
# input validation
# --------------------------------------------------------------------------------------------


def _as_array(x: Any, name: str) -> np.ndarray:
    """`np.asarray` that also takes torch tensors (CUDA, requiring grad, bfloat16)."""
    if hasattr(x, "detach") and hasattr(x, "cpu") and hasattr(x, "numpy"):
        t = x.detach().cpu()
        try:
            return np.asarray(t.numpy())
        except (TypeError, RuntimeError):  # dtypes numpy lacks, e.g. torch.bfloat16
            return np.asarray(t.double().numpy())
    try:
        return np.asarray(x)
    except ValueError as exc:  # ragged nested sequences
        raise ValueError(f"{name} could not be converted to a 1-D array: {exc}") from None


def _check_1d(arr: np.ndarray, name: str) -> None:
    if arr.ndim == 1:
        return
    if arr.ndim == 0:
        raise ValueError(f"{name} must be a 1-D array (one value per image); got a scalar")
    hint = ""
    if arr.ndim == 2 and 1 in arr.shape:
        hint = " (flatten it first, e.g. with .ravel() or .flatten())"
    raise ValueError(
        f"{name} must be a 1-D array (one value per image); got an array of shape "
        f"{tuple(arr.shape)}{hint}"
    )


def _shown(values: np.ndarray) -> str:
    vals = values.tolist()
    text = ", ".join(repr(v) for v in vals[:_MAX_SHOWN])
    if len(vals) > _MAX_SHOWN:
        text += f", ... ({len(vals)} distinct values)"
    return "[" + text + "]"


def _numeric(arr: np.ndarray, name: str) -> np.ndarray:
    """Return a numeric (bool/int/float) view of `arr` or raise TypeError."""
    if arr.dtype.kind in "biuf":
        return arr
    if arr.dtype.kind == "O":
        try:
            return arr.astype(np.float64)
        except (TypeError, ValueError):
            pass
    raise TypeError(f"{name} must be numeric; got an array of dtype {arr.dtype}")


def _labels(arr: np.ndarray) -> np.ndarray:
    """Validate labels, return the boolean mask `is_fake`."""
    arr = _numeric(arr, "y_true")
    if arr.dtype.kind == "b":
        return arr.astype(bool, copy=False)
    bad = ~((arr == 0) | (arr == 1))  # NaN compares unequal to both, so it is caught here
    if bad.any():
        raise ValueError(
            "y_true must contain only the labels 0 (real) and 1 (fake); got "
            f"{int(np.count_nonzero(bad))} value(s) outside {{0, 1}}: "
            f"{_shown(np.unique(arr[bad]))}"
        )
    return arr == 1


def _scores(arr: np.ndarray, *, probabilities: bool) -> np.ndarray:
    """Validate scores, return them as float64 (an exact conversion for float16/32)."""
    arr = _numeric(arr, "scores")
    finite = np.isfinite(arr) if arr.dtype.kind == "f" else np.ones(arr.shape, dtype=bool)
    if not finite.all():
        idx = np.flatnonzero(~finite)
        raise ValueError(
            f"scores must be finite; got {idx.size} non-finite value(s), the first "
            f"{arr[idx[0]].item()!r} at index {int(idx[0])}"
        )
    s = arr.astype(np.float64)
    if probabilities:
        lo, hi = float(s.min()), float(s.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(
                "scores must be probabilities in [0, 1] (the sigmoid of the detector's "
                f"logit); got values in [{lo!r}, {hi!r}]. If these are logits, apply a "
                "sigmoid first (torch.sigmoid, scipy.special.expit)"
            )
    return s


def _validate(y_true: Any, scores: Any, *, probabilities: bool) -> tuple[np.ndarray, np.ndarray]:
    y = _as_array(y_true, "y_true")
    s = _as_array(scores, "scores")
    _check_1d(y, "y_true")
    _check_1d(s, "scores")
    if y.shape[0] != s.shape[0]:
        raise ValueError(
            f"y_true and scores must have the same length; got {y.shape[0]} labels and "
            f"{s.shape[0]} scores"
        )
    if y.shape[0] == 0:
        raise ValueError("empty input: y_true and scores contain no samples")
    return _labels(y), _scores(s, probabilities=probabilities)


def check_threshold(threshold: Any) -> float:
    """`threshold` as a finite float, or a `TypeError` / `ValueError` naming what arrived."""
    try:
        t = float(threshold)
    except (TypeError, ValueError):
        raise TypeError(f"threshold must be a real number; got {threshold!r}") from None
    if not math.isfinite(t):
        raise ValueError(f"threshold must be finite; got {t!r}")
    return t


# --------------------------------------------------------------------------------------------
# metric kernels on validated arrays (fake: bool mask, s: float64 scores)
# --------------------------------------------------------------------------------------------


def _ap(fake: np.ndarray, s: np.ndarray) -> float:
    # The same arithmetic, in the same order, as scikit-learn's precision_recall_curve and
    # average_precision_score (descending scores, one point per distinct score value).
    order = np.argsort(s, kind="stable")[::-1]
    s_desc = s[order]
    y_desc = fake[order]
    ends = np.concatenate([np.flatnonzero(np.diff(s_desc)), [s_desc.size - 1]])
    tps = np.cumsum(y_desc, dtype=np.float64)[ends]
    if tps[-1] == 0:
        raise ValueError(
            f"average precision is undefined without fake images (label 1): y_true holds "
            f"{s.size} real image(s) and no fakes (scikit-learn would warn and return 0.0)"
        )
    fps = 1.0 + ends.astype(np.float64) - tps
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    precision = np.concatenate([precision[::-1], [1.0]])
    recall = np.concatenate([recall[::-1], [0.0]])
    return float(max(0.0, -np.sum(np.diff(recall) * precision[:-1])))


def _correct(fake: np.ndarray, s: np.ndarray, t: float) -> np.ndarray:
    return (s > t) == fake


def _rate(correct: np.ndarray) -> float:
    return int(np.count_nonzero(correct)) / correct.size


def _class_rate(correct: np.ndarray, mask: np.ndarray, metric: str, label: str) -> float:
    n = int(np.count_nonzero(mask))
    if n == 0:
        raise ValueError(f"{metric} is undefined: y_true contains no {label}")
    return int(np.count_nonzero(correct[mask])) / n


class BestThreshold(NamedTuple):
    """Oracle accuracy and a threshold achieving it (`score > threshold` means fake)."""

    accuracy: float
    threshold: float


def _best(fake: np.ndarray, s: np.ndarray) -> BestThreshold:
    order = np.argsort(s, kind="stable")
    s_asc = s[order]
    y_asc = fake[order]
    ends = np.concatenate([np.flatnonzero(np.diff(s_asc)), [s_asc.size - 1]])
    values = s_asc[ends]  # the distinct scores, ascending
    n_fake = int(np.count_nonzero(fake))
    # Cut j (0 <= j <= m): the images with score <= values[j-1] are predicted real, the rest
    # fake. correct[j] = reals at or below the cut + fakes above it; j = 0 predicts all fake.
    reals_below = np.cumsum(~y_asc)[ends]
    fakes_below = np.cumsum(y_asc)[ends]
    correct = np.concatenate([[n_fake], reals_below + (n_fake - fakes_below)])
    j = int(np.argmax(correct))  # the first maximum: the lowest optimal threshold
    acc = int(correct[j]) / s.size
    if j == 0:
        t = float(np.nextafter(values[0], -np.inf))
    elif j == values.size:
        t = float(values[-1])
    else:
        lo, hi = float(values[j - 1]), float(values[j])
        t = (lo + hi) / 2.0
        if not math.isfinite(t):  # lo + hi overflowed
            t = lo + (hi - lo) / 2.0
        if not (math.isfinite(t) and lo <= t < hi):  # rounding or overflow: fall back exactly
            t = lo
    return BestThreshold(acc, t)


# --------------------------------------------------------------------------------------------
# public metric functions
# --------------------------------------------------------------------------------------------


def average_precision(y_true: Any, scores: Any) -> float:
    """Average precision with fake (label 1) as the positive class.

    Equal to scikit-learn's `average_precision_score(y_true, scores)`: the precision-recall
    curve has one point per distinct score value (tied scores enter together) and
    `AP = sum_n (R_n - R_{n-1}) P_n` over thresholds in decreasing order (no interpolation).

    Scores may be probabilities or any other finite real scores (AP only uses their order).

    Raises `ValueError` when `y_true` has no fake image: AP is then undefined (recall is
    0/0). scikit-learn instead warns and returns 0.0; raising keeps a meaningless 0.0 out of
    tables and means. With no real image AP is 1.0, as in scikit-learn.

    Args:
        y_true: labels, one per image: 0 = real, 1 = fake.
        scores: real scores, one per image (only their order matters).

    Returns:
        AP in [0, 1].

    Raises:
        ValueError: no fake image, or the inputs are invalid (different lengths, empty,
            non-finite, labels other than 0/1).
        TypeError: non-numeric input.
    """
    fake, s = _validate(y_true, scores, probabilities=False)
    return _ap(fake, s)


def accuracy(y_true: Any, scores: Any, threshold: float = DEFAULT_THRESHOLD) -> float:
    """Fraction of images classified correctly, an image being predicted fake iff
    `score > threshold` (strict), as in `accuracy_score(y_true, scores > 0.5)` of the
    reference evaluation code. A score equal to the threshold counts as real.

    `scores` must be probabilities in [0, 1] (the sigmoid of the logit).

    Args:
        y_true: labels, one per image: 0 = real, 1 = fake.
        scores: probabilities in [0, 1], one per image.
        threshold: an image is predicted fake iff `score > threshold`.

    Returns:
        The accuracy in [0, 1].

    Raises:
        ValueError: inputs of different lengths, empty, non-finite, or not 0/1 labels.
        TypeError: non-numeric input.
    """
    fake, s = _validate(y_true, scores, probabilities=True)
    return _rate(_correct(fake, s, check_threshold(threshold)))


def real_accuracy(y_true: Any, scores: Any, threshold: float = DEFAULT_THRESHOLD) -> float:
    """`accuracy` restricted to the real images (label 0): the fraction with
    `score <= threshold`. Raises `ValueError` when there is no real image.

    Args:
        y_true: labels, one per image: 0 = real, 1 = fake.
        scores: probabilities in [0, 1], one per image.
        threshold: an image is predicted fake iff `score > threshold`.

    Returns:
        r_acc in [0, 1].

    Raises:
        ValueError: no real image, or the inputs are invalid.
        TypeError: non-numeric input.
    """
    fake, s = _validate(y_true, scores, probabilities=True)
    return _class_rate(
        _correct(fake, s, check_threshold(threshold)), ~fake, "r_acc", "real images (label 0)"
    )


def fake_accuracy(y_true: Any, scores: Any, threshold: float = DEFAULT_THRESHOLD) -> float:
    """`accuracy` restricted to the fake images (label 1): the fraction with
    `score > threshold`. Raises `ValueError` when there is no fake image.

    Args:
        y_true: labels, one per image: 0 = real, 1 = fake.
        scores: probabilities in [0, 1], one per image.
        threshold: an image is predicted fake iff `score > threshold`.

    Returns:
        f_acc in [0, 1].

    Raises:
        ValueError: no fake image, or the inputs are invalid.
        TypeError: non-numeric input.
    """
    fake, s = _validate(y_true, scores, probabilities=True)
    return _class_rate(
        _correct(fake, s, check_threshold(threshold)), fake, "f_acc", "fake images (label 1)"
    )


def best_threshold_accuracy(y_true: Any, scores: Any) -> BestThreshold:
    """The oracle accuracy: the maximum of `accuracy` over all thresholds, the two
    extremes (every image fake, every image real) included, and a threshold achieving it.

    Returns `BestThreshold(accuracy, threshold)` (a named tuple). Predicting fake iff
    `score > threshold` reproduces `accuracy` exactly. Among equally good cuts the lowest
    is returned; the threshold is the midpoint between the two neighbouring distinct scores
    of that cut (the lower score itself when the midpoint would round onto the upper one),
    the largest score when every image is best called real, and the float just below the
    smallest score when every image is best called fake.

    Scores may be any finite reals (only their order matters); the threshold is in the same
    units. Works with one class only (the oracle then reaches 1.0).

    Args:
        y_true: labels, one per image: 0 = real, 1 = fake.
        scores: real scores, one per image.

    Returns:
        `BestThreshold(accuracy, threshold)`.

    Raises:
        ValueError: inputs of different lengths, empty, non-finite, or not 0/1 labels.
        TypeError: non-numeric input.
    """
    fake, s = _validate(y_true, scores, probabilities=False)
    return _best(fake, s)


# --------------------------------------------------------------------------------------------
# per-subset result and tables
# --------------------------------------------------------------------------------------------


def _rate_field(d: Mapping[str, Any], key: str) -> float:
    v = d[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"{key} must be a number; got {v!r}")
    v = float(v)
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"{key} must lie in [0, 1]; got {v!r}")
    return v


def _count_field(d: Mapping[str, Any], key: str) -> int:
    v = d[key]
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValueError(f"{key} must be a non-negative integer; got {v!r}")
    return v


@dataclass(frozen=True)
class DetectionMetrics:
    """The metrics of one subset. Rates are fractions in [0, 1] (tables show them x100)."""

    acc: float
    r_acc: float
    f_acc: float
    ap: float
    best_acc: float
    best_threshold: float
    n_real: int
    n_fake: int

    @property
    def n(self) -> int:
        """Number of images."""
        return self.n_real + self.n_fake

    def to_dict(self) -> dict[str, float | int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DetectionMetrics:
        """Read back a record written by `to_dict`.

        Args:
            d: the record: every field, nothing else.

        Returns:
            The metrics.

        Raises:
            ValueError: keys missing or unknown, or a value out of range.
        """
        names = [f.name for f in fields(cls)]
        missing = [k for k in names if k not in d]
        unknown = [k for k in d if k not in names]
        if missing or unknown:
            raise ValueError(
                f"not a DetectionMetrics record: missing keys {missing}, unknown keys {unknown}"
            )
        t = d["best_threshold"]
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
            raise ValueError(f"best_threshold must be a finite number; got {t!r}")
        return cls(
            **{k: _rate_field(d, k) for k in TABLE_COLUMNS},
            best_threshold=float(t),
            n_real=_count_field(d, "n_real"),
            n_fake=_count_field(d, "n_fake"),
        )


def compute_metrics(
    y_true: Any, scores: Any, *, threshold: float = DEFAULT_THRESHOLD
) -> DetectionMetrics:
    """All metrics of one subset: acc, r_acc, f_acc (at `score > threshold`), AP, and the
    oracle accuracy with its threshold.

    `scores` must be probabilities in [0, 1] (sigmoid of the logit), `y_true` 0 = real and
    1 = fake. Both classes must be present (r_acc, f_acc and AP are otherwise undefined);
    a `ValueError` says which class is missing.

    Args:
        y_true: labels, one per image: 0 = real, 1 = fake.
        scores: probabilities in [0, 1], one per image.
        threshold: an image is predicted fake iff `score > threshold`.

    Returns:
        The `DetectionMetrics` of the subset.

    Raises:
        ValueError: a class is missing, or the inputs are invalid.
        TypeError: non-numeric input.
    """
    fake, s = _validate(y_true, scores, probabilities=True)
    t = check_threshold(threshold)
    n_fake = int(np.count_nonzero(fake))
    n_real = int(fake.size - n_fake)
    if n_real == 0 or n_fake == 0:
        missing = "real images (label 0)" if n_real == 0 else "fake images (label 1)"
        raise ValueError(
            f"compute_metrics needs both classes; got {n_real} real and {n_fake} fake "
            f"image(s), so r_acc/f_acc/AP are undefined (no {missing})"
        )
    correct = _correct(fake, s, t)
    best = _best(fake, s)
    return DetectionMetrics(
        acc=_rate(correct),
        r_acc=int(np.count_nonzero(correct[~fake])) / n_real,
        f_acc=int(np.count_nonzero(correct[fake])) / n_fake,
        ap=_ap(fake, s),
        best_acc=best.accuracy,
        best_threshold=best.threshold,
        n_real=n_real,
        n_fake=n_fake,
    )
