"""OrthogonalSuppression: g' = g - <g, u> u with u = relu(r) / (||relu(r)|| + eps).

Invariants it provably has:

* eps = 0: g' is orthogonal to u; the rule is idempotent (a projection), positively
  homogeneous in g, invariant to positive scaling of r, and a no-op for a zero (or
  non-positive) r;
* eps > 0 (default 1e-6): equal to the reference formula (computed here independently, in
  float64); still homogeneous in g and a no-op for a zero r, but neither exactly orthogonal
  nor idempotent (u has norm < 1);
* conflict_only: removes the component only where <g, u> > 0, so <g', u> <= 0 always.
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dgsnet.surgery import OrthogonalSuppression
from dgsnet.testing import (
    assert_finite_and_shaped,
    assert_gradcheck,
    assert_idempotent,
    assert_noop_on_zero_reference,
    assert_orthogonal,
    assert_positively_homogeneous,
    assert_reference_scale_invariant,
)

SURGERY = settings(settings.get_profile("dgsnet-surgery"))
ALL = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
LOW = (torch.float16, torch.bfloat16)


def reference_formula(g, r, eps=1e-6, conflict_only=False):
    """The released code's projection, in float64, written from the formula."""
    g, r = g.double(), r.double()
    pos = torch.clamp(r, min=0)
    u = pos / (pos.pow(2).sum(-1, keepdim=True).sqrt() + eps)
    c = (g * u).sum(-1, keepdim=True)
    if conflict_only:
        c = torch.where(c > 0, c, torch.zeros_like(c))
    return g - c * u


def scales_for(dtype):
    # powers of two scale exactly in every dtype; float32/64 also try awkward factors
    return (0.25, 2.0) if dtype in LOW else (1e-3, 0.5, 3.0, 1e3)


# -- eps = 0: an exact orthogonal projection ----------------------------------------------------


@SURGERY
@given(data=st.data())
def test_exact_projection_invariants(data, cases):
    case = data.draw(cases(dtypes=ALL))
    rule = OrthogonalSuppression(eps=0.0)
    g, refs = case.grad, case.refs
    assert_finite_and_shaped(rule, g, refs)
    assert_orthogonal(rule, g, refs, ref="harm")
    assert_idempotent(rule, g, refs)
    assert_positively_homogeneous(rule, g, refs, scales=scales_for(g.dtype))
    assert_reference_scale_invariant(rule, g, refs, scales=scales_for(g.dtype))
    assert_noop_on_zero_reference(rule, g, refs, atol=0, rtol=0)


@SURGERY
@given(data=st.data())
def test_exact_projection_matches_formula(data, cases, close_rows, tol_for):
    case = data.draw(cases(dtypes=ALL))
    g, r = case.grad, case.refs["harm"]
    out = OrthogonalSuppression(eps=0.0)(g, case.refs)
    pos = r.double().clamp_min(0)
    norm = torch.linalg.vector_norm(pos, dim=-1, keepdim=True)
    u = torch.where(norm > 0, pos / norm, torch.zeros_like(pos))
    expected = g.double() - (g.double() * u).sum(-1, keepdim=True) * u
    close_rows(out, expected, g, rtol=tol_for(g.dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_special_geometries(dtype):
    rule = OrthogonalSuppression(eps=0.0)
    r = torch.tensor([[3.0, -1.0, 4.0], [1.0, 1.0, 1.0], [-1.0, -2.0, -3.0]], dtype=dtype)
    pos = r.clamp_min(0)
    # collinear with the harmful direction: removed entirely (either sign)
    for a in (2.5, -0.5):
        out = rule(a * pos, {"harm": r})
        assert out.abs().max() <= 1e-6 * (a * pos).abs().max()
    # orthogonal to it: untouched
    g = torch.tensor([[4.0, 7.0, -3.0], [1.0, -1.0, 0.0], [5.0, 6.0, 7.0]], dtype=dtype)
    torch.testing.assert_close(rule(g, {"harm": r}), g, rtol=1e-6, atol=1e-6)
    # no positive part: u = 0, no NaN
    assert torch.equal(rule(g[2:], {"harm": r[2:]}), g[2:])


@pytest.mark.parametrize("r_scale", [1e-30, 1e-20, 1e20, 1e30])
def test_extreme_reference_magnitudes(r_scale):
    """No underflow/overflow of ||relu(r)||^2: the direction alone matters (eps = 0)."""
    g = torch.tensor([[1.0, 1.0, 1.0]])
    r = torch.tensor([[1.0, 0.0, -1.0]]) * r_scale
    out = OrthogonalSuppression(eps=0.0)(g, {"harm": r})
    torch.testing.assert_close(out, torch.tensor([[0.0, 1.0, 1.0]]))


@SURGERY
@given(data=st.data())
def test_samples_are_independent(data, cases):
    """A (B, T, D) input gives the same result as its rows one by one."""
    case = data.draw(cases(dtypes=(torch.float64,)))
    g, r = case.grad, case.refs["harm"]
    rule = OrthogonalSuppression(eps=0.0)
    out = rule(g, {"harm": r})
    rows = [
        rule(gi, {"harm": ri})
        for gi, ri in zip(g.reshape(-1, g.shape[-1]), r.reshape(-1, r.shape[-1]), strict=True)
    ]
    torch.testing.assert_close(out.reshape(-1, g.shape[-1]), torch.stack(rows), rtol=0, atol=0)


# -- default eps = 1e-6: the reference formula ------------------------------------------------


@SURGERY
@given(data=st.data())
def test_default_eps_equals_reference_formula(data, cases, close_rows, tol_for):
    case = data.draw(cases(dtypes=ALL))
    g, r = case.grad, case.refs["harm"]
    rule = OrthogonalSuppression()
    out = rule(g, case.refs)
    assert out.dtype == g.dtype and out.shape == g.shape
    close_rows(out, reference_formula(g, r), g, rtol=tol_for(g.dtype))
    assert_finite_and_shaped(rule, g, case.refs)
    assert_positively_homogeneous(rule, g, case.refs, scales=scales_for(g.dtype))
    assert_noop_on_zero_reference(rule, g, case.refs, atol=0, rtol=0)


def test_default_eps_is_neither_orthogonal_nor_idempotent_for_small_references():
    """With ||relu(r)|| comparable to eps, u is visibly shorter than a unit vector."""
    g = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    r = torch.tensor([[1e-6, 0.0]], dtype=torch.float64)
    rule = OrthogonalSuppression()
    torch.testing.assert_close(
        rule(g, {"harm": r}), torch.tensor([[0.75, 0.0]], dtype=torch.float64)
    )
    with pytest.raises(AssertionError, match="orthogonality"):
        assert_orthogonal(rule, g, {"harm": r})
    with pytest.raises(AssertionError, match="idempotence"):
        assert_idempotent(rule, g, {"harm": r})
    with pytest.raises(AssertionError, match="invariance"):
        assert_reference_scale_invariant(rule, g, {"harm": r})


def test_default_eps_close_to_exact_for_large_references():
    g = torch.randn(16, 64, dtype=torch.float64)
    r = torch.randn(16, 64, dtype=torch.float64)
    a = OrthogonalSuppression()(g, {"harm": r})
    b = OrthogonalSuppression(eps=0.0)(g, {"harm": r})
    # |u_eps - u| = eps / (||p|| + eps) ~ 1e-6 / 5
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    assert not torch.equal(a, b)


# -- conflict_only ----------------------------------------------------------------------------


@SURGERY
@given(data=st.data())
def test_conflict_only(data, cases, close_rows, tol_for):
    case = data.draw(cases(dtypes=ALL))
    g, refs = case.grad, case.refs
    rule = OrthogonalSuppression(eps=0.0, conflict_only=True)
    out = rule(g, refs)
    full = OrthogonalSuppression(eps=0.0)(g, refs)
    pos = refs["harm"].double().clamp_min(0)
    norm = torch.linalg.vector_norm(pos, dim=-1, keepdim=True)
    u = torch.where(norm > 0, pos / norm, torch.zeros_like(pos))
    coef = (g.double() * u).sum(-1, keepdim=True)
    scale = torch.linalg.vector_norm(g.double(), dim=-1, keepdim=True)
    # where <g, u> < 0 nothing changes, bit for bit; where > 0 it is the full projection
    # (samples with <g, u> within rounding of 0 may go either way, and both are right)
    margin = tol_for(g.dtype) * scale
    keep = (coef < -margin).expand_as(g)
    remove = (coef > margin).expand_as(g)
    assert torch.equal(out[keep], g[keep])
    close_rows(torch.where(remove, out, full), full, g, rtol=tol_for(g.dtype))
    close_rows(torch.where(remove | keep, g, out), g, g, rtol=tol_for(g.dtype))
    # so <g', u> is never positive
    assert bool(((out.double() * u).sum(-1, keepdim=True) <= tol_for(g.dtype) * scale).all())
    assert_idempotent(rule, g, refs)
    assert_positively_homogeneous(rule, g, refs, scales=scales_for(g.dtype))
    assert_reference_scale_invariant(rule, g, refs, scales=scales_for(g.dtype))
    assert_noop_on_zero_reference(rule, g, refs, atol=0, rtol=0)


def test_conflict_only_example():
    rule = OrthogonalSuppression(eps=0.0, conflict_only=True)
    r = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    g = torch.tensor([[2.0, 3.0], [-2.0, 3.0]])
    assert torch.equal(rule(g, {"harm": r}), torch.tensor([[0.0, 3.0], [-2.0, 3.0]]))


# -- low precision ----------------------------------------------------------------------------


@SURGERY
@given(data=st.data(), eps=st.sampled_from([0.0, 1e-6]))
def test_low_precision_computes_in_float32(data, cases, close_rows, tol_for, eps):
    case = data.draw(cases(dtypes=LOW))
    g, refs = case.grad, case.refs
    rule = OrthogonalSuppression(eps=eps)
    out = rule(g, refs)
    assert out.dtype == g.dtype
    ref32 = rule(g.float(), {k: v.float() for k, v in refs.items()})
    # one rounding of the float32 result, nothing else
    assert torch.equal(out, ref32.to(g.dtype))
    close_rows(out, ref32, g, rtol=tol_for(g.dtype))


# -- gradients of the rule itself ---------------------------------------------------------------


@pytest.mark.parametrize(
    "rule",
    [
        OrthogonalSuppression(),
        OrthogonalSuppression(eps=0.0),
        OrthogonalSuppression(eps=0.0, conflict_only=True),
    ],
    ids=repr,
)
@pytest.mark.parametrize("shape", [(5,), (3, 5), (2, 2, 4)])
def test_gradcheck(rule, shape):
    gen = torch.Generator().manual_seed(1)
    g = torch.randn(shape, generator=gen, dtype=torch.float64)
    r = torch.randn(shape, generator=gen, dtype=torch.float64)
    assert_gradcheck(rule, g, {"harm": r})


# -- validation and API -----------------------------------------------------------------------


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(4, 9\).*\(4, 8\)"):
        OrthogonalSuppression()(torch.randn(4, 8), {"harm": torch.randn(4, 9)})


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nonfinite_reference_raises(bad):
    r = torch.randn(3, 4)
    r[1, 2] = bad
    with pytest.raises(ValueError, match=r"\['harm'\] contain NaN or Inf.*nonfinite='ignore'"):
        OrthogonalSuppression()(torch.randn(3, 4), {"harm": r})


def test_missing_reference_key():
    with pytest.raises(
        ValueError, match=r"missing reference gradient\(s\) \['harm'\].*got \['help'\]"
    ):
        OrthogonalSuppression()(torch.randn(2, 3), {"help": torch.randn(2, 3)})
    with pytest.raises(ValueError, match="missing"):
        OrthogonalSuppression()(torch.randn(2, 3))
    # a custom key name is honoured
    OrthogonalSuppression(ref="text")(torch.randn(2, 3), {"text": torch.randn(2, 3)})


@pytest.mark.parametrize(
    "grad, refs, exc, match",
    [
        ([1.0, 2.0], {"harm": torch.randn(2)}, TypeError, "grad must be a torch.Tensor"),
        (torch.ones(2, dtype=torch.int64), {"harm": torch.randn(2)}, TypeError, "floating-point"),
        (torch.tensor(1.0), {"harm": torch.tensor(1.0)}, ValueError, "at least one dimension"),
        (torch.randn(2), [("harm", torch.randn(2))], TypeError, "mapping"),
        (torch.randn(2), {"harm": [1.0, 2.0]}, TypeError, "'harm' must be a torch.Tensor"),
        (torch.randn(2), {"harm": torch.ones(2, dtype=torch.int32)}, TypeError, "floating point"),
        (torch.randn(2), {"harm": torch.randn(2, device="meta")}, ValueError, "meta"),
    ],
)
def test_bad_inputs(grad, refs, exc, match):
    with pytest.raises(exc, match=match):
        OrthogonalSuppression()(grad, refs)


@pytest.mark.parametrize(
    "kwargs, exc",
    [
        ({"eps": -1e-6}, ValueError),
        ({"eps": float("nan")}, ValueError),
        ({"eps": float("inf")}, ValueError),
        ({"eps": "1e-6"}, TypeError),
        ({"eps": True}, TypeError),
        ({"conflict_only": 1}, TypeError),
        ({"conflict_only": "yes"}, TypeError),
        ({"ref": ""}, TypeError),
        ({"ref": 3}, TypeError),
    ],
)
def test_bad_constructor_arguments(kwargs, exc):
    with pytest.raises(exc, match="OrthogonalSuppression"):
        OrthogonalSuppression(**kwargs)


def test_repr_equality_hash():
    rule = OrthogonalSuppression()
    assert repr(rule) == "OrthogonalSuppression(eps=1e-06, conflict_only=False, ref='harm')"
    assert repr(OrthogonalSuppression(eps=0, conflict_only=True, ref="text")) == (
        "OrthogonalSuppression(eps=0.0, conflict_only=True, ref='text')"
    )
    assert rule == OrthogonalSuppression(eps=1e-6)
    assert rule != OrthogonalSuppression(eps=0.0)
    assert hash(rule) == hash(OrthogonalSuppression())
    assert rule.refs == ("harm",)
    assert OrthogonalSuppression(eps=1).eps == 1.0 and isinstance(
        OrthogonalSuppression(eps=1).eps, float
    )
