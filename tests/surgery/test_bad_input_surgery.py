"""Bad input to the method: `GradientSurgery.apply`, every rule (and `fuse`), `sign_split` and
`drop_nonfinite` refuse wrong tensors and arguments clearly, and non-finite references raise or
(with `nonfinite="ignore"`) skip exactly the affected samples. What "clearly" means, and the
corruptions: `tests/helpers/bad_input.py`."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from dgsnet.surgery import (
    Compose,
    ConflictProjection,
    GradientSurgery,
    OrthogonalSuppression,
    PriorAlignment,
    SurgeryStats,
    drop_nonfinite,
    fuse,
    sign_split,
)
from tests.helpers.bad_input import CORRUPTIONS, PROFILE, B, D, corrupt, raises_clearly

pytestmark = pytest.mark.usefixtures("one_thread")


def _tensors(seed: int, shape=(B, D), dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g, dtype=dtype) for _ in range(2)]


def _rules():
    return {
        "suppression": OrthogonalSuppression(),
        "alignment": PriorAlignment(),
        "conflict": ConflictProjection(),
        "compose": Compose([PriorAlignment(), OrthogonalSuppression()]),
        "fused": fuse(OrthogonalSuppression()),  # validation happens before any compilation
    }


@PROFILE
@given(
    target=st.sampled_from(["x", "ref"]),
    kind=st.sampled_from(CORRUPTIONS),
    seed=st.integers(0, 2**16),
)
def test_gradient_surgery_apply_refuses_bad_tensors(target, kind, seed):
    x, ref = _tensors(seed)
    if target == "x":
        x = corrupt(x, kind)
    else:
        ref = corrupt(ref, kind)
    # raised by apply itself (the forward), not later in backward
    raises_clearly(lambda: GradientSurgery.apply(x, OrthogonalSuppression(), {"harm": ref}))


@pytest.mark.parametrize(
    "args",
    [
        ("rule", "not a rule"),
        ("refs", [1]),
        ("refs", {}),
        ("refs", {"help": torch.zeros(B, D)}),
        ("stats", "stats"),
        ("nonfinite", "skip"),
        ("x", torch.tensor(1.0)),
    ],
    ids=lambda a: a[0] if isinstance(a, tuple) else str(a),
)
def test_gradient_surgery_apply_refuses_bad_arguments(args):
    kw = {
        "x": torch.zeros(B, D),
        "rule": OrthogonalSuppression(),
        "refs": {"harm": torch.zeros(B, D)},
        "stats": SurgeryStats(),
        "nonfinite": "raise",
    }
    kw[args[0]] = args[1]
    raises_clearly(
        lambda: GradientSurgery.apply(kw["x"], kw["rule"], kw["refs"], kw["stats"], kw["nonfinite"])
    )


@PROFILE
@given(
    rule=st.sampled_from(list(_rules())),
    target=st.sampled_from(["grad", "ref"]),
    kind=st.sampled_from(CORRUPTIONS),
    seed=st.integers(0, 2**16),
)
def test_every_rule_refuses_bad_tensors(rule, target, kind, seed):
    r = _rules()[rule]
    grad, ref = _tensors(seed)
    if target == "grad":
        grad = corrupt(grad, kind)
    else:
        ref = corrupt(ref, kind)
    if target == "ref" and kind == "none":
        refs = {k: None for k in r.refs}
    else:
        refs = {k: ref for k in r.refs}
    raises_clearly(lambda: r(grad, refs))


@pytest.mark.parametrize("rule", list(_rules()))
@pytest.mark.parametrize("refs", [None, {}, "harm", [torch.zeros(B, D)]], ids=str)
def test_every_rule_refuses_missing_references(rule, refs):
    r = _rules()[rule]
    raises_clearly(lambda: r(torch.zeros(B, D), refs))


@PROFILE
@given(
    rule=st.sampled_from(["suppression", "alignment", "conflict", "compose"]),
    b=st.integers(1, 6),
    d=st.integers(1, 12),
    value=st.sampled_from([math.nan, math.inf, -math.inf]),
    rows=st.sets(st.integers(0, 5), min_size=1),
    seed=st.integers(0, 2**16),
)
def test_nonfinite_references_raise_or_skip_exactly_those_samples(rule, b, d, value, rows, seed):
    rows = sorted(r for r in rows if r < b) or [0]
    r = _rules()[rule]
    g = torch.Generator().manual_seed(seed)
    grad = torch.randn(b, d, generator=g, dtype=torch.float64)
    refs = {k: torch.randn(b, d, generator=g, dtype=torch.float64) for k in r.refs}
    key = r.refs[0]
    refs[key][rows, 0] = value
    raises_clearly(lambda: r(grad, refs), match="NaN or Inf")
    # nonfinite="ignore": the broken samples get the surgery of the remaining references only
    x = torch.zeros(b, d, dtype=torch.float64, requires_grad=True)
    GradientSurgery.apply(x, r, refs, None, "ignore").backward(grad)
    expected = r(grad, drop_nonfinite(refs))
    assert torch.isfinite(x.grad).all()
    torch.testing.assert_close(x.grad, expected, rtol=1e-12, atol=1e-14)
    if len(r.refs) == 1:  # the only reference is broken: those samples pass unchanged
        torch.testing.assert_close(x.grad[rows], grad[rows], rtol=0, atol=0)


@PROFILE
@given(
    rule=st.sampled_from(["suppression", "alignment", "conflict", "compose"]),
    shape=st.sampled_from([(0, 8), (3, 0), (0, 0), (2, 0, 5), (1, 1)]),
)
def test_empty_and_degenerate_shapes_keep_their_shape(rule, shape):
    r = _rules()[rule]
    grad = torch.randn(shape)
    out = r(grad, {k: torch.randn(shape) for k in r.refs})
    assert out.shape == grad.shape and out.dtype == grad.dtype and torch.isfinite(out).all()


def test_incoming_nonfinite_gradient_passes_through_without_error():
    x = torch.zeros(2, 4, requires_grad=True)
    y = GradientSurgery.apply(x, OrthogonalSuppression(), {"harm": torch.randn(2, 4)})
    y.backward(torch.full((2, 4), math.inf))
    assert not torch.isfinite(x.grad).all()  # a loss scaler must see the overflow


def test_meta_tensors_are_shape_only_runs():
    """All-meta input (no data anywhere) works: the rules skip the data-reading checks."""
    for name, r in _rules().items():
        if name == "fused":
            continue
        m = torch.empty(B, D, device="meta")
        out = r(m, {k: torch.empty(B, D, device="meta") for k in r.refs})
        assert out.device.type == "meta" and out.shape == (B, D)


@pytest.mark.parametrize(
    "call",
    [
        lambda: sign_split("x"),
        lambda: sign_split(torch.ones(3, dtype=torch.complex64)),
        lambda: sign_split(torch.ones(3, dtype=torch.bool)),
        lambda: drop_nonfinite([torch.ones(3)]),
        lambda: drop_nonfinite({"a": "x"}),
        lambda: OrthogonalSuppression(eps="1"),
        lambda: OrthogonalSuppression(eps=math.nan),
        lambda: OrthogonalSuppression(conflict_only=1),
        lambda: OrthogonalSuppression(ref=3),
        lambda: PriorAlignment(weight=-1),
        lambda: PriorAlignment(weight=math.inf),
        lambda: PriorAlignment(scale="per_rank"),
        lambda: ConflictProjection(ref=""),
        lambda: Compose("ab"),
        lambda: Compose([1]),
        lambda: fuse("rule"),
    ],
)
def test_helpers_and_rule_constructors_refuse_bad_arguments(call):
    raises_clearly(call)
