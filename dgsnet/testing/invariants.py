"""The geometric invariant checks of `dgsnet.testing`: finiteness and shape, orthogonality,
idempotence, positive homogeneity, reference-scale invariance, the sign split and the no-op on
a zero reference.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor

from ..surgery import SurgeryRule, sign_split
from .compare import (
    as_rows,
    call_rule,
    check_finite_inputs,
    compare_samples,
    finite_part,
    format_sample,
    reference_keys,
    resolve_tolerances,
    row_norms,
    rule_name,
)

__all__ = [
    "assert_finite_and_shaped",
    "assert_orthogonal",
    "assert_idempotent",
    "assert_positively_homogeneous",
    "assert_reference_scale_invariant",
    "assert_sign_split_reconstructs",
    "assert_noop_on_zero_reference",
]


def assert_finite_and_shaped(rule: SurgeryRule, grad: Tensor, refs: Mapping[str, Tensor]) -> None:
    """The rule returns a finite tensor of `grad`'s shape, dtype and device, and leaves its
    inputs unmodified (no in-place edits of `grad` or of the references).

    `grad` and `refs` must be finite.

    Args:
        rule: the rule under test.
        grad: the gradient to pass to the rule, shape `(..., D)`.
        refs: the reference gradients, `{name: tensor}` of `grad`'s shape.

    Raises:
        AssertionError: the invariant is violated (the message names the worst sample).
        ValueError: misuse of the check (a missing reference key, a bad tolerance or scale).

    Examples:
        >>> import torch
        >>> from dgsnet.surgery import PriorAlignment
        >>> g = torch.randn(2, 3, 8, dtype=torch.bfloat16)
        >>> assert_finite_and_shaped(PriorAlignment(), g, {"help": torch.randn(2, 3, 8)})
    """
    check_finite_inputs("assert_finite_and_shaped", grad, refs)
    before = grad.detach().clone()
    refs_before = {k: v.detach().clone() for k, v in refs.items() if isinstance(v, Tensor)}
    out = call_rule(rule, grad, refs, "the gradient")
    name = rule_name(rule)
    if out.dtype != grad.dtype:
        raise AssertionError(
            f"{name} returned dtype {out.dtype}, expected the gradient's {grad.dtype}"
        )
    if out.device != grad.device:
        raise AssertionError(
            f"{name} returned a tensor on {out.device}, the gradient is on {grad.device}"
        )
    finite = torch.isfinite(out)
    if not bool(finite.all()):
        rows = ~as_rows(finite.to(torch.float64)).bool().all(dim=-1)
        row = int(rows.nonzero()[0, 0])
        raise AssertionError(
            f"{name} returned {int((~finite).sum())} NaN/Inf value(s) for finite inputs "
            f"(first at {format_sample(grad.shape, row)})"
        )
    if not torch.equal(grad.detach(), before):
        dev = float((grad.detach().double() - before.double()).abs().max())
        raise AssertionError(f"{name} modified the gradient in place (max change {dev:.3e})")
    for key, old in refs_before.items():
        if not torch.equal(refs[key].detach(), old):
            dev = float((refs[key].detach().double() - old.double()).abs().max())
            raise AssertionError(
                f"{name} modified reference {key!r} in place (max change {dev:.3e})"
            )


def assert_orthogonal(
    rule: SurgeryRule,
    grad: Tensor,
    refs: Mapping[str, Tensor],
    ref: str = "harm",
    *,
    atol: float | None = None,
    rtol: float | None = None,
) -> None:
    """The result has no component along `u = max(refs[ref], 0) / ||max(refs[ref], 0)||`:
    per sample, `|<rule(grad), u>| <= atol + rtol * max(||grad||, ||rule(grad)||)`.

    Samples whose reference has no positive part are not constrained.

    Args:
        rule: the rule under test.
        grad: the gradient to pass to the rule, shape `(..., D)`.
        refs: the reference gradients, `{name: tensor}` of `grad`'s shape.
        ref: the reference whose positive part the result must be orthogonal to.
        atol: absolute tolerance; `None` picks the dtype's default (see the module doc).
        rtol: relative tolerance; `None` picks the dtype's default (see the module doc).

    Raises:
        AssertionError: the invariant is violated (the message names the worst sample).
        ValueError: misuse of the check (a missing reference key, a bad tolerance or scale).

    Examples:
        >>> import torch
        >>> from dgsnet.surgery import OrthogonalSuppression
        >>> g, harm = torch.randn(8, 32), torch.randn(8, 32)
        >>> assert_orthogonal(OrthogonalSuppression(eps=0.0), g, {"harm": harm})
    """
    if ref not in refs:
        raise ValueError(f"assert_orthogonal: refs has no key {ref!r} (keys: {sorted(refs)})")
    atol, rtol = resolve_tolerances(grad.dtype, atol, rtol)
    out = call_rule(rule, grad, refs, "the gradient")
    o = as_rows(out)
    pos = as_rows(refs[ref]).clamp_min(0)
    norm = row_norms(pos)
    u = pos / torch.where(norm > 0, norm, torch.ones_like(norm))
    comp = (o * u).sum(dim=-1, keepdim=True)
    scale = torch.maximum(row_norms(finite_part(as_rows(grad))), row_norms(finite_part(o)))
    bad_finite = ~torch.isfinite(comp)
    if bool(bad_finite.any()):
        row = int(bad_finite.nonzero()[0, 0])
        raise AssertionError(
            f"orthogonality to the positive part of refs[{ref!r}] violated by {rule_name(rule)}: "
            f"the component <out, u> is {float(comp[row, 0]):.6g} (NaN/Inf in "
            f"{int(bad_finite.sum())} sample(s)) at {format_sample(grad.shape, row)}"
        )
    tol = atol + rtol * scale
    if bool((comp.abs() <= tol).all()):
        return
    row = int((comp.abs() - tol).argmax())
    rel = comp.abs() / torch.where(scale > 0, scale, torch.ones_like(scale))
    raise AssertionError(
        f"orthogonality to the positive part of refs[{ref!r}] violated by {rule_name(rule)}: max "
        f"|<out, u>| = {float(comp.abs().max()):.3e}, max relative to max(||grad||, ||out||) = "
        f"{float(rel.max()):.3e}; worst at {format_sample(grad.shape, row)}: <out, u> = "
        f"{float(comp[row, 0]):.6g} (allowed: atol={atol:.3g} + rtol={rtol:.3g} * "
        f"{float(scale[row, 0]):.3g})"
    )


def assert_idempotent(
    rule: SurgeryRule,
    grad: Tensor,
    refs: Mapping[str, Tensor],
    *,
    atol: float | None = None,
    rtol: float | None = None,
) -> None:
    """Applying the rule twice changes nothing: `rule(rule(grad)) == rule(grad)`.

    Args:
        rule: the rule under test.
        grad: the gradient to pass to the rule, shape `(..., D)`.
        refs: the reference gradients, `{name: tensor}` of `grad`'s shape.
        atol: absolute tolerance; `None` picks the dtype's default (see the module doc).
        rtol: relative tolerance; `None` picks the dtype's default (see the module doc).

    Raises:
        AssertionError: the invariant is violated (the message names the worst sample).
        ValueError: misuse of the check (a missing reference key, a bad tolerance or scale).

    Examples:
        >>> import torch
        >>> from dgsnet.surgery import ConflictProjection
        >>> g, other = torch.randn(8, 32), torch.randn(8, 32)
        >>> assert_idempotent(ConflictProjection(), g, {"other": other})
    """
    atol, rtol = resolve_tolerances(grad.dtype, atol, rtol)
    once = call_rule(rule, grad, refs, "the gradient")
    twice = call_rule(rule, once, refs, "its own output")
    compare_samples(
        f"idempotence of {rule_name(rule)} (rule(rule(g)) vs rule(g))",
        twice,
        once,
        [grad],
        atol=atol,
        rtol=rtol,
        shape=grad.shape,
    )


def _check_scales(check: str, scales: Iterable[float]) -> list[float]:
    scales = list(scales)
    if not scales:
        raise ValueError(f"{check}: scales must not be empty")
    for c in scales:
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not c > 0 or c == float("inf"):
            raise ValueError(f"{check}: scales must be finite positive numbers, got {c!r}")
    return [float(c) for c in scales]


def assert_positively_homogeneous(
    rule: SurgeryRule,
    grad: Tensor,
    refs: Mapping[str, Tensor],
    scales: Sequence[float] = (0.5, 3.0),
    *,
    atol: float | None = None,
    rtol: float | None = None,
) -> None:
    """Scaling the gradient by `c > 0` scales the result: `rule(c g) == c rule(g)` for each
    `c` in `scales` (the references stay fixed).

    Args:
        rule: the rule under test.
        grad: the gradient to pass to the rule, shape `(..., D)`.
        refs: the reference gradients, `{name: tensor}` of `grad`'s shape.
        scales: the positive factors `c` to scale `grad` by.
        atol: absolute tolerance; `None` picks the dtype's default (see the module doc).
        rtol: relative tolerance; `None` picks the dtype's default (see the module doc).

    Raises:
        AssertionError: the invariant is violated (the message names the worst sample).
        ValueError: misuse of the check (a missing reference key, a bad tolerance or scale).

    Examples:
        >>> import torch
        >>> from dgsnet.surgery import OrthogonalSuppression
        >>> g, harm = torch.randn(8, 32), torch.randn(8, 32)
        >>> rule = OrthogonalSuppression()
        >>> assert_positively_homogeneous(rule, g, {"harm": harm}, scales=(1e-3, 7.0))
    """
    scales = _check_scales("assert_positively_homogeneous", scales)
    atol, rtol = resolve_tolerances(grad.dtype, atol, rtol)
    base = call_rule(rule, grad, refs, "the gradient")
    for c in scales:
        scaled_grad = grad * c
        out = call_rule(rule, scaled_grad, refs, f"{c:g} * the gradient")
        compare_samples(
            f"positive homogeneity of {rule_name(rule)} (rule({c:g} g) vs {c:g} rule(g))",
            out,
            base.detach().to(torch.float64) * c,
            [scaled_grad],
            atol=atol,
            rtol=rtol,
            shape=grad.shape,
        )


def assert_reference_scale_invariant(
    rule: SurgeryRule,
    grad: Tensor,
    refs: Mapping[str, Tensor],
    keys: Iterable[str] | None = None,
    scales: Sequence[float] = (1e-3, 0.5, 3.0, 1e3),
    *,
    atol: float | None = None,
    rtol: float | None = None,
) -> None:
    """Scaling the references `keys` (default: all the rule reads) by `c > 0` does not
    change the result: `rule(g, c r) == rule(g, r)`; true of rules that use only a
    reference's direction (`OrthogonalSuppression(eps=0)`, `ConflictProjection`).

    Args:
        rule: the rule under test.
        grad: the gradient to pass to the rule, shape `(..., D)`.
        refs: the reference gradients, `{name: tensor}` of `grad`'s shape.
        keys: the references to scale; `None` means all the rule reads.
        scales: the positive factors `c` to scale the references by.
        atol: absolute tolerance; `None` picks the dtype's default (see the module doc).
        rtol: relative tolerance; `None` picks the dtype's default (see the module doc).

    Raises:
        AssertionError: the invariant is violated (the message names the worst sample).
        ValueError: misuse of the check (a missing reference key, a bad tolerance or scale).

    Examples:
        >>> import torch
        >>> from dgsnet.surgery import ConflictProjection
        >>> g, other = torch.randn(8, 32), torch.randn(8, 32)
        >>> assert_reference_scale_invariant(ConflictProjection(), g, {"other": other})
    """
    scales = _check_scales("assert_reference_scale_invariant", scales)
    keys = reference_keys(rule, refs, keys)
    atol, rtol = resolve_tolerances(grad.dtype, atol, rtol)
    base = call_rule(rule, grad, refs, "the gradient")
    for c in scales:
        scaled = dict(refs)
        for k in keys:
            scaled[k] = refs[k] * c
        out = call_rule(rule, grad, scaled, f"references {keys} scaled by {c:g}")
        compare_samples(
            f"invariance of {rule_name(rule)} to scaling references {keys} by {c:g}",
            out,
            base,
            [grad],
            atol=atol,
            rtol=rtol,
            shape=grad.shape,
        )


def assert_sign_split_reconstructs(
    g: Tensor, split: Callable[[Tensor], tuple[Tensor, Tensor]] = sign_split
) -> None:
    """`g_pos, g_neg = split(g)` is the sign split of `g`: `g_pos + g_neg == g` exactly
    (NaN where `g` is NaN), `g_pos >= 0`, `g_neg <= 0`, and no coordinate is nonzero in
    both parts. Together these determine `g_pos = max(g, 0)` and `g_neg = min(g, 0)`.

    Args:
        g: the tensor to split.
        split: the function under test, returning `(g_pos, g_neg)`.

    Raises:
        AssertionError: the invariant is violated (the message names the worst sample).

    Examples:
        >>> import torch
        >>> assert_sign_split_reconstructs(torch.tensor([1.5, -2.0, 0.0, float("inf")]))
    """
    if not isinstance(g, Tensor):
        raise TypeError(
            f"assert_sign_split_reconstructs: g must be a tensor, got {type(g).__name__}"
        )
    name = getattr(split, "__name__", repr(split))
    parts = split(g)
    if not (isinstance(parts, (tuple, list)) and len(parts) == 2):
        raise AssertionError(
            f"{name} must return a pair (g_pos, g_neg), got {type(parts).__name__}"
        )
    pos, neg = parts
    for label, part in (("g_pos", pos), ("g_neg", neg)):
        if not isinstance(part, Tensor):
            raise AssertionError(f"{name}: {label} is {type(part).__name__}, not a tensor")
        if part.shape != g.shape or part.dtype != g.dtype:
            raise AssertionError(
                f"{name}: {label} has shape {tuple(part.shape)} and dtype {part.dtype}, expected "
                f"{tuple(g.shape)} and {g.dtype}"
            )
    nan = torch.isnan(g) if g.is_floating_point() else torch.zeros_like(g, dtype=torch.bool)
    recon = pos + neg
    wrong = ~((recon == g) | (torch.isnan(recon) & nan))
    if bool(wrong.any()):
        diff = (recon.double() - g.double()).abs()[wrong]
        n_nan = int(torch.isnan(diff).sum())
        worst = "nan" if n_nan else f"{float(diff.max()):.3e}"
        nan_note = f", {n_nan} of them NaN where g is not" if n_nan else ""
        first = tuple(int(i) for i in wrong.nonzero()[0])
        raise AssertionError(
            f"sign split {name} does not reconstruct g: {int(wrong.sum())} coordinate(s) with "
            f"g_pos + g_neg != g{nan_note}, max |g_pos + g_neg - g| = {worst} (first at "
            f"index {first})"
        )
    for label, part in (("g_pos", pos), ("g_neg", neg)):
        stray = torch.isnan(part) & ~nan if part.is_floating_point() else None
        if stray is not None and bool(stray.any()):
            first = tuple(int(i) for i in stray.nonzero()[0])
            raise AssertionError(
                f"sign split {name}: {label} is NaN in {int(stray.sum())} coordinate(s) where g "
                f"is not (first at index {first})"
            )
    neg_pos = pos < 0
    if bool(neg_pos.any()):
        raise AssertionError(
            f"sign split {name}: g_pos has {int(neg_pos.sum())} negative coordinate(s), min "
            f"{float(pos[neg_pos].min()):.3e}"
        )
    pos_neg = neg > 0
    if bool(pos_neg.any()):
        raise AssertionError(
            f"sign split {name}: g_neg has {int(pos_neg.sum())} positive coordinate(s), max "
            f"{float(neg[pos_neg].max()):.3e}"
        )
    both = (pos != 0) & (neg != 0) & ~nan
    if bool(both.any()):
        first = tuple(int(i) for i in both.nonzero()[0])
        raise AssertionError(
            f"sign split {name}: supports overlap in {int(both.sum())} coordinate(s) (first at "
            f"index {first}: g_pos={float(pos[first]):.6g}, g_neg={float(neg[first]):.6g})"
        )


def assert_noop_on_zero_reference(
    rule: SurgeryRule,
    grad: Tensor,
    refs: Mapping[str, Tensor],
    keys: Iterable[str] | None = None,
    *,
    atol: float | None = None,
    rtol: float | None = None,
) -> None:
    """With the references `keys` (default: all the rule reads) set to zero, the rule returns
    `grad` unchanged and produces no NaN. Pass `atol=0, rtol=0` to demand bit equality.

    Args:
        rule: the rule under test.
        grad: the gradient to pass to the rule, shape `(..., D)`.
        refs: the reference gradients, `{name: tensor}` of `grad`'s shape.
        keys: the references to set to zero; `None` means all the rule reads.
        atol: absolute tolerance; `None` picks the dtype's default (see the module doc).
        rtol: relative tolerance; `None` picks the dtype's default (see the module doc).

    Raises:
        AssertionError: the invariant is violated (the message names the worst sample).
        ValueError: misuse of the check (a missing reference key, a bad tolerance or scale).

    Examples:
        >>> import torch
        >>> from dgsnet.surgery import OrthogonalSuppression
        >>> g = torch.randn(8, 32)
        >>> rule = OrthogonalSuppression(eps=0.0)
        >>> assert_noop_on_zero_reference(rule, g, {"harm": g}, atol=0, rtol=0)
    """
    keys = reference_keys(rule, refs, keys)
    atol, rtol = resolve_tolerances(grad.dtype, atol, rtol)
    zeroed = dict(refs)
    for k in keys:
        zeroed[k] = torch.zeros_like(refs[k])
    out = call_rule(rule, grad, zeroed, f"zero references {keys}")
    compare_samples(
        f"no-op of {rule_name(rule)} on zero references {keys} (rule(g) vs g)",
        out,
        grad,
        [grad],
        atol=atol,
        rtol=rtol,
        shape=grad.shape,
    )
