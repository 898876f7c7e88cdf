"""fuse(rule): the same math through torch.compile, equal to eager within 1e-6, with the same
validation, and an eager fallback (with a warning) where compilation is unavailable."""

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dgsnet.surgery import (
    Compose,
    ConflictProjection,
    FusedRule,
    GradientSurgery,
    OrthogonalSuppression,
    PriorAlignment,
    fuse,
)
from dgsnet.testing import assert_fused_matches_eager, assert_surgery_backward_applies_rule

SURGERY = settings(settings.get_profile("dgsnet-surgery"))

# every code path of the built-in rules (eps > 0, eps = 0, conflict_only, alignment in both
# scalings, the whole-vector projection, composition); each entry costs one compilation
RULES = [
    OrthogonalSuppression(),
    Compose(
        [OrthogonalSuppression(eps=0.0, conflict_only=True), PriorAlignment(scale="invariant")]
    ),
    ConflictProjection(),
    Compose([PriorAlignment(), OrthogonalSuppression()]),
]


def make_refs(shape, dtype=torch.float32, device="cpu", seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {
        k: torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype=dtype, device=device)
        for k in ("harm", "help", "other")
    }


@pytest.mark.parametrize("rule", RULES, ids=repr)
def test_every_rule_matches_eager(rule):
    shape = (3, 2, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a fallback to eager would fail here
        assert_fused_matches_eager(rule, torch.randn(shape), make_refs(shape))


def test_each_fused_rule_has_its_own_compile_cache():
    """Dynamo keeps one cache, with a recompile limit of 8, per code object. Were all fused
    rules to share one, the ninth distinct rule of a process would silently run eagerly."""
    from torch._dynamo.utils import counters

    g, refs = torch.randn(4, 8), make_refs((4, 8))
    before = counters["stats"]["unique_graphs"]
    rules = [fuse(OrthogonalSuppression(ref=f"key{i}")) for i in range(10)]
    for i, rule in enumerate(rules):
        rule(g, {f"key{i}": refs["harm"]})
        assert rule.compiled is True
    assert counters["stats"]["unique_graphs"] - before == len(rules)


# one fused rule reused across the drawn shapes and dtypes (it compiles a few variants once)
FUSED_REFERENCE_ORDER = fuse(Compose([PriorAlignment(), OrthogonalSuppression()]))


@SURGERY
@given(data=st.data())
def test_matches_eager_on_drawn_inputs(data, cases):
    case = data.draw(cases(dtypes=(torch.float32, torch.float16, torch.bfloat16)))
    d = case.grad.shape[-1]
    # one rank and one compute dtype: the rule compiles twice (static, then dynamic shapes)
    g = case.grad.reshape(-1, d)
    refs = {k: v.reshape(-1, d) for k, v in case.refs.items()}
    out = FUSED_REFERENCE_ORDER(g, refs)
    eager = FUSED_REFERENCE_ORDER.rule(g, refs)
    assert FUSED_REFERENCE_ORDER.compiled is True
    assert out.dtype == g.dtype and out.shape == g.shape
    scale = torch.maximum(
        g.double().norm(dim=-1, keepdim=True), eager.double().norm(dim=-1, keepdim=True)
    )
    ulp = max(1e-6, torch.finfo(g.dtype).eps)
    dev = (out.double() - eager.double()).abs()
    assert bool((dev <= 1e-6 + ulp * scale).all()), float(dev.max())


def test_validation_matches_eager():
    rule = fuse(OrthogonalSuppression())
    with pytest.raises(ValueError, match=r"\(4, 9\).*\(4, 8\)"):
        rule(torch.randn(4, 8), {"harm": torch.randn(4, 9)})
    with pytest.raises(ValueError, match=r"missing reference gradient\(s\) \['harm'\]"):
        rule(torch.randn(4, 8), {})
    with pytest.raises(TypeError, match="grad must be a torch.Tensor"):
        rule([1.0], {"harm": torch.randn(1)})
    bad = torch.randn(4, 8)
    bad[2, 2] = float("nan")
    # the finiteness check runs inside the compiled kernel, and raises the same error
    with pytest.raises(
        ValueError, match=r"OrthogonalSuppression: reference gradient\(s\) \['harm'\] contain NaN"
    ):
        rule(torch.randn(4, 8), {"harm": bad})
    assert rule.compiled is True


def test_api():
    base = Compose([PriorAlignment(), OrthogonalSuppression()])
    rule = fuse(base)
    assert isinstance(rule, FusedRule) and rule.rule is base
    assert rule.refs == base.refs
    assert rule.compiled is None
    assert repr(rule) == f"fuse({base!r})"
    assert fuse(rule).rule is base  # no double wrapping
    assert rule == fuse(Compose([PriorAlignment(), OrthogonalSuppression()]))
    assert rule != base
    with pytest.raises(TypeError, match="fuse expects a SurgeryRule"):
        fuse(lambda g, r: g)


def test_surgery_backward_with_fused_rule():
    rule = fuse(Compose([PriorAlignment(), OrthogonalSuppression()]))
    assert_surgery_backward_applies_rule(rule, torch.randn(3, 2, 8), make_refs((3, 2, 8)))
    refs = make_refs((3, 2, 8))
    refs["harm"][1, 1, 3] = float("inf")
    x = torch.randn(3, 2, 8, requires_grad=True)
    up = torch.randn(3, 2, 8)
    (g,) = torch.autograd.grad(GradientSurgery.apply(x, rule, refs, None, "ignore"), x, up)
    (e,) = torch.autograd.grad(GradientSurgery.apply(x, rule.rule, refs, None, "ignore"), x, up)
    torch.testing.assert_close(g, e, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="NaN or Inf"):
        GradientSurgery.apply(x, rule, refs).sum().backward()


def test_double_backward_through_fused_rule():
    rule = fuse(Compose([PriorAlignment(), OrthogonalSuppression(eps=0.0)]))
    refs = make_refs((3, 5), torch.float64)
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    up = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda t: GradientSurgery.apply(t, rule, refs), (x,), (up,))


def test_fallback_when_compile_is_unavailable(monkeypatch):
    def broken_compile(*args, **kwargs):
        raise RuntimeError("no C++ compiler\nsecond line")

    monkeypatch.setattr(torch, "compile", broken_compile)
    rule = fuse(OrthogonalSuppression())
    g, refs = torch.randn(4, 8), make_refs((4, 8))
    with pytest.warns(
        RuntimeWarning,
        match=r"torch.compile is unavailable here \(RuntimeError: no C\+\+ compiler\)",
    ):
        out = rule(g, refs)
    assert rule.compiled is False
    assert torch.equal(out, OrthogonalSuppression()(g, refs))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warns once only
        rule(g, refs)
    bad = dict(refs, harm=refs["harm"].clone().fill_(float("nan")))
    with pytest.raises(ValueError, match="NaN or Inf"):
        rule(g, bad)
    # the check still compares (and passes) rather than skipping, and passes the warning on
    with pytest.warns(RuntimeWarning, match="unavailable"):
        assert_fused_matches_eager(OrthogonalSuppression(), g, refs)


def test_compile_kwargs_are_passed():
    rule = fuse(OrthogonalSuppression(), dynamic=False)
    assert rule.compile_kwargs == {"dynamic": False}
    g, refs = torch.randn(4, 8), make_refs((4, 8))
    torch.testing.assert_close(
        rule(g, refs), OrthogonalSuppression()(g, refs), rtol=1e-6, atol=1e-6
    )


# -- CUDA -------------------------------------------------------------------------------------

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_fused_matches_eager(dtype):
    shape = (32, 768)
    refs = make_refs(shape, dtype, device="cuda")
    g = torch.randn(shape, device="cuda").to(dtype)
    for rule in RULES:
        assert_fused_matches_eager(rule, g, refs)
    fused = fuse(Compose([PriorAlignment(), OrthogonalSuppression()]))
    assert_surgery_backward_applies_rule(fused, g, refs)
    assert fused.compiled is True
