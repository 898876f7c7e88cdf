"""dgsnet.testing reports NaN as NaN: no check says "max abs deviation 0.000e+00" about NaN
results, none fails or passes because a NaN bound or scale made a comparison false."""

from __future__ import annotations

import math
import re

import pytest
import torch

from dgsnet.surgery import OrthogonalSuppression, SurgeryRule
from dgsnet.testing import (
    assert_fused_matches_eager,
    assert_gradcheck,
    assert_idempotent,
    assert_noop_on_zero_reference,
    assert_orthogonal,
    assert_positively_homogeneous,
    assert_reference_scale_invariant,
    assert_sign_split_reconstructs,
    assert_surgery_backward_applies_rule,
)


class AllNaN(SurgeryRule):
    """Returns NaN everywhere, for any input."""

    refs = ("harm",)

    def forward(self, grad, refs):
        return grad * math.nan


class NaNInFirstSample(SurgeryRule):
    """A correct projection, except that sample 0 comes out NaN."""

    refs = ("harm",)

    def forward(self, grad, refs):
        out = OrthogonalSuppression(eps=0.0).forward(grad, refs).clone()
        out[0] = math.nan
        return out


@pytest.fixture
def data():
    gen = torch.Generator().manual_seed(0)
    g = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    return g, {"harm": torch.randn(4, 6, generator=gen, dtype=torch.float64)}


def _message(check, *args, **kwargs) -> str:
    with pytest.raises(AssertionError) as info:
        check(*args, **kwargs)
    return str(info.value)


CHECKS = [
    ("idempotent", lambda r, g, refs: assert_idempotent(r, g, refs)),
    ("homogeneous", lambda r, g, refs: assert_positively_homogeneous(r, g, refs)),
    ("scale-invariant", lambda r, g, refs: assert_reference_scale_invariant(r, g, refs)),
    ("noop", lambda r, g, refs: assert_noop_on_zero_reference(r, g, refs)),
    ("orthogonal", lambda r, g, refs: assert_orthogonal(r, g, refs)),
]


@pytest.mark.parametrize("rule", [AllNaN(), NaNInFirstSample()], ids=["all", "sample0"])
@pytest.mark.parametrize("name, check", CHECKS, ids=[c[0] for c in CHECKS])
def test_nan_results_fail_and_say_nan(data, rule, name, check):
    g, refs = data
    msg = _message(check, rule, g, refs)
    assert "NaN" in msg or "nan" in msg, msg
    assert "deviation 0.000e+00" not in msg, msg  # what assert_idempotent used to say
    assert "sample (0,)" in msg, msg


def test_idempotent_nan_message(data):
    g, refs = data
    msg = _message(assert_idempotent, AllNaN(), g, refs)
    expected = r"24 entries NaN/Inf on both sides, for finite inputs; max abs deviation nan"
    assert re.search(expected, msg), msg


def test_nan_in_an_input_sample_does_not_fail_the_other_samples(data):
    # a NaN input sample gives NaN out of any rule; the remaining samples are still judged,
    # and a NaN scale must not turn their comparison into a failure with deviation 0
    g, refs = data
    g = g.clone()
    g[2, 1] = math.nan
    rule = OrthogonalSuppression(eps=0.0)
    assert_idempotent(rule, g, refs)
    assert_positively_homogeneous(rule, g, refs)
    assert_reference_scale_invariant(rule, g, refs)
    assert_noop_on_zero_reference(rule, g, refs)


def test_nan_input_does_not_hide_a_real_deviation_elsewhere(data):
    class HalfProjection(SurgeryRule):
        refs = ("harm",)

        def forward(self, grad, refs):
            full = OrthogonalSuppression(eps=0.0).forward(grad, refs)
            return 0.5 * (grad + full)

    g, refs = data
    g = g.clone()
    g[2, 1] = math.nan
    msg = _message(assert_idempotent, HalfProjection(), g, refs)
    assert re.search(r"max abs deviation [1-9]\.\d+e-0[0-2]", msg), msg


@pytest.mark.parametrize(
    "kwargs", [{"atol": math.nan}, {"rtol": math.nan}, {"atol": -1.0}, {"rtol": math.inf}]
)
def test_nan_or_invalid_tolerances_are_refused(data, kwargs):
    g, refs = data
    key = next(iter(kwargs))
    with pytest.raises(ValueError, match=f"{key} must be a finite number >= 0"):
        assert_idempotent(OrthogonalSuppression(), g, refs, **kwargs)
    with pytest.raises(ValueError, match=f"{key} must be a finite number >= 0"):
        assert_fused_matches_eager(OrthogonalSuppression(), g, refs, **kwargs)
    with pytest.raises(ValueError, match=f"{key} must be a finite number >= 0"):
        assert_gradcheck(
            OrthogonalSuppression(), g[:1, :3], {"harm": refs["harm"][:1, :3]}, **kwargs
        )


def test_sign_split_reports_nan_as_nan():
    def nan_split(g):
        pos = g.clamp_min(0).clone()
        pos[1] = math.nan  # g[1] is a number
        return pos, g.clamp_max(0)

    msg = _message(assert_sign_split_reconstructs, torch.tensor([1.0, -2.0, 3.0]), nan_split)
    assert "max |g_pos + g_neg - g| = nan" in msg and "1 of them NaN where g is not" in msg, msg


def test_sign_split_catches_nan_parts_even_when_their_sum_is_right():
    def sneaky(g):  # NaN in g_pos cancels nowhere, but where g is NaN the sum is allowed NaN
        pos, neg = g.clamp_min(0), g.clamp_max(0)
        return pos, neg

    assert_sign_split_reconstructs(torch.tensor([1.0, math.nan, -1.0]), sneaky)


def test_surgery_backward_identity_holds_with_nan_features():
    x = torch.randn(4, 8)
    x[1, 2] = math.nan  # the forward pass is still the identity (NaN stays NaN)
    assert_surgery_backward_applies_rule(OrthogonalSuppression(), x, {"harm": torch.randn(4, 8)})


class _NaNGradient(torch.autograd.Function):
    """Forward 0 * r, backward NaN: a reference whose analytical Jacobian is NaN."""

    @staticmethod
    def forward(ctx, r):
        return r * 0.0

    @staticmethod
    def backward(ctx, g):
        return g * math.nan


class NaNJacobianInTheReference(SurgeryRule):
    refs = ("harm",)

    def forward(self, grad, refs):
        return grad + _NaNGradient.apply(refs["harm"])


def test_gradcheck_names_the_input_with_a_nan_jacobian():
    g = torch.randn(1, 3, dtype=torch.float64)
    refs = {"harm": torch.randn(1, 3, dtype=torch.float64)}
    msg = _message(assert_gradcheck, NaNJacobianInTheReference(), g, refs)
    # the grad Jacobian is exact (deviation 0): the NaN one must be the one reported
    assert "Jacobian entry = nan" in msg and "w.r.t. 'harm'" in msg, msg
