"""Tolerances and the per-sample comparison shared by every check of `dgsnet.testing`.

`default_tolerances` gives the `(rtol, atol)` defaults per dtype. The helpers below it are
shared by the checks of `invariants` and `autograd_checks` (public in this module, not part
of `dgsnet.testing`'s API): they call a rule with its inputs checked, and compare an actual
against an expected result sample by sample, naming the worst sample in the failure message.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import Tensor

from ..errors import RuleOutputError
from ..surgery import SurgeryRule

__all__ = ["default_tolerances"]

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


def resolve_tolerances(
    dtype: torch.dtype, atol: float | None, rtol: float | None
) -> tuple[float, float]:
    d_rtol, d_atol = default_tolerances(dtype)
    atol = d_atol if atol is None else check_tolerance("atol", atol)
    rtol = d_rtol if rtol is None else check_tolerance("rtol", rtol)
    return atol, rtol


def check_tolerance(name: str, value: object) -> float:
    """A tolerance must be a finite number >= 0: a NaN tolerance would fail every comparison
    (`x <= nan` is false) and an infinite one pass every comparison."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return v


# -- helpers -----------------------------------------------------------------------------------


def rule_name(rule: object) -> str:
    try:
        return repr(rule)
    except Exception:  # a broken __repr__ must not hide the real failure
        return type(rule).__name__


def call_rule(rule: SurgeryRule, grad: Tensor, refs: Mapping[str, Tensor], what: str) -> Tensor:
    """Run the rule and check that it returned a tensor of the gradient's shape. A rule output
    that the rule API itself refuses (`RuleOutputError`) is a failure of
    the rule, reported as `AssertionError`."""
    try:
        out = rule(grad, refs)
    except RuleOutputError as exc:
        raise AssertionError(f"{exc} (for {what})") from exc
    if not isinstance(out, Tensor):
        raise AssertionError(
            f"{rule_name(rule)} returned {type(out).__name__} for {what}, expected a torch.Tensor"
        )
    if out.shape != grad.shape:
        raise AssertionError(
            f"{rule_name(rule)} returned shape {tuple(out.shape)} for {what}, expected the "
            f"gradient's shape {tuple(grad.shape)}"
        )
    return out


def as_rows(t: Tensor) -> Tensor:
    """View `t` as `(samples, D)` in float64 (a 1-D tensor is one sample)."""
    t = t.detach().to(torch.float64)
    return t.reshape(1, -1) if t.dim() == 1 else t.reshape(-1, t.shape[-1])


def row_norms(t: Tensor) -> Tensor:
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


def format_sample(shape: Sequence[int], flat_row: int) -> str:
    idx = _sample_index(shape, flat_row)
    return "the only sample" if not idx else f"sample {idx}"


def finite_part(t: Tensor) -> Tensor:
    """`t` with NaN and infinities replaced by 0: what a scale is measured on."""
    return torch.nan_to_num(t, nan=0.0, posinf=0.0, neginf=0.0)


def _nonfinite_rows(tensors: Iterable[Tensor]) -> Tensor | None:
    """Per sample (`(samples, 1)`): does any of `tensors` hold a NaN/Inf there?"""
    rows: Tensor | None = None
    for t in tensors:
        r = ~torch.isfinite(as_rows(t)).all(dim=-1, keepdim=True)
        rows = r if rows is None else rows | r
    return rows


def compare_samples(
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
    a, e = as_rows(actual), as_rows(expected)
    scale = row_norms(finite_part(e))
    for t in inputs:
        scale = torch.maximum(scale, row_norms(finite_part(as_rows(t))))
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
            f"nan; first at {format_sample(shape, row)}, coordinate {col}: got {got:.6g}, "
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
        f"sample's norm {float(rel.max()):.3e}; worst entry at {format_sample(shape, row)}, "
        f"coordinate {col}: got {float(a[row, col]):.6g}, expected {float(e[row, col]):.6g} "
        f"(allowed: atol={atol:.3g} + rtol={rtol:.3g} * norm {float(scale[row, 0]):.3g}).{suffix}"
    )


def check_finite_inputs(check: str, grad: Tensor, refs: Mapping[str, Tensor]) -> None:
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


def reference_keys(
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
