"""PriorAlignment: g' = g + weight * s * min(r, 0), s = 1/B ("reference") or 1 ("invariant").

Invariants it provably has: exact agreement with that formula (B = number of samples = product
of the leading dimensions, 1 for a single vector); a no-op for a zero (or non-negative)
reference and for weight = 0; it only lowers coordinates where r < 0. It is affine, not
linear: it is neither positively homogeneous in g nor idempotent (asserted below).
"""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dgsnet.surgery import PriorAlignment
from dgsnet.testing import (
    assert_finite_and_shaped,
    assert_gradcheck,
    assert_idempotent,
    assert_noop_on_zero_reference,
    assert_positively_homogeneous,
)

SURGERY = settings(settings.get_profile("dgsnet-surgery"))
ALL = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
LOW = (torch.float16, torch.bfloat16)


def num_samples(shape):
    return math.prod(shape[:-1])


def formula(g, r, weight, scale):
    s = 1.0 / num_samples(g.shape) if scale == "reference" else 1.0
    return g.double() + weight * s * torch.clamp(r.double(), max=0)


@SURGERY
@given(
    data=st.data(),
    weight=st.sampled_from([0.0, 0.2, 1.0, 3.5]),
    scale=st.sampled_from(["reference", "invariant"]),
)
def test_matches_formula(data, cases, close_rows, tol_for, weight, scale):
    case = data.draw(cases(dtypes=ALL, related="help"))
    g, refs = case.grad, case.refs
    rule = PriorAlignment(weight=weight, scale=scale)
    out = rule(g, refs)
    assert out.dtype == g.dtype and out.shape == g.shape
    close_rows(out, formula(g, refs["help"], weight, scale), g, rtol=tol_for(g.dtype))
    assert_finite_and_shaped(rule, g, refs)
    assert_noop_on_zero_reference(rule, g, refs, atol=0, rtol=0)


@SURGERY
@given(data=st.data(), scale=st.sampled_from(["reference", "invariant"]))
def test_is_affine_not_homogeneous(data, cases, close_rows, scale):
    case = data.draw(cases(dtypes=(torch.float64,), related="help"))
    g, refs = case.grad, case.refs
    rule = PriorAlignment(weight=0.7, scale=scale)
    shift = rule(torch.zeros_like(g), refs)  # = weight * s * min(r, 0)
    # translation: rule(g) = g + rule(0)
    close_rows(rule(g, refs), g + shift, g, rtol=1e-12)
    # rule(c g) - c rule(g) = (1 - c) rule(0)
    for c in (0.5, 3.0):
        close_rows(rule(c * g, refs) - c * rule(g, refs), (1 - c) * shift, c * g, rtol=1e-12)
    # visible at float64 tolerance: the checks below must catch it
    if bool((shift.abs().amax(-1) > 1e-6 * g.abs().amax(-1)).any()):
        with pytest.raises(AssertionError, match="positive homogeneity"):
            assert_positively_homogeneous(rule, g, refs)
        with pytest.raises(AssertionError, match="idempotence"):
            assert_idempotent(rule, g, refs)


def test_explicit_values_and_batch_scaling():
    g = torch.zeros(4, 2)
    r = torch.tensor([[2.0, -4.0]]).expand(4, 2)
    out_ref = PriorAlignment(weight=0.5)(g, {"help": r})
    out_inv = PriorAlignment(weight=0.5, scale="invariant")(g, {"help": r})
    assert torch.equal(out_inv, torch.tensor([[0.0, -2.0]]).expand(4, 2))
    assert torch.equal(out_ref, torch.tensor([[0.0, -0.5]]).expand(4, 2))  # 0.5 * -4 / 4


@pytest.mark.parametrize(
    "shape, b", [((7,), 1), ((1, 7), 1), ((5, 7), 5), ((3, 4, 7), 12), ((2, 1, 3, 7), 6)]
)
def test_batch_size_is_product_of_leading_dims(shape, b):
    rule = PriorAlignment(weight=1.0)
    assert rule.factor(b) == 1.0 / b
    r = -torch.ones(shape)
    out = rule(torch.zeros(shape), {"help": r})
    torch.testing.assert_close(out, torch.full(shape, -1.0 / b))


def test_empty_batch():
    out = PriorAlignment()(torch.zeros(0, 3), {"help": torch.zeros(0, 3)})
    assert out.shape == (0, 3)
    assert PriorAlignment().factor(0) == 0.0


def test_invariant_scale_does_not_depend_on_batch():
    rule = PriorAlignment(weight=0.2, scale="invariant")
    r = torch.randn(1, 16)
    g = torch.randn(1, 16)
    one = rule(g, {"help": r})
    many = rule(g.expand(64, 16), {"help": r.expand(64, 16)})
    assert torch.equal(many, one.expand(64, 16))


@SURGERY
@given(data=st.data())
def test_only_lowers_coordinates_where_reference_is_negative(data, cases):
    case = data.draw(cases(dtypes=(torch.float32, torch.float64), related="help"))
    g, r = case.grad, case.refs["help"]
    delta = PriorAlignment(weight=0.2, scale="invariant")(g, case.refs).double() - g.double()
    assert bool((delta[r >= 0] == 0).all())
    assert bool((delta <= 0).all())
    # a non-negative reference is a no-op
    assert torch.equal(PriorAlignment()(g, {"help": r.abs()}), g)


def test_weight_zero_is_identity_and_linear_in_weight():
    g, r = torch.randn(3, 8, dtype=torch.float64), torch.randn(3, 8, dtype=torch.float64)
    assert torch.equal(PriorAlignment(weight=0.0)(g, {"help": r}), g)
    d1 = PriorAlignment(weight=1.0)(g, {"help": r}) - g
    d3 = PriorAlignment(weight=3.0)(g, {"help": r}) - g
    torch.testing.assert_close(d3, 3 * d1)


@SURGERY
@given(data=st.data(), scale=st.sampled_from(["reference", "invariant"]))
def test_low_precision_computes_in_float32(data, cases, close_rows, tol_for, scale):
    case = data.draw(cases(dtypes=LOW, related="help"))
    g, refs = case.grad, case.refs
    rule = PriorAlignment(weight=0.2, scale=scale)
    out = rule(g, refs)
    assert out.dtype == g.dtype
    ref32 = rule(g.float(), {k: v.float() for k, v in refs.items()})
    assert torch.equal(out, ref32.to(g.dtype))
    close_rows(out, ref32, g, rtol=tol_for(g.dtype))


def test_reference_dtype_may_differ_from_grad():
    g = torch.randn(2, 4)
    r = torch.randn(2, 4, dtype=torch.float64)
    out = PriorAlignment(scale="invariant")(g, {"help": r})
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, g + 0.2 * r.float().clamp_max(0))


@pytest.mark.parametrize("scale", ["reference", "invariant"])
@pytest.mark.parametrize("shape", [(5,), (3, 5), (2, 2, 4)])
def test_gradcheck(scale, shape):
    gen = torch.Generator().manual_seed(2)
    g = torch.randn(shape, generator=gen, dtype=torch.float64)
    r = torch.randn(shape, generator=gen, dtype=torch.float64)
    assert_gradcheck(PriorAlignment(weight=0.3, scale=scale), g, {"help": r})


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(2, 3, 8\).*\(6, 8\)"):
        PriorAlignment()(torch.randn(6, 8), {"help": torch.randn(2, 3, 8)})


def test_nonfinite_reference_raises():
    r = torch.randn(3, 4)
    r[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"PriorAlignment: reference gradient\(s\) \['help'\]"):
        PriorAlignment()(torch.randn(3, 4), {"help": r})


def test_missing_reference_and_non_tensor():
    with pytest.raises(ValueError, match=r"missing reference gradient\(s\) \['help'\]"):
        PriorAlignment()(torch.randn(2, 3), {"harm": torch.randn(2, 3)})
    with pytest.raises(TypeError, match="grad must be a torch.Tensor"):
        PriorAlignment()(None, {"help": torch.randn(2, 3)})
    with pytest.raises(TypeError, match="'help' must be a torch.Tensor"):
        PriorAlignment()(torch.randn(2, 3), {"help": 1.0})


@pytest.mark.parametrize(
    "kwargs, exc",
    [
        ({"weight": -0.1}, ValueError),
        ({"weight": float("inf")}, ValueError),
        ({"weight": float("nan")}, ValueError),
        ({"weight": "0.2"}, TypeError),
        ({"weight": None}, TypeError),
        ({"weight": False}, TypeError),
        ({"scale": "batch"}, ValueError),
        ({"scale": None}, ValueError),
        ({"ref": None}, TypeError),
        ({"ref": ""}, TypeError),
    ],
)
def test_bad_constructor_arguments(kwargs, exc):
    with pytest.raises(exc, match="PriorAlignment"):
        PriorAlignment(**kwargs)


def test_repr_equality_hash():
    rule = PriorAlignment()
    assert repr(rule) == "PriorAlignment(weight=0.2, scale='reference', ref='help')"
    assert repr(PriorAlignment(weight=1, scale="invariant", ref="teacher")) == (
        "PriorAlignment(weight=1.0, scale='invariant', ref='teacher')"
    )
    assert rule == PriorAlignment(weight=0.2) and rule != PriorAlignment(scale="invariant")
    assert hash(rule) == hash(PriorAlignment())
    assert rule.refs == ("help",)
