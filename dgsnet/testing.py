"""Invariant checks for gradient-surgery rules, to call from your own unit tests.

Each `assert_*` function runs a rule (a `SurgeryRule`) on the inputs you
give it, measures how far the result is from one invariant, and raises `AssertionError`
naming the invariant, the worst sample and the deviation (absolute, and relative to the
sample's norm) when the deviation exceeds the tolerance. Misuse of a check itself (a reference
key that is not there, a non-positive scale) raises `ValueError`.

Tolerances are per sample (a sample is one vector over the last dimension):

```text
|actual - expected| <= atol + rtol * scale
```

elementwise, where `scale` is the larger of the sample's L2 norm in the input gradient and
in the expected result (so that a result which cancels to almost nothing is still judged
against the size of what went in). `atol=None` / `rtol=None` pick a default from the
gradient's dtype:

| dtype    | rtol   | atol   |
|----------|--------|--------|
| float64  | 1e-11  | 1e-300 |
| float32  | 1e-5   | 1e-37  |
| float16  | 4e-3   | 1e-7   |
| bfloat16 | 3.2e-2 | 1e-37  |

Low-precision rules compute in float32 and round once on the way out, which the float16 and
bfloat16 defaults allow for (about four units in the last place).

Examples:
    >>> import torch
    >>> from dgsnet.surgery import OrthogonalSuppression
    >>> from dgsnet.testing import assert_idempotent, assert_orthogonal
    >>> g, harm = torch.randn(4, 16, dtype=torch.float64), torch.randn(4, 16, dtype=torch.float64)
    >>> assert_orthogonal(OrthogonalSuppression(eps=0.0), g, {"harm": harm})
    >>> assert_idempotent(OrthogonalSuppression(eps=0.0), g, {"harm": harm})
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor

from .surgery import GradientSurgery, RuleOutputError, SurgeryRule, drop_nonfinite, fuse, sign_split
from .surgery.fused import FusedRule

__all__ = [
    "assert_finite_and_shaped",
    "assert_orthogonal",
    "assert_idempotent",
    "assert_positively_homogeneous",
    "assert_reference_scale_invariant",
    "assert_sign_split_reconstructs",
    "assert_noop_on_zero_reference",
    "assert_gradcheck",
    "assert_fused_matches_eager",
    "assert_surgery_backward_applies_rule",
    "default_tolerances",
]

_DEFAULT_TOLS: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-11, 1e-300),
    torch.float32: (1e-5, 1e-37),
    torch.float16: (4e-3, 1e-7),
    torch.bfloat16: (3.2e-2, 1e-37),
}


def default_tolerances(dtype: torch.dtype) -> tuple[float, float]:
    """`(rtol, atol)` used by the checks for a gradient of `dtype` (see the module doc).

    Args:
        dtype: the gradient's floating-point dtype.

    Returns:
        `(rtol, atol)`: the table's values, or `(4 * eps, tiny)` of a dtype not listed.

    Raises:
        ValueError: `dtype` is not a floating-point type.
    """
    if dtype in _DEFAULT_TOLS:
        return _DEFAULT_TOLS[dtype]
    if not dtype.is_floating_point:
        raise ValueError(f"no default tolerance for non-floating dtype {dtype}")
    eps = torch.finfo(dtype).eps
    return 4 * eps, torch.finfo(dtype).tiny


def _tols(dtype: torch.dtype, atol: float | None, rtol: float | None) -> tuple[float, float]:
    d_rtol, d_atol = default_tolerances(dtype)
    atol = d_atol if atol is None else _check_tol("atol", atol)
    rtol = d_rtol if rtol is None else _check_tol("rtol", rtol)
    return atol, rtol


def _check_tol(name: str, value: object) -> float:
    """A tolerance must be a finite number >= 0: a NaN tolerance would fail every comparison
    (`x <= nan` is false) and an infinite one pass every comparison."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return v


# -- helpers -----------------------------------------------------------------------------------


def _name(rule: object) -> str:
    try:
        return repr(rule)
    except Exception:  # a broken __repr__ must not hide the real failure
        return type(rule).__name__


def _call(rule: SurgeryRule, grad: Tensor, refs: Mapping[str, Tensor], what: str) -> Tensor:
    """Run the rule and check that it returned a tensor of the gradient's shape. A rule output
    that the rule API itself refuses (`RuleOutputError`) is a failure of
    the rule, reported as `AssertionError`."""
    try:
        out = rule(grad, refs)
    except RuleOutputError as exc:
        raise AssertionError(f"{exc} (for {what})") from exc
    if not isinstance(out, Tensor):
        raise AssertionError(
            f"{_name(rule)} returned {type(out).__name__} for {what}, expected a torch.Tensor"
        )
    if out.shape != grad.shape:
        raise AssertionError(
            f"{_name(rule)} returned shape {tuple(out.shape)} for {what}, expected the "
            f"gradient's shape {tuple(grad.shape)}"
        )
    return out


def _rows(t: Tensor) -> Tensor:
    """View `t` as `(samples, D)` in float64 (a 1-D tensor is one sample)."""
    t = t.detach().to(torch.float64)
    return t.reshape(1, -1) if t.dim() == 1 else t.reshape(-1, t.shape[-1])


def _row_norm(t: Tensor) -> Tensor:
    """Per-sample L2 norm of a `(samples, D)` float64 tensor, without under/overflow."""
    if t.shape[-1] == 0:
        return torch.zeros(t.shape[0], 1, dtype=t.dtype, device=t.device)
    m = t.abs().amax(dim=-1, keepdim=True)
    m = torch.where(torch.isfinite(m) & (m > 0), m, torch.ones_like(m))
    return m * torch.linalg.vector_norm(t / m, dim=-1, keepdim=True)


def _sample_index(shape: Sequence[int], flat_row: int) -> tuple[int, ...]:
    lead = tuple(shape[:-1])
    if not lead:
        return ()
    idx = []
    for size in reversed(lead):
        idx.append(flat_row % size)
        flat_row //= size
    return tuple(reversed(idx))


def _fmt_sample(shape: Sequence[int], flat_row: int) -> str:
    idx = _sample_index(shape, flat_row)
    return "the only sample" if not idx else f"sample {idx}"


def _finite_part(t: Tensor) -> Tensor:
    """`t` with NaN and infinities replaced by 0: what a scale is measured on."""
    return torch.nan_to_num(t, nan=0.0, posinf=0.0, neginf=0.0)


def _nonfinite_rows(tensors: Iterable[Tensor]) -> Tensor | None:
    """Per sample (`(samples, 1)`): does any of `tensors` hold a NaN/Inf there?"""
    rows: Tensor | None = None
    for t in tensors:
        r = ~torch.isfinite(_rows(t)).all(dim=-1, keepdim=True)
        rows = r if rows is None else rows | r
    return rows


def _compare(
    invariant: str,
    actual: Tensor,
    expected: Tensor,
    scale_from: Iterable[Tensor],
    *,
    atol: float,
    rtol: float,
    shape: Sequence[int],
    note: str = "",
) -> None:
    """Per-sample `|actual - expected| <= atol + rtol * scale`; `AssertionError` otherwise.

    `scale` is the largest per-sample L2 norm among `expected` and `scale_from` (the
    inputs), measured on their finite entries. NaN and infinities are judged first, and
    reported as such (never as a deviation of 0 or a bound of NaN):

    * in a sample whose inputs are finite, any NaN/Inf in the result or the expected value
      fails (the rule produced it), even the same value on both sides;
    * in a sample whose inputs hold a NaN/Inf themselves, entries that are NaN/Inf on either
      side are not judged (a per-sample rule spreads an input NaN over its sample); the finite
      entries of that sample are still compared.
    """
    inputs = list(scale_from)
    a, e = _rows(actual), _rows(expected)
    scale = _row_norm(_finite_part(e))
    for t in inputs:
        scale = torch.maximum(scale, _row_norm(_finite_part(_rows(t))))
    suffix = f" {note}" if note else ""

    special_a, special_e = ~torch.isfinite(a), ~torch.isfinite(e)
    bad_inputs = _nonfinite_rows(inputs)
    finite_inputs = torch.ones_like(scale, dtype=torch.bool) if bad_inputs is None else ~bad_inputs
    special = special_a | special_e
    wrong = special & finite_inputs
    if bool(wrong.any()):
        flat = int(wrong.reshape(-1).nonzero()[0, 0])
        row, col = divmod(flat, max(a.shape[-1], 1))
        n = int(wrong.sum())
        got, exp = float(a[row, col]), float(e[row, col])
        if math.isnan(got) != math.isnan(exp) or (math.isinf(got) != math.isinf(exp)):
            what = (
                "where a finite value was expected"
                if math.isfinite(exp)
                else ("where the expected value is NaN/Inf")
            )
        else:
            what = "on both sides, for finite inputs"
        raise AssertionError(
            f"{invariant}: {n} entr{'y' if n == 1 else 'ies'} NaN/Inf {what}; max abs deviation "
            f"nan; first at {_fmt_sample(shape, row)}, coordinate {col}: got {got:.6g}, "
            f"expected {exp:.6g}.{suffix}"
        )
    dev = torch.where(special, torch.zeros_like(a), (a - e).abs())  # finite everywhere
    tol = atol + rtol * scale
    if bool((dev <= tol).all()):
        return
    excess = dev - tol
    flat = int(excess.argmax())
    row, col = divmod(flat, max(a.shape[-1], 1))
    rel = dev / torch.where(scale > 0, scale, torch.ones_like(scale))
    raise AssertionError(
        f"{invariant}: max abs deviation {float(dev.max()):.3e}, max deviation relative to the "
        f"sample's norm {float(rel.max()):.3e}; worst entry at {_fmt_sample(shape, row)}, "
        f"coordinate {col}: got {float(a[row, col]):.6g}, expected {float(e[row, col]):.6g} "
        f"(allowed: atol={atol:.3g} + rtol={rtol:.3g} * norm {float(scale[row, 0]):.3g}).{suffix}"
    )


def _check_finite_inputs(check: str, grad: Tensor, refs: Mapping[str, Tensor]) -> None:
    if not isinstance(grad, Tensor):
        raise TypeError(f"{check}: grad must be a torch.Tensor, got {type(grad).__name__}")
    if not bool(torch.isfinite(grad).all()):
        raise ValueError(f"{check}: grad holds NaN/Inf; the check needs finite inputs")
    for key, ref in refs.items():
        if (
            isinstance(ref, Tensor)
            and ref.is_floating_point()
            and not bool(torch.isfinite(ref).all())
        ):
            raise ValueError(
                f"{check}: reference {key!r} holds NaN/Inf; the check needs finite inputs"
            )


def _ref_keys(
    rule: SurgeryRule, refs: Mapping[str, Tensor], keys: Iterable[str] | None
) -> list[str]:
    if keys is None:
        names = list(getattr(rule, "refs", ()) or ())
        return [k for k in names if k in refs] or [
            k for k, v in refs.items() if isinstance(v, Tensor)
        ]
    keys = [keys] if isinstance(keys, str) else list(keys)
    missing = [k for k in keys if k not in refs]
    if missing:
        raise ValueError(f"keys {missing} are not in refs (which has {sorted(refs)})")
    return keys


# -- the checks --------------------------------------------------------------------------------


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
    _check_finite_inputs("assert_finite_and_shaped", grad, refs)
    before = grad.detach().clone()
    refs_before = {k: v.detach().clone() for k, v in refs.items() if isinstance(v, Tensor)}
    out = _call(rule, grad, refs, "the gradient")
    name = _name(rule)
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
        rows = ~_rows(finite.to(torch.float64)).bool().all(dim=-1)
        row = int(rows.nonzero()[0, 0])
        raise AssertionError(
            f"{name} returned {int((~finite).sum())} NaN/Inf value(s) for finite inputs "
            f"(first at {_fmt_sample(grad.shape, row)})"
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
    atol, rtol = _tols(grad.dtype, atol, rtol)
    out = _call(rule, grad, refs, "the gradient")
    o = _rows(out)
    pos = _rows(refs[ref]).clamp_min(0)
    norm = _row_norm(pos)
    u = pos / torch.where(norm > 0, norm, torch.ones_like(norm))
    comp = (o * u).sum(dim=-1, keepdim=True)
    scale = torch.maximum(_row_norm(_finite_part(_rows(grad))), _row_norm(_finite_part(o)))
    bad_finite = ~torch.isfinite(comp)
    if bool(bad_finite.any()):
        row = int(bad_finite.nonzero()[0, 0])
        raise AssertionError(
            f"orthogonality to the positive part of refs[{ref!r}] violated by {_name(rule)}: the "
            f"component <out, u> is {float(comp[row, 0]):.6g} (NaN/Inf in "
            f"{int(bad_finite.sum())} sample(s)) at {_fmt_sample(grad.shape, row)}"
        )
    tol = atol + rtol * scale
    if bool((comp.abs() <= tol).all()):
        return
    row = int((comp.abs() - tol).argmax())
    rel = comp.abs() / torch.where(scale > 0, scale, torch.ones_like(scale))
    raise AssertionError(
        f"orthogonality to the positive part of refs[{ref!r}] violated by {_name(rule)}: max "
        f"|<out, u>| = {float(comp.abs().max()):.3e}, max relative to max(||grad||, ||out||) = "
        f"{float(rel.max()):.3e}; worst at {_fmt_sample(grad.shape, row)}: <out, u> = "
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
    atol, rtol = _tols(grad.dtype, atol, rtol)
    once = _call(rule, grad, refs, "the gradient")
    twice = _call(rule, once, refs, "its own output")
    _compare(
        f"idempotence of {_name(rule)} (rule(rule(g)) vs rule(g))",
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
    atol, rtol = _tols(grad.dtype, atol, rtol)
    base = _call(rule, grad, refs, "the gradient")
    for c in scales:
        scaled_grad = grad * c
        out = _call(rule, scaled_grad, refs, f"{c:g} * the gradient")
        _compare(
            f"positive homogeneity of {_name(rule)} (rule({c:g} g) vs {c:g} rule(g))",
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
    keys = _ref_keys(rule, refs, keys)
    atol, rtol = _tols(grad.dtype, atol, rtol)
    base = _call(rule, grad, refs, "the gradient")
    for c in scales:
        scaled = dict(refs)
        for k in keys:
            scaled[k] = refs[k] * c
        out = _call(rule, grad, scaled, f"references {keys} scaled by {c:g}")
        _compare(
            f"invariance of {_name(rule)} to scaling references {keys} by {c:g}",
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
    keys = _ref_keys(rule, refs, keys)
    atol, rtol = _tols(grad.dtype, atol, rtol)
    zeroed = dict(refs)
    for k in keys:
        zeroed[k] = torch.zeros_like(refs[k])
    out = _call(rule, grad, zeroed, f"zero references {keys}")
    _compare(
        f"no-op of {_name(rule)} on zero references {keys} (rule(g) vs g)",
        out,
        grad,
        [grad],
        atol=atol,
        rtol=rtol,
        shape=grad.shape,
    )


def _max_or_zero(t: Tensor) -> float:
    """`max(t)` as a float (NaN when `t` holds one), 0 for an empty tensor."""
    return float(t.max()) if t.numel() else 0.0


def _numerical_jacobians(
    f: Callable[..., Tensor], inputs: Sequence[Tensor], eps: float
) -> list[Tensor]:
    out_numel = f(*inputs).numel()
    jacs = []
    for i, x in enumerate(inputs):
        jac = torch.zeros(out_numel, x.numel(), dtype=torch.float64)
        flat = x.detach().reshape(-1)
        for j in range(x.numel()):
            args_p = [t.detach() for t in inputs]
            args_m = [t.detach() for t in inputs]
            xp, xm = flat.clone(), flat.clone()
            xp[j] += eps
            xm[j] -= eps
            args_p[i], args_m[i] = xp.reshape(x.shape), xm.reshape(x.shape)
            with torch.no_grad():
                jac[:, j] = ((f(*args_p) - f(*args_m)) / (2 * eps)).reshape(-1).double()
        jacs.append(jac)
    return jacs


def _analytical_jacobians(f: Callable[..., Tensor], inputs: Sequence[Tensor]) -> list[Tensor]:
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    out = f(*leaves)
    rows: list[list[Tensor]] = [[] for _ in leaves]
    flat = out.reshape(-1)
    for k in range(flat.numel()):
        if not flat.requires_grad:
            grads: Sequence[Tensor | None] = [None] * len(leaves)
        else:
            grads = torch.autograd.grad(flat[k], leaves, retain_graph=True, allow_unused=True)
        for i, (leaf, gr) in enumerate(zip(leaves, grads, strict=True)):
            rows[i].append(
                torch.zeros(leaf.numel(), dtype=torch.float64)
                if gr is None
                else gr.reshape(-1).double()
            )
    return [
        torch.stack(r) if r else torch.zeros(0, leaf.numel())
        for r, leaf in zip(rows, leaves, strict=True)
    ]


def assert_gradcheck(
    rule: SurgeryRule,
    grad: Tensor,
    refs: Mapping[str, Tensor],
    *,
    wrt_refs: bool = True,
    eps: float = 1e-6,
    atol: float = 1e-5,
    rtol: float = 1e-3,
    fast_mode: bool = False,
) -> None:
    """`torch.autograd.gradcheck` of the rule in float64, as a function of `grad` (through
    the full `rule(grad, refs)` call) and, with `wrt_refs=True`, of the references the rule
    reads (through `rule.forward`, since calling a rule detaches its references).

    Failure raises `AssertionError` with the largest analytical-vs-numerical Jacobian
    deviation. Use small inputs (the Jacobian has `numel(grad)**2` entries) away from the
    rule's kinks (a coordinate or inner product within `eps` of zero).

    Args:
        rule: the rule under test.
        grad: the gradient to pass to the rule, shape `(..., D)`.
        refs: the reference gradients, `{name: tensor}` of `grad`'s shape.
        wrt_refs: also check the Jacobian with respect to the references.
        eps: the finite-difference step.
        atol: absolute tolerance of `torch.autograd.gradcheck`.
        rtol: relative tolerance of `torch.autograd.gradcheck`.
        fast_mode: `gradcheck`'s fast mode (a random projection of the Jacobian).

    Raises:
        AssertionError: the invariant is violated (the message names the worst sample).
        ValueError: misuse of the check (a missing reference key, a bad tolerance or scale).

    Examples:
        >>> import torch
        >>> from dgsnet.surgery import OrthogonalSuppression
        >>> g, harm = torch.randn(2, 5), torch.randn(2, 5)
        >>> assert_gradcheck(OrthogonalSuppression(), g, {"harm": harm})
    """
    name = _name(rule)
    eps = _check_tol("eps", eps)
    atol, rtol = _check_tol("atol", atol), _check_tol("rtol", rtol)
    if eps == 0:
        raise ValueError("eps must be > 0 for finite differences, got 0")
    g64 = grad.detach().to(torch.float64).clone().requires_grad_(True)
    refs64: dict[str, Tensor] = {
        k: (v.detach().to(torch.float64).clone() if isinstance(v, Tensor) else v)
        for k, v in refs.items()
    }
    keys = [k for k in (getattr(rule, "refs", ()) or ()) if k in refs64] if wrt_refs else []

    def of_grad(g: Tensor) -> Tensor:
        return rule(g, refs64)

    checks: list[tuple[str, Callable[..., Tensor], list[Tensor], list[str]]] = [
        ("grad", of_grad, [g64], ["grad"])
    ]
    if keys:
        rule.prepare(g64.detach(), refs64)  # validation only; forward gets the live tensors

        def of_all(g: Tensor, *rs: Tensor) -> Tensor:
            return rule.forward(g, dict(zip(keys, rs, strict=True)))

        leaves = [g64] + [refs64[k].clone().requires_grad_(True) for k in keys]
        checks.append((f"grad and references {keys}", of_all, leaves, ["grad"] + keys))

    for label, f, inputs, names in checks:
        try:
            ok = torch.autograd.gradcheck(
                f,
                tuple(inputs),
                eps=eps,
                atol=atol,
                rtol=rtol,
                raise_exception=True,
                fast_mode=fast_mode,
            )
            error = ""
        except (RuntimeError, ValueError) as exc:  # GradcheckError is a RuntimeError
            ok, error = (
                False,
                str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__,
            )
        if ok:
            continue
        detail = ""
        try:
            numeric = _numerical_jacobians(f, inputs, eps)
            analytic = _analytical_jacobians(f, inputs)
            devs = [_max_or_zero((n - an).abs()) for n, an in zip(numeric, analytic, strict=True)]
            # NaN ranks above every number (max() with a NaN key keeps whatever came first)
            ranks = [math.inf if math.isnan(d) else d for d in devs]
            worst = max(range(len(devs)), key=ranks.__getitem__)
            top = devs[worst]
            ref_size = _max_or_zero(numeric[worst].abs())
            rel = top / ref_size if ref_size > 0 else (math.nan if math.isnan(top) else top)
            detail = (
                f"; max |analytical - numerical| Jacobian entry = {top:.3e} "
                f"(relative {rel:.3e}) w.r.t. {names[worst]!r}"
            )
        except Exception as exc:  # the deviation is a courtesy; never mask the failure
            detail = f"; could not compute the deviation ({type(exc).__name__}: {exc})"
        raise AssertionError(
            f"gradcheck of {name} w.r.t. {label} failed (float64, eps={eps:g}, atol={atol:g}, "
            f"rtol={rtol:g}){detail}. gradcheck said: {error}"
        )


def assert_fused_matches_eager(
    rule: SurgeryRule,
    grad: Tensor,
    refs: Mapping[str, Tensor],
    atol: float = 1e-6,
    *,
    rtol: float | None = None,
) -> None:
    """`fuse(rule)(grad, refs)` equals `rule(grad, refs)`: same dtype and shape, and per
    sample `|fused - eager| <= atol + rtol * scale` (`rtol` defaults to 1e-6 for float32 and
    float64 and to one unit in the last place for float16/bfloat16, where both paths round the
    float32 result once). When `torch.compile` is unavailable the fused rule falls back to
    eager with a warning; the comparison still runs (and then trivially holds).

    Args:
        rule: the rule under test.
        grad: the gradient to pass to the rule, shape `(..., D)`.
        refs: the reference gradients, `{name: tensor}` of `grad`'s shape.
        atol: absolute tolerance per sample.
        rtol: relative tolerance; `None` picks the default described above.

    Raises:
        AssertionError: the invariant is violated (the message names the worst sample).
        ValueError: misuse of the check (a missing reference key, a bad tolerance or scale).

    Examples:
        >>> import torch
        >>> from dgsnet.surgery import OrthogonalSuppression
        >>> g, harm = torch.randn(4, 8), torch.randn(4, 8)
        >>> assert_fused_matches_eager(OrthogonalSuppression(), g, {"harm": harm})  # doctest: +SKIP
    """
    eager = rule.rule if isinstance(rule, FusedRule) else rule
    atol = _check_tol("atol", atol)
    if rtol is None:
        rtol = max(1e-6, torch.finfo(grad.dtype).eps) if grad.is_floating_point() else 1e-6
    rtol = _check_tol("rtol", rtol)
    fused = fuse(eager)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out_f = _call(fused, grad, refs, "the gradient (fused)")
    for w in caught:  # recorded for the failure message, and passed on to the caller
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    out_e = _call(eager, grad, refs, "the gradient (eager)")
    fallback = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    note = f"(torch.compile fell back to eager: {fallback[0]})" if fallback else ""
    if out_f.dtype != out_e.dtype:
        raise AssertionError(
            f"fuse({_name(eager)}) returned dtype {out_f.dtype}, eager {out_e.dtype}"
        )
    _compare(
        f"fuse({_name(eager)}) vs eager",
        out_f,
        out_e,
        [grad],
        atol=float(atol),
        rtol=float(rtol),
        shape=grad.shape,
        note=note,
    )


def assert_surgery_backward_applies_rule(
    rule: SurgeryRule,
    x: Tensor,
    refs: Mapping[str, Tensor],
    grad_output: Tensor | None = None,
    *,
    nonfinite: str = "raise",
    atol: float | None = None,
    rtol: float | None = None,
) -> None:
    """Through `GradientSurgery.apply(x, rule, refs)`, the forward pass returns `x` itself
    (a view sharing its storage) and the gradient passed back to `x` equals
    `rule(grad_output, refs)` (with `nonfinite="ignore"`: of the references with their
    non-finite samples zeroed). `grad_output` defaults to a seeded standard normal tensor.

    Args:
        rule: the rule under test.
        x: the feature tensor the surgery is applied to.
        refs: the reference gradients, `{name: tensor}` of `grad`'s shape.
        grad_output: the gradient arriving at the output; `None` draws a seeded standard normal one.
        nonfinite: `"raise"` or `"ignore"`, passed to `GradientSurgery`.
        atol: absolute tolerance; `None` picks the dtype's default (see the module doc).
        rtol: relative tolerance; `None` picks the dtype's default (see the module doc).

    Raises:
        AssertionError: the invariant is violated (the message names the worst sample).
        ValueError: misuse of the check (a missing reference key, a bad tolerance or scale).

    Examples:
        >>> import torch
        >>> from dgsnet.surgery import OrthogonalSuppression
        >>> x, harm = torch.randn(4, 8), torch.randn(4, 8)
        >>> assert_surgery_backward_applies_rule(OrthogonalSuppression(), x, {"harm": harm})
    """
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError("assert_surgery_backward_applies_rule: x must be a floating-point tensor")
    name = _name(rule)
    leaf = x.detach().clone().requires_grad_(True)
    y = GradientSurgery.apply(leaf, rule, refs, None, nonfinite)
    same = y.shape == leaf.shape and bool(  # NaN == NaN here: the identity keeps NaN
        torch.isclose(y.detach(), leaf.detach(), rtol=0, atol=0, equal_nan=True).all()
    )
    if not same:
        raise AssertionError(f"GradientSurgery with {name}: the forward pass is not the identity")
    if y.data_ptr() != leaf.data_ptr():
        raise AssertionError(f"GradientSurgery with {name}: the forward pass copied its input")
    if grad_output is None:
        gen = torch.Generator(device=x.device).manual_seed(0)
        grad_output = torch.randn(x.shape, generator=gen, device=x.device).to(x.dtype)
    (got,) = torch.autograd.grad(y, leaf, grad_output)
    used = {k: refs[k] for k in getattr(rule, "refs", ()) if k in refs}
    expected_refs = dict(refs)
    if nonfinite == "ignore":
        expected_refs.update(drop_nonfinite(used))
    expected = _call(rule, grad_output, expected_refs, "the upstream gradient")
    if got.dtype != expected.dtype:
        raise AssertionError(
            f"GradientSurgery with {name} passed back dtype {got.dtype}, "
            f"rule(grad) has {expected.dtype}"
        )
    atol, rtol = _tols(x.dtype, atol, rtol)
    _compare(
        f"GradientSurgery backward vs {name}(upstream gradient)",
        got,
        expected,
        [grad_output],
        atol=atol,
        rtol=rtol,
        shape=x.shape,
    )
