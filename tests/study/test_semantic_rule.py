"""The study's per-sample semantic suppression rule (benchmarks/study/semantic.py), checked with
`dgsnet.testing`'s invariant checks, and the record of projected directions (the
fixed-direction measurement of docs/study.md) against brute force.

Invariants the rule provably has: the result is orthogonal to the projected direction (the
whole reference, or its positive part); idempotent; positively homogeneous in g; invariant to
positive scaling of the reference (and, for the whole vector, to its sign); a no-op for a zero
reference.
"""

from __future__ import annotations

import math

import pytest
import torch

from dgsnet.surgery import OrthogonalSuppression
from dgsnet.testing import (
    assert_finite_and_shaped,
    assert_fused_matches_eager,
    assert_gradcheck,
    assert_idempotent,
    assert_noop_on_zero_reference,
    assert_orthogonal,
    assert_positively_homogeneous,
    assert_reference_scale_invariant,
    assert_surgery_backward_applies_rule,
)

semantic = pytest.importorskip("benchmarks.study.semantic")
SemanticSuppression = semantic.SemanticSuppression
DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
SHAPES = ((16,), (1, 16), (8, 16), (4, 3, 16))


def _case(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(shape, generator=g, dtype=torch.float64).to(dtype),
        {"text": torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)},
    )


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("part", ["full", "positive"])
def test_invariants(shape, dtype, part):
    grad, refs = _case(shape, dtype)
    rule = SemanticSuppression(part=part)
    low = dtype in (torch.float16, torch.bfloat16)
    assert_finite_and_shaped(rule, grad, refs)
    assert_idempotent(rule, grad, refs)
    assert_positively_homogeneous(rule, grad, refs, scales=(0.5, 4.0) if low else (1e-3, 0.5, 3.0))
    assert_reference_scale_invariant(rule, grad, refs, scales=(0.25, 4.0))
    assert_noop_on_zero_reference(rule, grad, refs, atol=0, rtol=0)
    assert_surgery_backward_applies_rule(rule, grad, refs)
    if part == "positive":
        assert_orthogonal(rule, grad, refs, ref="text")
    else:
        # assert_orthogonal measures against max(ref, 0): with a non-negative reference that
        # is the whole vector the rule projects off
        assert_orthogonal(rule, grad, {"text": refs["text"].abs()}, ref="text")


@pytest.mark.parametrize("part", ["full", "positive"])
def test_equals_the_formula_in_float64(part):
    grad, refs = _case((64, 32), torch.float64, seed=3)
    r = refs["text"].clamp_min(0) if part == "positive" else refs["text"]
    u = r / r.norm(dim=-1, keepdim=True)
    want = grad - (grad * u).sum(-1, keepdim=True) * u
    got = SemanticSuppression(part=part)(grad, refs)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    # orthogonal to the whole (signed) reference, which assert_orthogonal cannot see
    assert float((got * u).sum(-1).abs().max()) < 1e-12 * float(grad.norm(dim=-1).max())


def test_whole_vector_ignores_the_references_sign_and_positive_part_matches_dgs_rule():
    grad, refs = _case((8, 16), torch.float64, seed=5)
    full = SemanticSuppression(part="full")
    torch.testing.assert_close(
        full(grad, refs), full(grad, {"text": -refs["text"]}), rtol=0, atol=1e-14
    )
    # the positive part is Orthogonal Suppression with exact normalisation
    want = OrthogonalSuppression(eps=0.0, ref="text")(grad, refs)
    torch.testing.assert_close(SemanticSuppression(part="positive")(grad, refs), want)


def test_tiny_and_huge_references_normalise_without_under_or_overflow():
    grad, refs = _case((4, 16), torch.float32, seed=7)
    rule = SemanticSuppression()
    base = rule(grad, refs)
    for scale in (1e-30, 1e30):
        out = rule(grad, {"text": refs["text"] * scale})
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out, base, rtol=1e-5, atol=1e-6)


def test_gradients_and_fused_path():
    grad, refs = _case((3, 6), torch.float64, seed=11)
    rule = SemanticSuppression()
    assert_gradcheck(rule, grad, refs)
    assert_gradcheck(SemanticSuppression(part="positive"), grad, refs)
    assert_fused_matches_eager(rule, grad.float(), {"text": refs["text"].float()})


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="part must be 'full' or 'positive', got 'neg'"):
        SemanticSuppression(part="neg")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="ref must be a non-empty string"):
        SemanticSuppression(ref="")
    with pytest.raises(ValueError, match="missing reference"):
        SemanticSuppression()(torch.zeros(2, 4), {"harm": torch.zeros(2, 4)})
    assert repr(SemanticSuppression()) == "SemanticSuppression(part='full', ref='text')"
    assert SemanticSuppression() == SemanticSuppression(part="full")
    assert SemanticSuppression() != SemanticSuppression(part="positive")


def test_random_abs_cos_is_the_sphere_mean():
    assert semantic.random_abs_cos(2) == pytest.approx(2 / math.pi, rel=1e-12)
    assert semantic.random_abs_cos(64) == pytest.approx(0.1001, abs=1e-4)
    g = torch.Generator().manual_seed(0)
    u = torch.nn.functional.normalize(
        torch.randn(200_000, 64, generator=g, dtype=torch.float64), dim=-1
    )
    assert float(u[:, 0].abs().mean()) == pytest.approx(semantic.random_abs_cos(64), rel=0.01)


# -- the record of projected directions -------------------------------------------------------
def _brute(steps):
    """The summary's cosines by explicit pairs."""
    rows = []
    for s, (d, y, _g, _t) in enumerate(steps):
        for b in range(len(y)):
            if float(d[b].norm()) > 0:
                rows.append((s, int(y[b]), d[b] / d[b].norm()))
    same, other, cross = [], [], []
    for i, (si, yi, ui) in enumerate(rows):
        for j, (sj, yj, uj) in enumerate(rows):
            if i == j:
                continue
            c = float(ui @ uj)
            if yi != yj:
                cross.append(c)
            elif si == sj:
                same.append(c)
            else:
                other.append(c)
    mean = lambda v: sum(v) / len(v)  # noqa: E731
    return {
        "cos_same_label_same_step": mean(same),
        "min_cos_same_label_same_step": min(same),
        "cos_same_label_other_step": mean(other),
        "cos_other_label": mean(cross),
    }


def test_direction_log_against_explicit_pairs():
    g = torch.Generator().manual_seed(1)
    log = semantic.DirectionLog()
    steps = []
    for _ in range(4):
        d = torch.randn(6, 5, generator=g, dtype=torch.float64)
        d[0] = 0  # a sample without a direction is left out
        y = torch.tensor([0, 1, 0, 1, 1, 0])
        grad, text = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
        log.add(d, y, grad, text)
        steps.append((d, y, grad, text))
    got = log.summary()
    for k, v in _brute(steps).items():
        assert got[k] == pytest.approx(v, abs=1e-12), k
    grads = torch.cat([s[2] for s in steps]).double()
    texts = torch.cat([s[3] for s in steps]).double()
    cos = torch.nn.functional.cosine_similarity(grads, texts, dim=-1).abs()
    assert got["grad_along_text"] == pytest.approx(float(cos.mean()), abs=1e-12)


def test_linear_text_head_gives_two_fixed_directions():
    """The derivation of docs/study.md: with a linear head and BCE, g_text_b = s_b w_t, so
    relu(g_text_b) is s_b relu(w_t) (reals, s_b > 0) or |s_b| relu(-w_t) (fakes): the same
    direction for every image of a label, and disjoint supports across labels."""
    g = torch.Generator().manual_seed(2)
    head = torch.nn.Linear(16, 1)
    t = torch.randn(32, 16, generator=g, requires_grad=True)
    y = torch.arange(32) % 2
    loss = torch.nn.functional.binary_cross_entropy_with_logits(head(t).flatten(), y.float())
    (g_text,) = torch.autograd.grad(loss, t)
    s = (torch.sigmoid(head(t).flatten()) - y) / 32
    torch.testing.assert_close(g_text, s[:, None] * head.weight.detach(), rtol=1e-5, atol=1e-8)
    log = semantic.DirectionLog()
    log.add(g_text.clamp_min(0), y, torch.randn(32, 16, generator=g), t.detach())
    out = log.summary()
    assert out["min_cos_same_label_same_step"] == pytest.approx(1.0, abs=1e-6)
    assert out["cos_other_label"] == 0.0
