"""ConflictProjection (PCGrad-style): g' = g - min(<g, r>, 0) / ||r||^2 r.

Invariants it provably has: the result never conflicts with r (<g', r> >= 0); it is exactly g
where <g, r> >= 0 and orthogonal to r where <g, r> < 0; idempotent; positively homogeneous in
g; invariant to positive scaling of r; a no-op for a zero r.
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dgsnet.surgery import ConflictProjection
from dgsnet.testing import (
    assert_finite_and_shaped,
    assert_gradcheck,
    assert_idempotent,
    assert_noop_on_zero_reference,
    assert_positively_homogeneous,
    assert_reference_scale_invariant,
)

SURGERY = settings(settings.get_profile("dgsnet-surgery"))
ALL = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
LOW = (torch.float16, torch.bfloat16)


def unit(r):
    r = r.double()
    n = torch.linalg.vector_norm(r, dim=-1, keepdim=True)
    return torch.where(n > 0, r / n, torch.zeros_like(r))


def scales_for(dtype):
    return (0.25, 2.0) if dtype in LOW else (1e-3, 0.5, 3.0, 1e3)


@SURGERY
@given(data=st.data())
def test_invariants(data, cases, close_rows, tol_for):
    case = data.draw(cases(dtypes=ALL, related="other"))
    g, refs = case.grad, case.refs
    rule = ConflictProjection()
    out = rule(g, refs)
    tol = tol_for(g.dtype)

    r_hat = unit(refs["other"])
    g_norm = torch.linalg.vector_norm(g.double(), dim=-1, keepdim=True)
    dot_in = (g.double() * r_hat).sum(-1, keepdim=True)
    dot_out = (out.double() * r_hat).sum(-1, keepdim=True)
    # never conflicts with r
    assert bool((dot_out >= -tol * g_norm).all()), float((dot_out / g_norm.clamp_min(1e-300)).min())
    # untouched (bit for bit) where there was no conflict, orthogonal to r where there was
    no_conflict = (dot_in > tol * g_norm).expand_as(g)
    assert torch.equal(out[no_conflict], g[no_conflict])
    conflict = dot_in < -tol * g_norm
    assert bool((dot_out.abs()[conflict] <= tol * g_norm[conflict]).all())
    # and equal to the formula
    expected = g.double() - dot_in.clamp_max(0) * r_hat
    close_rows(out, expected, g, rtol=tol)

    assert_finite_and_shaped(rule, g, refs)
    assert_idempotent(rule, g, refs)
    assert_positively_homogeneous(rule, g, refs, scales=scales_for(g.dtype))
    assert_reference_scale_invariant(rule, g, refs, scales=scales_for(g.dtype))
    assert_noop_on_zero_reference(rule, g, refs, atol=0, rtol=0)


def test_examples():
    rule = ConflictProjection()
    r = torch.tensor([[0.0, 1.0], [0.0, 1.0], [0.0, 1.0], [0.0, 0.0]])
    g = torch.tensor([[1.0, -1.0], [1.0, 1.0], [0.0, -3.0], [2.0, -2.0]])
    out = rule(g, {"other": r})
    # conflict removed / agreement kept / anti-parallel -> 0 / zero reference -> no-op
    assert torch.equal(out, torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0], [2.0, -2.0]]))


def test_orthogonal_is_untouched_and_not_a_sign_split_rule():
    rule = ConflictProjection()
    g = torch.tensor([[1.0, 0.0, 0.0]])
    assert torch.equal(rule(g, {"other": torch.tensor([[0.0, 5.0, -1.0]])}), g)
    # unlike OrthogonalSuppression it looks at the whole reference, negative part included
    out = rule(torch.tensor([[0.0, 1.0]]), {"other": torch.tensor([[0.0, -1.0]])})
    assert torch.equal(out, torch.zeros(1, 2))


@pytest.mark.parametrize("r_scale", [1e-30, 1e-20, 1e20, 1e30])
def test_extreme_reference_magnitudes(r_scale):
    g = torch.tensor([[1.0, -1.0]])
    out = ConflictProjection()(g, {"other": torch.tensor([[0.0, 1.0]]) * r_scale})
    torch.testing.assert_close(out, torch.tensor([[1.0, 0.0]]))


def test_large_gradient_and_reference_do_not_overflow():
    # <g, r> = -1e40 is beyond float32; the projection itself is not
    g = torch.tensor([[1e20, -1e20]])
    r = torch.tensor([[0.0, 1e20]])
    torch.testing.assert_close(ConflictProjection()(g, {"other": r}), torch.tensor([[1e20, 0.0]]))


@SURGERY
@given(data=st.data())
def test_low_precision_computes_in_float32(data, cases, close_rows, tol_for):
    case = data.draw(cases(dtypes=LOW, related="other"))
    g, refs = case.grad, case.refs
    rule = ConflictProjection()
    out = rule(g, refs)
    assert out.dtype == g.dtype
    ref32 = rule(g.float(), {k: v.float() for k, v in refs.items()})
    assert torch.equal(out, ref32.to(g.dtype))
    close_rows(out, ref32, g, rtol=tol_for(g.dtype))


@pytest.mark.parametrize("shape", [(5,), (3, 5), (2, 2, 4)])
def test_gradcheck(shape):
    gen = torch.Generator().manual_seed(3)
    g = torch.randn(shape, generator=gen, dtype=torch.float64)
    r = torch.randn(shape, generator=gen, dtype=torch.float64)
    # make every sample conflict clearly, away from the kink at <g, r> = 0
    dots = (g * r).sum(-1, keepdim=True)
    g = torch.where(dots > 0, -g, g)
    assert_gradcheck(ConflictProjection(), g, {"other": r})


def test_validation():
    rule = ConflictProjection()
    with pytest.raises(ValueError, match=r"\(3, 4\).*\(4, 3\)"):
        rule(torch.randn(4, 3), {"other": torch.randn(3, 4)})
    with pytest.raises(ValueError, match=r"missing reference gradient\(s\) \['other'\]"):
        rule(torch.randn(4, 3), {"harm": torch.randn(4, 3)})
    bad = torch.randn(4, 3)
    bad[2] = float("inf")
    with pytest.raises(ValueError, match="NaN or Inf"):
        rule(torch.randn(4, 3), {"other": bad})
    with pytest.raises(TypeError, match="grad must be a torch.Tensor"):
        rule("g", {"other": torch.randn(4, 3)})


@pytest.mark.parametrize("ref", [None, "", 0, ("a",)])
def test_bad_constructor_arguments(ref):
    with pytest.raises(TypeError, match="ConflictProjection: ref must be a non-empty string"):
        ConflictProjection(ref=ref)


def test_repr_equality_hash():
    assert repr(ConflictProjection()) == "ConflictProjection(ref='other')"
    assert repr(ConflictProjection(ref="task_b")) == "ConflictProjection(ref='task_b')"
    assert ConflictProjection() == ConflictProjection(ref="other")
    assert ConflictProjection() != ConflictProjection(ref="x")
    assert hash(ConflictProjection()) == hash(ConflictProjection())
