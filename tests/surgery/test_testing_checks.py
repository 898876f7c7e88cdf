"""dgsnet.testing: every check passes a correct rule and catches a deliberately broken one with
an AssertionError that names the invariant and the deviation."""

import pytest
import torch

from dgsnet.surgery import OrthogonalSuppression, PriorAlignment, SurgeryRule, sign_split
from dgsnet.testing import (
    assert_finite_and_shaped,
    assert_fused_matches_eager,
    assert_gradcheck,
    assert_idempotent,
    assert_noop_on_zero_reference,
    assert_orthogonal,
    assert_positively_homogeneous,
    assert_reference_scale_invariant,
    assert_sign_split_reconstructs,
    assert_surgery_backward_applies_rule,
    default_tolerances,
)


def unit(v):
    n = v.norm(dim=-1, keepdim=True)
    return v / n.clamp_min(torch.finfo(v.dtype).tiny)


class Project(SurgeryRule):
    """A correct custom rule: remove the component along relu(refs['harm'])."""

    refs = ("harm",)

    def forward(self, grad, refs):
        u = unit(refs["harm"].clamp_min(0))
        return grad - (grad * u).sum(-1, keepdim=True) * u


class WrongShape(Project):
    def forward(self, grad, refs):
        return super().forward(grad, refs).reshape(-1)


class WrongDtype(Project):
    def __call__(self, grad, refs=None):  # skips the base class's cast back to grad's dtype
        prepared, used = self.prepare(grad, refs or {})
        return self.forward(prepared.double(), {k: v.double() for k, v in used.items()})


class NotATensor(Project):
    def __call__(self, grad, refs=None):
        return super().__call__(grad, refs).tolist()


class MakesNaN(Project):
    def forward(self, grad, refs):
        pos = refs["harm"].clamp_min(0)
        u = pos / pos.norm(dim=-1, keepdim=True)  # 0/0 for a non-positive reference
        return grad - (grad * u).sum(-1, keepdim=True) * u


class InPlace(Project):
    def forward(self, grad, refs):
        u = unit(refs["harm"].clamp_min(0))
        return grad.sub_((grad * u).sum(-1, keepdim=True) * u)


class WrongSign(Project):
    """Projects out the negative part instead of the positive one."""

    def forward(self, grad, refs):
        u = unit(refs["harm"].clamp_max(0))
        return grad - (grad * u).sum(-1, keepdim=True) * u


class HalfProjection(Project):
    """Removes only half of the component: neither orthogonal nor idempotent."""

    def forward(self, grad, refs):
        u = unit(refs["harm"].clamp_min(0))
        return grad - 0.5 * (grad * u).sum(-1, keepdim=True) * u


class Normalises(Project):
    """Returns a unit-norm gradient: not homogeneous."""

    def forward(self, grad, refs):
        return unit(super().forward(grad, refs))


class Unnormalised(Project):
    """Forgets to normalise the reference: depends on its scale."""

    def forward(self, grad, refs):
        p = refs["harm"].clamp_min(0)
        return grad - (grad * p).sum(-1, keepdim=True) * p


class Shrinks(Project):
    """Scales the gradient even without a reference."""

    def forward(self, grad, refs):
        return 0.9 * super().forward(grad, refs)


class DetachedCoefficient(Project):
    """Detaches the projection coefficient: right values, wrong derivative."""

    def forward(self, grad, refs):
        u = unit(refs["harm"].clamp_min(0))
        return grad - (grad * u).sum(-1, keepdim=True).detach() * u


class CompilesDifferently(Project):
    def forward(self, grad, refs):
        out = super().forward(grad, refs)
        if torch.compiler.is_compiling():
            return out * 1.01
        return out


class GradModeDependent(Project):
    """Behaves differently inside backward (grad mode off) than when called directly."""

    def forward(self, grad, refs):
        out = super().forward(grad, refs)
        return out if torch.is_grad_enabled() else grad


@pytest.fixture
def data():
    gen = torch.Generator().manual_seed(11)
    g = torch.randn(4, 3, 6, generator=gen, dtype=torch.float64)
    harm = torch.randn(4, 3, 6, generator=gen, dtype=torch.float64)
    return g, {"harm": harm}


def small(data):
    g, refs = data
    return g[0, :2], {"harm": refs["harm"][0, :2]}


# -- assert_finite_and_shaped -----------------------------------------------------------------


def test_finite_and_shaped(data):
    g, refs = data
    assert_finite_and_shaped(Project(), g, refs)
    assert_finite_and_shaped(Project(), g.bfloat16(), refs)
    with pytest.raises(AssertionError, match=r"returned shape \(72,\).*\(4, 3, 6\)"):
        assert_finite_and_shaped(WrongShape(), g, refs)
    with pytest.raises(AssertionError, match="returned dtype torch.float64, expected .*float32"):
        assert_finite_and_shaped(WrongDtype(), g.float(), refs)
    with pytest.raises(AssertionError, match="returned list"):
        assert_finite_and_shaped(NotATensor(), g, refs)
    neg = {"harm": -refs["harm"].abs()}
    with pytest.raises(AssertionError, match=r"returned 72 NaN/Inf value\(s\).*sample \(0, 0\)"):
        assert_finite_and_shaped(MakesNaN(), g, neg)
    with pytest.raises(AssertionError, match=r"modified the gradient in place \(max change"):
        assert_finite_and_shaped(InPlace(), g.clone(), refs)
    with pytest.raises(ValueError, match="needs finite inputs"):
        assert_finite_and_shaped(Project(), g.clone().fill_(float("nan")), refs)


# -- assert_orthogonal ------------------------------------------------------------------------


def test_orthogonal(data):
    g, refs = data
    assert_orthogonal(Project(), g, refs)
    assert_orthogonal(Project(), g.float(), {"harm": refs["harm"].float()})
    with pytest.raises(
        AssertionError,
        match=r"orthogonality to the positive part of refs\['harm'\] violated.*"
        r"max \|<out, u>\| = \d",
    ):
        assert_orthogonal(WrongSign(), g, refs)
    with pytest.raises(AssertionError, match="orthogonality"):
        assert_orthogonal(HalfProjection(), g, refs)
    with pytest.raises(ValueError, match="no key 'text'"):
        assert_orthogonal(Project(), g, refs, ref="text")


def test_orthogonal_tolerance_is_honoured(data):
    g, refs = data
    # the half projection leaves half the component: fine with a loose enough rtol
    assert_orthogonal(HalfProjection(), g, refs, rtol=1.0)


# -- assert_idempotent ------------------------------------------------------------------------


def test_idempotent(data):
    g, refs = data
    assert_idempotent(Project(), g, refs)
    with pytest.raises(
        AssertionError, match=r"idempotence of HalfProjection\(\).*max abs deviation \d"
    ):
        assert_idempotent(HalfProjection(), g, refs)
    with pytest.raises(AssertionError, match="idempotence of PriorAlignment"):
        assert_idempotent(PriorAlignment(), g, {"help": refs["harm"]})


# -- assert_positively_homogeneous ------------------------------------------------------------


def test_positively_homogeneous(data):
    g, refs = data
    assert_positively_homogeneous(Project(), g, refs)
    assert_positively_homogeneous(Project(), g, refs, scales=(1e-6, 1e6))
    with pytest.raises(
        AssertionError,
        match=r"positive homogeneity of Normalises\(\) "
        r"\(rule\(0.5 g\) vs 0.5 rule\(g\)\).*relative",
    ):
        assert_positively_homogeneous(Normalises(), g, refs)
    with pytest.raises(AssertionError, match="positive homogeneity of PriorAlignment"):
        assert_positively_homogeneous(PriorAlignment(scale="invariant"), g, {"help": refs["harm"]})
    for bad in [(0.0,), (-1.0,), (), (float("inf"),), ("2",)]:
        with pytest.raises(ValueError, match="scales"):
            assert_positively_homogeneous(Project(), g, refs, scales=bad)


# -- assert_reference_scale_invariant ---------------------------------------------------------


def test_reference_scale_invariant(data):
    g, refs = data
    assert_reference_scale_invariant(Project(), g, refs)
    with pytest.raises(
        AssertionError,
        match=r"invariance of Unnormalised\(\) to scaling references \['harm'\] by 0.001",
    ):
        assert_reference_scale_invariant(Unnormalised(), g, refs)
    with pytest.raises(ValueError, match=r"keys \['help'\] are not in refs"):
        assert_reference_scale_invariant(Project(), g, refs, keys=["help"])


# -- assert_sign_split_reconstructs -----------------------------------------------------------


def overlapping_split(g):
    bump = (g < 0).to(g.dtype)
    return g.clamp_min(0) + bump, g.clamp_max(0) - bump


@pytest.mark.parametrize(
    "split, match",
    [
        (
            lambda g: (g.clamp_min(0), g),
            r"does not reconstruct g: \d+ coordinate\(s\).*max \|g_pos \+ g_neg - g\| = ",
        ),
        (lambda g: (g.abs(), g.clamp_max(0)), "does not reconstruct g"),
        (
            lambda g: (g.clamp_min(0) * (1 + 1e-6), g.clamp_max(0)),
            r"max \|g_pos \+ g_neg - g\| = [1-9]",
        ),
        (
            lambda g: (g.clamp_max(0), g.clamp_min(0)),
            r"g_pos has \d+ negative coordinate\(s\), min -",
        ),
        (lambda g: (g, torch.zeros_like(g)), r"g_pos has \d+ negative"),
        (lambda g: (torch.zeros_like(g), g), r"g_neg has \d+ positive coordinate\(s\), max [0-9]"),
        (overlapping_split, r"supports overlap in \d+ coordinate\(s\)"),
        (lambda g: g.clamp_min(0), "must return a pair"),
        (lambda g: (g.clamp_min(0), g.clamp_max(0).double()), "dtype"),
        (lambda g: (g.clamp_min(0), g.clamp_max(0).tolist()), "not a tensor"),
    ],
)
def test_sign_split_reconstructs(split, match):
    g = torch.round(torch.randn(5, 7) * 8) / 8  # multiples of 1/8: the +-1 bumps add exactly
    assert_sign_split_reconstructs(g)
    assert_sign_split_reconstructs(g, split=sign_split)
    assert_sign_split_reconstructs(g, split=lambda t: (torch.relu(t), -torch.relu(-t)))
    with pytest.raises(AssertionError, match=match):
        assert_sign_split_reconstructs(g, split=split)


def test_sign_split_check_needs_a_tensor():
    with pytest.raises(TypeError):
        assert_sign_split_reconstructs([1.0, -1.0])


# -- assert_noop_on_zero_reference ------------------------------------------------------------


def test_noop_on_zero_reference(data):
    g, refs = data
    assert_noop_on_zero_reference(Project(), g, refs, atol=0, rtol=0)
    assert_noop_on_zero_reference(Project(), g, refs, keys=["harm"])
    with pytest.raises(
        AssertionError, match=r"no-op of MakesNaN\(\) on zero references \['harm'\].*NaN/Inf"
    ):
        assert_noop_on_zero_reference(MakesNaN(), g, refs)
    with pytest.raises(AssertionError, match=r"no-op of Shrinks\(\).*max abs deviation"):
        assert_noop_on_zero_reference(Shrinks(), g, refs)
    with pytest.raises(ValueError, match="not in refs"):
        assert_noop_on_zero_reference(Project(), g, refs, keys="help")


# -- assert_gradcheck -------------------------------------------------------------------------


def test_gradcheck(data):
    g, refs = small(data)
    assert_gradcheck(Project(), g, refs)
    assert_gradcheck(Project(), g.float(), refs, wrt_refs=False)
    with pytest.raises(
        AssertionError,
        match=r"gradcheck of DetachedCoefficient\(\) w.r.t. grad failed.*"
        r"max \|analytical - numerical\| Jacobian entry = \d",
    ):
        assert_gradcheck(DetachedCoefficient(), g, refs)


def test_gradcheck_wrt_references(data):
    g, refs = small(data)

    class DetachedReference(Project):
        def forward(self, grad, refs):
            return super().forward(grad, {"harm": refs["harm"].detach()})

    # right w.r.t. grad, wrong w.r.t. the reference
    assert_gradcheck(DetachedReference(), g, refs, wrt_refs=False)
    with pytest.raises(AssertionError, match=r"w.r.t. grad and references \['harm'\].*'harm'"):
        assert_gradcheck(DetachedReference(), g, refs)


# -- assert_fused_matches_eager ---------------------------------------------------------------


def test_fused_matches_eager():
    g, harm = torch.randn(4, 8), torch.randn(4, 8)
    assert_fused_matches_eager(Project(), g, {"harm": harm})
    with pytest.raises(
        AssertionError, match=r"fuse\(CompilesDifferently\(\)\) vs eager: max abs deviation"
    ):
        assert_fused_matches_eager(CompilesDifferently(), g, {"harm": harm})


def test_fused_check_compares_even_after_a_fallback(monkeypatch):
    def unavailable(*args, **kwargs):
        raise RuntimeError("no compiler")

    monkeypatch.setattr(torch, "compile", unavailable)
    g, harm = torch.randn(4, 8), torch.randn(4, 8)
    with pytest.warns(RuntimeWarning, match="unavailable"):
        assert_fused_matches_eager(OrthogonalSuppression(), g, {"harm": harm})


# -- assert_surgery_backward_applies_rule ------------------------------------------------------


def test_surgery_backward_applies_rule(data):
    g, refs = data
    assert_surgery_backward_applies_rule(Project(), g, refs)
    assert_surgery_backward_applies_rule(Project(), g, refs, grad_output=torch.ones_like(g))
    with pytest.raises(
        AssertionError,
        match=r"GradientSurgery backward vs GradModeDependent\(\)\(upstream gradient\): "
        r"max abs deviation",
    ):
        assert_surgery_backward_applies_rule(GradModeDependent(), g, refs)
    with pytest.raises(TypeError, match="floating-point"):
        assert_surgery_backward_applies_rule(Project(), torch.ones(2, 3, dtype=torch.int64), refs)


def test_default_tolerances():
    assert default_tolerances(torch.float32) == (1e-5, 1e-37)
    rtol, _ = default_tolerances(torch.bfloat16)
    assert rtol > default_tolerances(torch.float16)[0] > default_tolerances(torch.float32)[0]
    with pytest.raises(ValueError):
        default_tolerances(torch.int32)
