"""Compose: Compose([a, b])(g) == b(a(g)); order matters; both DGS-Net orders.

With A = PriorAlignment (adds a = w s min(r_help, 0)) and P = OrthogonalSuppression(eps=0)
(projects out u), the two orders differ by exactly

    Compose([A, P])(g) - Compose([P, A])(g) = P(g + a) - (P g + a) = -<a, u> u,

which is zero only when the beneficial direction has no component along the harmful one.
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dgsnet.surgery import (
    Compose,
    ConflictProjection,
    OrthogonalSuppression,
    PriorAlignment,
    SurgeryRule,
)
from dgsnet.testing import (
    assert_finite_and_shaped,
    assert_noop_on_zero_reference,
    assert_orthogonal,
)

SURGERY = settings(settings.get_profile("dgsnet-surgery"))
LOW = (torch.float16, torch.bfloat16)

ATOMS = [
    OrthogonalSuppression(),
    OrthogonalSuppression(eps=0.0),
    OrthogonalSuppression(eps=0.0, conflict_only=True),
    PriorAlignment(),
    PriorAlignment(weight=1.0, scale="invariant"),
    ConflictProjection(),
]
REFERENCE_ORDER = Compose([PriorAlignment(), OrthogonalSuppression()])
PAPER_ORDER = Compose([OrthogonalSuppression(), PriorAlignment()])


@SURGERY
@given(data=st.data(), rules=st.lists(st.sampled_from(ATOMS), min_size=0, max_size=4))
def test_compose_is_sequential_application(data, cases, rules):
    case = data.draw(cases(dtypes=(torch.float32, torch.float64)))
    g, refs = case.grad, case.refs
    out = Compose(rules)(g, refs)
    expected = g
    for rule in rules:
        expected = rule(expected, refs)
    # float32/float64 compute in their own dtype: the same ops, bit for bit
    assert torch.equal(out, expected)
    assert_finite_and_shaped(Compose(rules), g, refs)


@SURGERY
@given(data=st.data(), rules=st.lists(st.sampled_from(ATOMS), min_size=1, max_size=3))
def test_low_precision_rounds_once(data, cases, close_rows, tol_for, rules):
    """float16/bfloat16 run the whole chain in float32 and round once at the end."""
    case = data.draw(cases(dtypes=LOW))
    g, refs = case.grad, case.refs
    out = Compose(rules)(g, refs)
    assert out.dtype == g.dtype
    expected = g.float()
    for rule in rules:
        expected = rule(expected, {k: v.float() for k, v in refs.items()})
    assert torch.equal(out, expected.to(g.dtype))
    stepwise = g
    for rule in rules:
        stepwise = rule(stepwise, refs)
    close_rows(out, stepwise, g, rtol=len(rules) * tol_for(g.dtype))


@SURGERY
@given(data=st.data(), scale=st.sampled_from(["reference", "invariant"]))
def test_the_two_dgs_orders_differ_by_the_aligned_component(
    data, cases, close_rows, tol_for, scale
):
    case = data.draw(cases(dtypes=(torch.float32, torch.float64)))
    g, refs = case.grad, case.refs
    align = PriorAlignment(weight=0.7, scale=scale)
    project = OrthogonalSuppression(eps=0.0)
    ref_order = Compose([align, project])(g, refs)
    paper_order = Compose([project, align])(g, refs)
    a = align(torch.zeros_like(g), refs).double()
    pos = refs["harm"].double().clamp_min(0)
    n = torch.linalg.vector_norm(pos, dim=-1, keepdim=True)
    u = torch.where(n > 0, pos / n, torch.zeros_like(pos))
    expected_diff = -(a * u).sum(-1, keepdim=True) * u
    close_rows(
        ref_order.double() - paper_order.double(),
        expected_diff,
        torch.maximum(g.double().abs(), a.abs()),
        rtol=10 * tol_for(g.dtype),
    )
    # the reference order's result is orthogonal to u; both are no-ops for zero references
    assert_orthogonal(Compose([align, project]), g, refs)
    for rule in (Compose([align, project]), Compose([project, align])):
        assert_noop_on_zero_reference(rule, g, refs, atol=0, rtol=0)


def test_order_matters_example():
    g = torch.tensor([[1.0, 2.0]])
    refs = {"harm": torch.tensor([[1.0, 0.0]]), "help": torch.tensor([[-1.0, -1.0]])}
    align = PriorAlignment(weight=1.0, scale="invariant")
    project = OrthogonalSuppression(eps=0.0)
    # align then project: (0, 1) -> (0, 1); project then align: (0, 2) + (-1, -1)
    assert torch.equal(Compose([align, project])(g, refs), torch.tensor([[0.0, 1.0]]))
    assert torch.equal(Compose([project, align])(g, refs), torch.tensor([[-1.0, 1.0]]))
    with pytest.raises(AssertionError, match="orthogonality"):
        assert_orthogonal(Compose([project, align]), g, refs)


def test_reference_order_is_the_released_code():
    """The released code adds 0.2 * mean_b <f_b, min(r_b, 0)> to the loss and projects the
    total feature gradient with eps = 1e-6: reproduce that with autograd and compare."""
    torch.manual_seed(0)
    b, d = 6, 10
    f = torch.randn(b, d, dtype=torch.float64, requires_grad=True)
    w = torch.randn(d, dtype=torch.float64)
    y = torch.randint(0, 2, (b,), dtype=torch.float64)
    harm = torch.randn(b, d, dtype=torch.float64)
    help_ = torch.randn(b, d, dtype=torch.float64)

    def task_loss(feat):
        return torch.nn.functional.binary_cross_entropy_with_logits(feat @ w, y)

    # the released code: a hook projecting the total gradient of task + 0.2 * L_help
    pos = harm.clamp_min(0)
    u = pos / (pos.norm(dim=-1, keepdim=True) + 1e-6)
    f_hooked = f.clone()
    f_hooked.register_hook(lambda g: g - (g * u).sum(-1, keepdim=True) * u)
    loss = task_loss(f_hooked) + 0.2 * (f_hooked * help_.clamp_max(0)).sum(-1).mean()
    (expected,) = torch.autograd.grad(loss, f)

    (g_task,) = torch.autograd.grad(task_loss(f), f)
    out = REFERENCE_ORDER(g_task, {"harm": harm, "help": help_})
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-15)


def test_refs_are_the_ordered_union():
    assert REFERENCE_ORDER.refs == ("help", "harm")
    assert PAPER_ORDER.refs == ("harm", "help")
    assert Compose(
        [OrthogonalSuppression(), OrthogonalSuppression(eps=0.0), ConflictProjection()]
    ).refs == (
        "harm",
        "other",
    )
    assert Compose([]).refs == ()


def test_empty_and_nested():
    g = torch.randn(3, 4)
    assert torch.equal(Compose([])(g), g)
    refs = {k: torch.randn(3, 4) for k in ("harm", "help", "other")}
    nested = Compose(
        [Compose([PriorAlignment()]), Compose([OrthogonalSuppression(), ConflictProjection()])]
    )
    flat = Compose([PriorAlignment(), OrthogonalSuppression(), ConflictProjection()])
    assert torch.equal(nested(g, refs), flat(g, refs))
    assert nested.refs == ("help", "harm", "other")


def test_missing_reference_of_a_member():
    with pytest.raises(ValueError, match=r"missing reference gradient\(s\) \['harm'\]"):
        REFERENCE_ORDER(torch.randn(2, 3), {"help": torch.randn(2, 3)})


def test_validation_covers_every_member_reference():
    bad = torch.randn(2, 3)
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"Compose: reference gradient\(s\) \['harm'\]"):
        REFERENCE_ORDER(torch.randn(2, 3), {"help": torch.randn(2, 3), "harm": bad})
    with pytest.raises(ValueError, match=r"'help' has shape \(2, 4\)"):
        REFERENCE_ORDER(torch.randn(2, 3), {"help": torch.randn(2, 4), "harm": torch.randn(2, 3)})


@pytest.mark.parametrize(
    "arg, match",
    [
        (OrthogonalSuppression(), "sequence of rules"),
        ("rules", "item 0 must be a SurgeryRule, got str"),
        (None, "sequence of rules"),
        ([OrthogonalSuppression(), "x"], "item 1 must be a SurgeryRule"),
        ([lambda g, r: g], "item 0 must be a SurgeryRule"),
    ],
)
def test_bad_constructor_arguments(arg, match):
    with pytest.raises(TypeError, match=match):
        Compose(arg)


def test_repr_equality_hash():
    assert repr(REFERENCE_ORDER) == (
        "Compose([PriorAlignment(weight=0.2, scale='reference', ref='help'), "
        "OrthogonalSuppression(eps=1e-06, conflict_only=False, ref='harm')])"
    )
    assert REFERENCE_ORDER == Compose([PriorAlignment(), OrthogonalSuppression()])
    assert REFERENCE_ORDER != PAPER_ORDER
    assert hash(REFERENCE_ORDER) == hash(Compose([PriorAlignment(), OrthogonalSuppression()]))
    assert isinstance(REFERENCE_ORDER, SurgeryRule)
