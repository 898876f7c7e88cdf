"""Surgery faults that used to pass silently or fail far from their cause.

- a reference changed in place between forward and backward (the gradient was computed from
  the changed values without a word);
- a custom rule returning ``None``, a wrong shape, dtype or device (an ``AttributeError`` or a
  torch error not naming the rule, or a silent cast);
- the references validated by two implementations that said different things.
"""

from __future__ import annotations

import re

import pytest
import torch

from dgsnet.surgery import (
    Compose,
    ConflictProjection,
    GradientSurgery,
    OrthogonalSuppression,
    PriorAlignment,
    RuleOutputError,
    SurgeryRule,
    SurgeryStats,
    fuse,
)

INPLACE = "modified by an inplace operation"


def _features(shape=(4, 8), seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen, requires_grad=True)


# -- references changed in place -------------------------------------------------------------


def test_reference_zeroed_after_forward_raises_instead_of_a_wrong_gradient():
    x, h = _features(), torch.randn(4, 8)
    y = GradientSurgery.apply(x, OrthogonalSuppression(), {"harm": h})
    h.zero_()  # the repro of the issue: the gradient differed by 0.48, silently
    with pytest.raises(RuntimeError, match=INPLACE):
        y.sum().backward()
    assert x.grad is None


@pytest.mark.parametrize("mutate", ["harm", "help"])
def test_every_reference_a_rule_reads_is_protected(mutate):
    refs = {"harm": torch.randn(4, 8), "help": torch.randn(4, 8)}
    rule = Compose([PriorAlignment(), OrthogonalSuppression()])
    y = GradientSurgery.apply(_features(), rule, refs, SurgeryStats())
    refs[mutate].mul_(2.0)
    with pytest.raises(RuntimeError, match=INPLACE):
        y.sum().backward()


def test_fused_rule_references_are_protected():
    h = torch.randn(4, 8)
    y = GradientSurgery.apply(_features(), fuse(OrthogonalSuppression()), {"harm": h})
    h.add_(1.0)
    with pytest.raises(RuntimeError, match=INPLACE):  # raised before any compilation
        y.sum().backward()


def test_a_reference_written_through_a_view_is_caught():
    buf = torch.randn(2, 4, 8)
    y = GradientSurgery.apply(_features(), ConflictProjection(), {"other": buf[0]})
    buf[0, 0, 0] = 5.0  # another view of the same storage
    with pytest.raises(RuntimeError, match=INPLACE):
        y.sum().backward()


def test_clone_makes_buffer_reuse_safe_and_the_gradient_is_unchanged():
    rule = OrthogonalSuppression()
    up = torch.randn(4, 8)
    buf = torch.randn(4, 8)
    expected = rule(up, {"harm": buf.clone()})
    x = _features()
    y = GradientSurgery.apply(x, rule, {"harm": buf.clone()})
    buf.zero_()  # the documented way to reuse a buffer: pass a clone
    y.backward(up)
    torch.testing.assert_close(x.grad, expected, rtol=0, atol=0)


def test_buffer_reused_after_backward_is_fine():
    # the common micro-batch loop: fill, forward, backward, then refill
    rule, buf = OrthogonalSuppression(), torch.empty(4, 8)
    for seed in range(3):
        buf.copy_(torch.randn(4, 8, generator=torch.Generator().manual_seed(seed)))
        x, up = _features(seed=seed), torch.randn(4, 8)
        GradientSurgery.apply(x, rule, {"harm": buf}).backward(up)
        torch.testing.assert_close(x.grad, rule(up, {"harm": buf}), rtol=0, atol=0)


def test_references_are_saved_without_a_copy():
    h = torch.randn(4, 8)
    y = GradientSurgery.apply(_features(), OrthogonalSuppression(), {"harm": h})
    (saved,) = y.grad_fn.saved_tensors
    assert saved.data_ptr() == h.data_ptr() and not saved.requires_grad


def test_unused_and_diagnostics_only_references_are_not_saved():
    refs = {"harm": torch.randn(4, 8), "extra": torch.randn(4, 8)}
    stats = SurgeryStats()
    stats.extra_refs["help"] = torch.randn(4, 8)
    y = GradientSurgery.apply(_features(), OrthogonalSuppression(), refs, stats)
    assert len(y.grad_fn.saved_tensors) == 1
    refs["extra"].zero_()  # not read by the rule: no error
    y.sum().backward()
    assert set(stats.summary()) >= {"cos_harm", "cos_help"}


def test_double_backward_with_saved_references():
    rule = Compose([PriorAlignment(), OrthogonalSuppression()])
    f64 = torch.float64
    refs = {"harm": torch.randn(3, 5, dtype=f64), "help": torch.randn(3, 5, dtype=f64)}
    x = torch.randn(3, 5, dtype=f64, requires_grad=True)
    up = torch.randn(3, 5, dtype=torch.float64)
    assert torch.autograd.gradgradcheck(lambda t: GradientSurgery.apply(t, rule, refs), (x,), (up,))


# -- a rule's output ---------------------------------------------------------------------------


class ReturnsNone(SurgeryRule):
    refs = ("harm",)

    def forward(self, grad, refs):
        return None


class DropsACoordinate(SurgeryRule):
    refs = ("harm",)

    def forward(self, grad, refs):
        return grad[..., :-1]


class InFloat64(SurgeryRule):
    refs = ("harm",)

    def forward(self, grad, refs):
        return grad.double()


class AsIntegers(SurgeryRule):
    refs = ("harm",)

    def forward(self, grad, refs):
        return (grad > 0).long()


class OwnCall(SurgeryRule):
    """Overrides __call__ itself, so only GradientSurgery's own check sees its output."""

    refs = ("harm",)

    def __call__(self, grad, refs=None):
        return grad.reshape(-1)


@pytest.mark.parametrize(
    "rule, match",
    [
        (
            ReturnsNone(),
            r"ReturnsNone\.forward\(grad, refs\) returned NoneType; expected a tensor "
            r"of shape \(4, 8\), dtype torch\.float32",
        ),
        (
            DropsACoordinate(),
            r"DropsACoordinate\.forward\(grad, refs\) returned shape \(4, 7\); "
            r"expected a tensor of shape \(4, 8\)",
        ),
        (
            InFloat64(),
            r"InFloat64\.forward\(grad, refs\) returned dtype torch\.float64; expected "
            r".*dtype torch\.float32",
        ),
        (AsIntegers(), r"AsIntegers\.forward\(grad, refs\) returned dtype torch\.int64"),
    ],
    ids=["None", "shape", "float64", "int64"],
)
def test_bad_rule_output_is_refused_naming_the_rule(rule, match):
    g, refs = torch.randn(4, 8), {"harm": torch.randn(4, 8)}
    with pytest.raises(RuleOutputError, match=match):
        rule(g, refs)
    x = _features()
    y = GradientSurgery.apply(x, rule, refs)
    with pytest.raises(RuleOutputError, match=match):  # in backward: the same error
        y.sum().backward()


def test_rule_output_error_is_both_type_and_value_error():
    assert issubclass(RuleOutputError, TypeError) and issubclass(RuleOutputError, ValueError)


def test_low_precision_rules_are_checked_against_the_compute_dtype():
    # forward sees float32 for a bfloat16 gradient and must answer in float32
    g, refs = torch.randn(4, 8, dtype=torch.bfloat16), {"harm": torch.randn(4, 8)}
    assert OrthogonalSuppression()(g, refs).dtype == torch.bfloat16
    with pytest.raises(RuleOutputError, match=r"returned dtype torch\.float64.*torch\.float32"):
        InFloat64()(g, refs)


def test_rule_that_overrides_call_is_checked_in_backward():
    y = GradientSurgery.apply(_features(), OwnCall(), {"harm": torch.randn(4, 8)})
    match = r"OwnCall\.__call__\(grad, refs\) returned shape \(32,\)"
    with pytest.raises(RuleOutputError, match=match):
        y.sum().backward()


def test_broken_rule_inside_compose_is_named():
    rule = Compose([OrthogonalSuppression(), DropsACoordinate()])
    match = r"DropsACoordinate\.forward\(grad, refs\) inside Compose"
    with pytest.raises(RuleOutputError, match=match):
        rule(torch.randn(4, 8), {"harm": torch.randn(4, 8)})


def test_broken_rule_through_the_fused_path_is_named():
    rule = fuse(ReturnsNone())
    rule.compiled, rule._kernel = False, rule._eager_kernel  # the eager fallback: no compiler
    match = r"ReturnsNone\.forward\(grad, refs\) \(fused\) returned NoneType"
    with pytest.raises(RuleOutputError, match=match):
        rule(torch.randn(4, 8), {"harm": torch.randn(4, 8)})


# -- one validation of the references ------------------------------------------------------


def _normalise(message: str) -> str:
    """Drop the owner in front and the word for the target tensor."""
    message = re.sub(r"^\w+: ", "", message)
    for a, b in [
        ("the features have", "the gradient has"),
        ("the features are", "the gradient is"),
        ("features must", "grad must"),
        ("like the features", "like the gradient"),
    ]:
        message = message.replace(a, b)
    return message


@pytest.mark.parametrize(
    "refs",
    [
        {},
        {"harm": 1.0},
        {"harm": torch.ones(4, 8, dtype=torch.int64)},
        {"harm": torch.randn(4, 9)},
        {"harm": torch.randn(4, 8, device="meta")},
        [torch.randn(4, 8)],
    ],
    ids=["missing", "float", "int64", "shape", "device", "not-a-mapping"],
)
def test_gradient_surgery_and_rules_validate_references_with_one_implementation(refs):
    rule = OrthogonalSuppression()
    x = torch.randn(4, 8, requires_grad=True)
    with pytest.raises((TypeError, ValueError)) as at_apply:
        GradientSurgery.apply(x, rule, refs)
    with pytest.raises((TypeError, ValueError)) as at_rule:
        rule(x.detach(), refs)
    assert type(at_apply.value) is type(at_rule.value)
    assert str(at_apply.value).startswith("GradientSurgery: ")
    assert str(at_rule.value).startswith("OrthogonalSuppression: ")
    assert _normalise(str(at_apply.value)) == _normalise(str(at_rule.value))
