"""Tests of dgsnet.metrics against scikit-learn and brute-force reference implementations."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dgsnet import metrics as M
from dgsnet.metrics import (
    BestThreshold,
    DetectionMetrics,
    MetricsTable,
    accuracy,
    average_precision,
    best_threshold_accuracy,
    compute_metrics,
    fake_accuracy,
    real_accuracy,
)


class _SklearnMetrics:
    """``sklearn.metrics``, imported when a test first uses it: a test that compares with
    scikit-learn skips without it, the others run."""

    def __getattr__(self, name: str):
        if not name.endswith("_score"):  # pytest inspects module attributes when collecting
            raise AttributeError(name)
        return getattr(pytest.importorskip("sklearn.metrics"), name)


sk = _SklearnMetrics()

HYP = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


# --------------------------------------------------------------------------------------------
# brute-force references, written from the definitions
# --------------------------------------------------------------------------------------------


def brute_acc(y, s, t=0.5, label=None):
    pairs = [
        (int(yi), float(si))
        for yi, si in zip(y, s, strict=True)
        if label is None or int(yi) == label
    ]
    return sum(int(si > t) == yi for yi, si in pairs) / len(pairs)


def brute_ap(y, s):
    y = [int(v) for v in y]
    s = [float(v) for v in s]
    n_fake = sum(y)
    ap, prev_recall = 0.0, 0.0
    for v in sorted(set(s), reverse=True):
        sel = [yi for yi, si in zip(y, s, strict=True) if si >= v]
        tp = sum(sel)
        recall = tp / n_fake
        ap += (recall - prev_recall) * (tp / len(sel))
        prev_recall = recall
    return ap


def brute_best(y, s):
    """(best accuracy, [lo, hi) interval of the lowest optimal threshold)."""
    values = sorted(set(float(v) for v in s))
    cuts = [(-math.inf, values[0])] + [
        (v, values[i + 1] if i + 1 < len(values) else math.inf) for i, v in enumerate(values)
    ]
    accs = [brute_acc(y, s, lo) for lo, _ in cuts]
    best = max(accs)
    return best, cuts[accs.index(best)]


def random_case(rng, n, ties=False):
    y = rng.integers(0, 2, n)
    y[0], y[-1] = 0, 1  # both classes
    s = rng.random(n)
    if ties:
        s = np.round(s, 1)
    return y, s


# --------------------------------------------------------------------------------------------
# average precision
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("ties", [False, True])
def test_ap_matches_sklearn_random(seed, ties):
    rng = np.random.default_rng(seed)
    y, s = random_case(rng, int(rng.integers(2, 2000)), ties=ties)
    assert average_precision(y, s) == pytest.approx(
        sk.average_precision_score(y, s), rel=1e-12, abs=1e-15
    )


def test_ap_heavy_ties_and_float32():
    rng = np.random.default_rng(1)
    y, s = random_case(rng, 5000)
    for scores in (np.round(s, 1), np.round(s, 2), np.floor(s * 3) / 3, s.astype(np.float32)):
        assert average_precision(y, scores) == pytest.approx(
            sk.average_precision_score(y, scores), rel=1e-12
        )


def test_ap_all_equal_scores_is_fake_fraction():
    y = np.array([0, 1, 1, 0, 1])
    s = np.full(5, 0.3)
    assert average_precision(y, s) == pytest.approx(0.6)
    assert average_precision(y, s) == pytest.approx(sk.average_precision_score(y, s))


def test_ap_against_formula_and_known_values():
    assert average_precision([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(
        0.8333333333333333
    )  # scikit-learn's documented example
    assert average_precision([0, 1], [0.9, 0.1]) == pytest.approx(0.5)
    rng = np.random.default_rng(3)
    y, s = random_case(rng, 60, ties=True)
    assert average_precision(y, s) == pytest.approx(brute_ap(y, s), rel=1e-12)


def test_ap_accepts_logits_and_is_rank_based():
    rng = np.random.default_rng(4)
    y, s = random_case(rng, 300)
    logits = np.log(s) - np.log1p(-s)
    assert average_precision(y, logits) == pytest.approx(average_precision(y, s), rel=1e-12)


def test_ap_no_reals_is_one_like_sklearn():
    y, s = [1, 1, 1], [0.2, 0.5, 0.5]
    assert average_precision(y, s) == pytest.approx(1.0)
    assert sk.average_precision_score(y, s) == pytest.approx(1.0)


def test_ap_no_fakes_raises():
    with pytest.raises(ValueError, match="no fakes"):
        average_precision([0, 0, 0], [0.1, 0.2, 0.3])


# --------------------------------------------------------------------------------------------
# accuracy, r_acc, f_acc
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_accuracies_match_sklearn_and_reference_code(seed):
    rng = np.random.default_rng(seed)
    y, s = random_case(rng, 500, ties=bool(seed % 2))
    s[:10] = 0.5  # exactly at the threshold: real
    assert accuracy(y, s) == sk.accuracy_score(y, s > 0.5)
    # the reference evaluation code (UnivFD / CNNDetection calculate_acc)
    assert real_accuracy(y, s) == sk.accuracy_score(y[y == 0], s[y == 0] > 0.5)
    assert fake_accuracy(y, s) == sk.accuracy_score(y[y == 1], s[y == 1] > 0.5)
    assert real_accuracy(y, s) == brute_acc(y, s, label=0)
    assert fake_accuracy(y, s) == brute_acc(y, s, label=1)


def test_threshold_is_strict():
    y = [0, 1]
    assert accuracy(y, [0.5, 0.5]) == 0.5  # both predicted real
    assert real_accuracy(y, [0.5, 0.5]) == 1.0
    assert fake_accuracy(y, [0.5, 0.5]) == 0.0
    assert accuracy(y, [0.5, 0.50000001]) == 1.0


def test_custom_threshold():
    y = np.array([0, 0, 1, 1])
    s = np.array([0.1, 0.3, 0.2, 0.9])
    assert accuracy(y, s, threshold=0.15) == brute_acc(y, s, 0.15) == 0.75
    assert real_accuracy(y, s, 0.25) == 0.5
    assert fake_accuracy(y, s, 0.0) == 1.0


def test_accuracies_one_class():
    assert accuracy([1, 1], [0.9, 0.1]) == 0.5
    assert fake_accuracy([1, 1], [0.9, 0.1]) == 0.5
    with pytest.raises(ValueError, match="r_acc is undefined.*no real"):
        real_accuracy([1, 1], [0.9, 0.1])
    with pytest.raises(ValueError, match="f_acc is undefined.*no fake"):
        fake_accuracy([0, 0], [0.9, 0.1])


def test_return_types_are_python_floats():
    y, s = [0, 1, 1], [0.2, 0.7, 0.4]
    for v in (accuracy(y, s), real_accuracy(y, s), fake_accuracy(y, s), average_precision(y, s)):
        assert type(v) is float
    best = best_threshold_accuracy(y, s)
    assert type(best.accuracy) is float and type(best.threshold) is float
    assert all(type(getattr(compute_metrics(y, s), c)) is float for c in M.TABLE_COLUMNS)


def test_label_and_score_dtypes():
    y = [0, 1, 1, 0]
    s = [0.2, 0.7, 0.4, 0.9]
    ref = accuracy(y, s)
    assert accuracy(np.array(y, dtype=bool), s) == ref
    assert accuracy(np.array(y, dtype=np.float32), np.array(s, dtype=np.float32)) == ref
    assert accuracy(np.array(y, dtype=np.uint8), np.array(s, dtype=np.float16)) == ref
    assert accuracy(np.array(y, dtype=object), s) == ref
    assert average_precision(y, [0, 1, 1, 0]) == pytest.approx(
        sk.average_precision_score(y, [0, 1, 1, 0])
    )


def test_torch_tensors():
    torch = pytest.importorskip("torch")
    y = torch.tensor([0, 1, 1, 0])
    logits = torch.tensor([-1.0, 2.0, -0.5, 0.3], requires_grad=True)
    s = torch.sigmoid(logits)
    ref = compute_metrics(y.numpy(), s.detach().numpy())
    assert compute_metrics(y, s) == ref
    assert accuracy(y.float(), s.to(torch.bfloat16)) == accuracy(y, s.detach().float())


# --------------------------------------------------------------------------------------------
# oracle (best-threshold) accuracy
# --------------------------------------------------------------------------------------------


def check_best(y, s):
    best = best_threshold_accuracy(y, s)
    assert isinstance(best, BestThreshold)
    ref, (lo, hi) = brute_best(y, s)
    assert best.accuracy == ref
    assert lo <= best.threshold < hi  # the lowest optimal cut
    assert brute_acc(y, s, best.threshold) == ref  # the threshold reproduces the accuracy
    assert best.accuracy >= brute_acc(y, s, 0.5)


@pytest.mark.parametrize("seed", range(6))
def test_best_threshold_brute_force(seed):
    rng = np.random.default_rng(seed)
    y, s = random_case(rng, int(rng.integers(2, 120)), ties=bool(seed % 2))
    check_best(y, s)


def test_best_threshold_separable_midpoint():
    best = best_threshold_accuracy([0, 0, 1, 1], [0.1, 0.25, 0.75, 0.9])
    assert best == (1.0, 0.5)


def test_best_threshold_extremes():
    # all scores equal: the only cuts are "all fake" and "all real"
    all_fake = best_threshold_accuracy([1, 1, 0], [0.4, 0.4, 0.4])
    assert all_fake.accuracy == pytest.approx(2 / 3)
    assert all_fake.threshold < 0.4 and all_fake.threshold == np.nextafter(0.4, -1)
    assert accuracy([1, 1, 0], [0.4] * 3, threshold=all_fake.threshold) == all_fake.accuracy
    all_real = best_threshold_accuracy([0, 0, 1], [0.4, 0.4, 0.4])
    assert all_real == (pytest.approx(2 / 3), 0.4)
    # inverted detector: calling everything one class beats every interior cut
    assert best_threshold_accuracy([0, 0, 0, 1], [0.9, 0.8, 0.7, 0.1]) == (0.75, 0.9)
    # one class only: the oracle reaches 1
    assert best_threshold_accuracy([1, 1], [0.3, 0.6]).accuracy == 1.0
    assert best_threshold_accuracy([0, 0], [0.3, 0.6]) == (1.0, 0.6)
    # zero scores: the threshold goes below 0
    assert best_threshold_accuracy([1, 1, 0], [0.0, 0.0, 0.0]).threshold < 0.0


def test_best_threshold_adjacent_floats_and_logits():
    a = 0.3
    b = float(np.nextafter(a, 1))
    best = best_threshold_accuracy([0, 1], [a, b])
    assert best.accuracy == 1.0 and a <= best.threshold < b
    check_best([0, 1, 0, 1], [-1e308, 1e308, -5.0, 3.0])
    check_best([0, 1, 1], [-3.0, 2.0, -0.5])


# --------------------------------------------------------------------------------------------
# Hypothesis properties
# --------------------------------------------------------------------------------------------

_grid = st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.5, 0.75, 0.9, 1.0])
_unit = st.floats(0.0, 1.0, allow_nan=False)


@st.composite
def cases(draw, min_size=1):
    n = draw(st.integers(min_size, 150))
    y = draw(st.lists(st.integers(0, 1), min_size=n, max_size=n))
    element = draw(st.sampled_from([_grid, _unit, st.one_of(_grid, _unit)]))
    s = draw(st.lists(element, min_size=n, max_size=n))
    return np.array(y), np.array(s)


@HYP
@given(cases())
def test_property_ap(case):
    y, s = case
    if y.sum() == 0:
        with pytest.raises(ValueError, match="no fakes"):
            average_precision(y, s)
    else:
        assert average_precision(y, s) == pytest.approx(
            sk.average_precision_score(y, s), rel=1e-12, abs=1e-15
        )


@HYP
@given(cases(), st.sampled_from([0.5, 0.5, 0.0, 0.25, 0.9]))
def test_property_accuracies(case, t):
    y, s = case
    assert accuracy(y, s, t) == sk.accuracy_score(y, s > t)
    if (y == 0).any():
        assert real_accuracy(y, s, t) == sk.accuracy_score(y[y == 0], s[y == 0] > t)
    if (y == 1).any():
        assert fake_accuracy(y, s, t) == sk.accuracy_score(y[y == 1], s[y == 1] > t)


@HYP
@given(cases())
def test_property_best_threshold(case):
    check_best(*case)


@HYP
@given(cases(min_size=2))
def test_property_compute_metrics(case):
    y, s = case
    if y.min() == y.max():
        with pytest.raises(ValueError, match="both classes"):
            compute_metrics(y, s)
        return
    m = compute_metrics(y, s)
    assert (m.n_real, m.n_fake) == (int((y == 0).sum()), int((y == 1).sum()))
    assert m.acc == accuracy(y, s) and m.r_acc == real_accuracy(y, s)
    assert m.f_acc == fake_accuracy(y, s) and m.ap == average_precision(y, s)
    assert (m.best_acc, m.best_threshold) == best_threshold_accuracy(y, s)
    assert m.acc == pytest.approx((m.r_acc * m.n_real + m.f_acc * m.n_fake) / m.n)


# --------------------------------------------------------------------------------------------
# bad inputs
# --------------------------------------------------------------------------------------------

ALL = [
    accuracy,
    real_accuracy,
    fake_accuracy,
    average_precision,
    best_threshold_accuracy,
    compute_metrics,
]


@pytest.mark.parametrize("fn", ALL)
def test_length_mismatch(fn):
    with pytest.raises(ValueError, match=r"same length.*5 labels and 4 scores"):
        fn([0, 1, 0, 1, 0], [0.1, 0.2, 0.3, 0.4])


@pytest.mark.parametrize("fn", ALL)
def test_empty(fn):
    with pytest.raises(ValueError, match="empty input"):
        fn([], [])
    with pytest.raises(ValueError, match="empty input"):
        fn(np.array([], dtype=int), np.array([], dtype=float))


@pytest.mark.parametrize("fn", ALL)
def test_labels_outside_01(fn):
    with pytest.raises(ValueError, match=r"2 value\(s\) outside \{0, 1\}: \[-1, 2\]"):
        fn([0, 2, 1, -1], [0.1, 0.2, 0.3, 0.4])
    with pytest.raises(ValueError, match=r"outside \{0, 1\}: \[0\.5\]"):
        fn([0.0, 0.5, 1.0], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match=r"outside \{0, 1\}: \[nan\]"):
        fn([0, float("nan"), 1], [0.1, 0.2, 0.3])
    with pytest.raises(TypeError, match="y_true must be numeric"):
        fn(["real", "fake"], [0.1, 0.2])


def test_many_bad_labels_are_summarised():
    with pytest.raises(ValueError, match=r"20 distinct values"):
        accuracy(np.arange(2, 22), np.full(20, 0.5))


@pytest.mark.parametrize("fn", ALL)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nonfinite_scores(fn, bad):
    with pytest.raises(ValueError, match=rf"1 non-finite value\(s\), the first {bad!r} at index 2"):
        fn([0, 1, 0, 1], [0.1, 0.2, bad, 0.4])


@pytest.mark.parametrize("fn", ALL)
def test_two_dimensional(fn):
    with pytest.raises(ValueError, match=r"y_true must be a 1-D.*shape \(2, 2\)"):
        fn([[0, 1], [1, 0]], [0.1, 0.2, 0.3, 0.4])
    with pytest.raises(ValueError, match=r"scores must be a 1-D.*shape \(4, 1\).*ravel"):
        fn([0, 1, 0, 1], np.array([[0.1], [0.2], [0.3], [0.4]]))
    with pytest.raises(ValueError, match="scalar"):
        fn(1, 0.5)


@pytest.mark.parametrize("fn", [accuracy, real_accuracy, fake_accuracy, compute_metrics])
def test_probability_range(fn):
    with pytest.raises(ValueError, match=r"probabilities in \[0, 1\].*\[-2\.0, 3\.0\].*sigmoid"):
        fn([0, 1, 0, 1], [-2.0, 3.0, 0.5, 0.5])


def test_non_numeric_scores_and_threshold():
    with pytest.raises(TypeError, match="scores must be numeric"):
        accuracy([0, 1], ["a", "b"])
    with pytest.raises(TypeError, match="scores must be numeric"):
        average_precision([0, 1], np.array([1 + 1j, 2j]))
    with pytest.raises(TypeError, match="threshold must be a real number"):
        accuracy([0, 1], [0.1, 0.9], threshold="half")
    with pytest.raises(ValueError, match="threshold must be finite"):
        accuracy([0, 1], [0.1, 0.9], threshold=float("nan"))
    with pytest.raises(ValueError, match="could not be converted"):
        accuracy([[0], [1, 0]], [0.1, 0.9])


def test_compute_metrics_needs_both_classes():
    with pytest.raises(ValueError, match=r"0 real and 3 fake.*no real images"):
        compute_metrics([1, 1, 1], [0.1, 0.5, 0.9])
    with pytest.raises(ValueError, match=r"2 real and 0 fake.*no fake images"):
        compute_metrics([0, 0], [0.1, 0.5])


# --------------------------------------------------------------------------------------------
# DetectionMetrics and MetricsTable
# --------------------------------------------------------------------------------------------


def make_predictions():
    rng = np.random.default_rng(7)
    preds = {}
    for name in ["progan", "stylegan", "biggan", "dalle", "glide|100_27"]:  # not alphabetical
        y, s = random_case(rng, int(rng.integers(20, 200)), ties=True)
        preds[name] = (y, s)
    return preds


@pytest.fixture
def table():
    return MetricsTable.from_predictions(make_predictions())


def test_compute_metrics_known():
    m = compute_metrics([0, 0, 1, 1], [0.2, 0.625, 0.875, 0.9])
    assert m == DetectionMetrics(0.75, 0.5, 1.0, 1.0, 1.0, 0.75, 2, 2)
    assert m.n == 4
    assert DetectionMetrics.from_dict(m.to_dict()) == m


def test_detection_metrics_from_dict_errors():
    d = compute_metrics([0, 1], [0.2, 0.9]).to_dict()
    with pytest.raises(ValueError, match=r"missing keys \['ap'\]"):
        DetectionMetrics.from_dict({k: v for k, v in d.items() if k != "ap"})
    with pytest.raises(ValueError, match=r"unknown keys \['auc'\]"):
        DetectionMetrics.from_dict({**d, "auc": 1.0})
    with pytest.raises(ValueError, match=r"acc must lie in \[0, 1\]"):
        DetectionMetrics.from_dict({**d, "acc": 99.0})
    with pytest.raises(ValueError, match="n_real must be a non-negative integer"):
        DetectionMetrics.from_dict({**d, "n_real": 1.5})
    with pytest.raises(ValueError, match="best_threshold must be a finite number"):
        DetectionMetrics.from_dict({**d, "best_threshold": None})


def test_table_rows_order_and_mean(table):
    preds = make_predictions()
    assert table.subsets == tuple(preds)
    assert len(table) == 5 and list(table) == list(preds) and "dalle" in table
    for name, (y, s) in preds.items():
        assert table[name] == compute_metrics(y, s)
    mean = table.mean()
    assert list(mean) == list(M.TABLE_COLUMNS)
    for c in M.TABLE_COLUMNS:
        assert mean[c] == pytest.approx(np.mean([getattr(table[n], c) for n in preds]), rel=1e-15)
    # pairs keep their order too
    pairs = list(reversed(list(preds.items())))
    assert MetricsTable.from_predictions(pairs).subsets == tuple(reversed(list(preds)))


def split_md(row):
    cells = re.split(r"(?<!\\)\|", row.strip())[1:-1]
    return [c.strip().replace("\\|", "|") for c in cells]


def test_markdown(table):
    md = table.to_markdown()
    lines = md.splitlines()
    assert split_md(lines[0]) == ["subset", "acc", "r_acc", "f_acc", "ap", "best_acc"]
    assert re.fullmatch(r"\|:-+\|(-+:\|){5}", lines[1])
    assert len({len(line) for line in lines}) == 1  # padded to a grid
    rows = [split_md(line) for line in lines[2:]]
    assert [r[0] for r in rows] == [*table.subsets, "mean"]
    expected = [table[n] for n in table.subsets]
    for r, m in zip(rows, expected, strict=False):
        assert r[1:] == [f"{100 * getattr(m, c):.1f}" for c in M.TABLE_COLUMNS]
        for cell, c in zip(r[1:], M.TABLE_COLUMNS, strict=True):
            assert re.fullmatch(r"\d+\.\d", cell)
            assert float(cell) == pytest.approx(100 * getattr(m, c), abs=0.05 + 1e-9)
    mean = table.mean()
    assert rows[-1][1:] == [f"{100 * mean[c]:.1f}" for c in M.TABLE_COLUMNS]
    assert str(table) == md


def test_markdown_doc_example_and_file(tmp_path):
    t = MetricsTable.from_predictions({"a": ([0, 1], [0.2, 0.9]), "b": ([0, 1], [0.6, 0.7])})
    assert split_md(t.to_markdown().splitlines()[-1]) == [
        "mean",
        "75.0",
        "50.0",
        "100.0",
        "100.0",
        "100.0",
    ]
    p = tmp_path / "table.md"
    text = t.to_markdown(p)
    assert p.read_text() == text + "\n"


def test_csv_path_and_file(table, tmp_path):
    p = tmp_path / "m.csv"
    table.to_csv(p)
    buf = io.StringIO()
    table.to_csv(buf)
    assert p.read_text() == buf.getvalue()
    rows = list(csv.DictReader(io.StringIO(buf.getvalue())))
    assert list(rows[0]) == [
        "subset",
        "acc",
        "r_acc",
        "f_acc",
        "ap",
        "best_acc",
        "best_threshold",
        "n_real",
        "n_fake",
    ]
    assert [r["subset"] for r in rows] == [*table.subsets, "mean"]
    for r in rows[:-1]:
        m = table[r["subset"]]
        back = DetectionMetrics(
            *(float(r[c]) for c in [*M.TABLE_COLUMNS, "best_threshold"]),
            int(r["n_real"]),
            int(r["n_fake"]),
        )
        assert back == m  # full precision, exact
    mean = table.mean()
    assert {c: float(rows[-1][c]) for c in M.TABLE_COLUMNS} == mean
    assert rows[-1]["best_threshold"] == rows[-1]["n_real"] == rows[-1]["n_fake"] == ""
    with pytest.raises(TypeError, match="path or an open text file"):
        table.to_csv(42)


def test_json_round_trip(table, tmp_path):
    p = tmp_path / "m.json"
    table.to_json(p)
    raw = json.loads(p.read_text())
    assert raw["format"] == "dgsnet.metrics_table" and raw["version"] == 1
    assert raw["threshold"] == 0.5
    assert [r["subset"] for r in raw["subsets"]] == list(table.subsets)
    assert raw["mean"] == table.mean()
    assert raw == table.to_dict()
    back = MetricsTable.from_json(p)
    assert back == table
    assert back.subsets == table.subsets
    assert back.to_markdown() == table.to_markdown()
    assert MetricsTable.from_dict(table.to_dict()) == table


def test_json_threshold_kept(tmp_path):
    t = MetricsTable.from_predictions({"x": ([0, 1, 1], [0.2, 0.3, 0.9])}, threshold=0.25)
    assert t["x"].acc == 1.0
    t.to_json(tmp_path / "t.json")
    back = MetricsTable.from_json(tmp_path / "t.json")
    assert back.threshold == 0.25 and back == t
    assert back != MetricsTable(t.rows)  # threshold differs


def test_from_dict_errors(table):
    d = table.to_dict()
    with pytest.raises(ValueError, match="not a dgsnet metrics table"):
        MetricsTable.from_dict({"subsets": []})
    with pytest.raises(ValueError, match="unsupported metrics table version 2"):
        MetricsTable.from_dict({**d, "version": 2})
    with pytest.raises(ValueError, match="'subsets' must be a list"):
        MetricsTable.from_dict({**d, "subsets": {}})
    bad = json.loads(json.dumps(d))
    bad["subsets"][1]["ap"] = 1.5
    with pytest.raises(ValueError, match=r"subset 'stylegan'.*ap must lie in \[0, 1\]"):
        MetricsTable.from_dict(bad)
    with pytest.raises(ValueError, match="at least one subset"):
        MetricsTable.from_dict({**d, "subsets": []})


def test_table_construction_errors():
    good = ([0, 1], [0.2, 0.8])
    with pytest.raises(ValueError, match="at least one subset"):
        MetricsTable.from_predictions({})
    with pytest.raises(ValueError, match="duplicate subset name 'a'"):
        MetricsTable.from_predictions([("a", good), ("a", good)])
    with pytest.raises(ValueError, match="reserved for the mean row"):
        MetricsTable.from_predictions({"mean": good})
    with pytest.raises(ValueError, match="non-empty"):
        MetricsTable.from_predictions({" ": good})
    with pytest.raises(ValueError, match="one line"):
        MetricsTable.from_predictions({"a\nb": good})
    with pytest.raises(TypeError, match="subset names must be strings"):
        MetricsTable.from_predictions({3: good})
    with pytest.raises(TypeError, match=r"subset 'a': expected a \(y_true, scores\) pair"):
        MetricsTable.from_predictions({"a": [0.2, 0.8, 0.1]})
    with pytest.raises(TypeError, match="must be a DetectionMetrics"):
        MetricsTable({"a": {"acc": 1.0}})
    with pytest.raises(ValueError, match=r"subset 'b': .*0 real and 2 fake"):
        MetricsTable.from_predictions({"a": good, "b": ([1, 1], [0.2, 0.8])})
    with pytest.raises(ValueError, match=r"subset 'a': .*2 labels and 3 scores"):
        MetricsTable.from_predictions({"a": ([0, 1], [0.2, 0.8, 0.5])})


# --------------------------------------------------------------------------------------------
# atomic writes
# --------------------------------------------------------------------------------------------


def test_atomic_write_leaves_no_temp_and_keeps_mode(table, tmp_path):
    p = tmp_path / "m.json"
    p.write_text("old")
    os.chmod(p, 0o640)
    table.to_json(p)
    assert stat.S_IMODE(p.stat().st_mode) == 0o640
    assert sorted(x.name for x in tmp_path.iterdir()) == ["m.json"]
    new = tmp_path / "new.csv"
    table.to_csv(new)
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(new.stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0o600


def test_atomic_write_failure_keeps_old_file(table, tmp_path, monkeypatch):
    p = tmp_path / "m.json"
    p.write_text("old")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        table.to_json(p)
    assert p.read_text() == "old"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["m.json"]


# --------------------------------------------------------------------------------------------
# import hygiene
# --------------------------------------------------------------------------------------------


def test_module_imports_numpy_only():
    from dgsnet.metrics import detection

    path = Path(detection.__file__)
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('m', {str(path)!r})\n"
        "mod = importlib.util.module_from_spec(spec); sys.modules['m'] = mod\n"
        "spec.loader.exec_module(mod)\n"
        "bad = sorted(k for k in ('sklearn', 'torch', 'scipy', 'pandas') if k in sys.modules)\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
