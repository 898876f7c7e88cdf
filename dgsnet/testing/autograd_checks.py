"""The autograd checks of `dgsnet.testing`: `torch.autograd.gradcheck` of a rule, the fused
rule against eager, and the backward pass of `GradientSurgery` against the rule.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor

from ..surgery import GradientSurgery, SurgeryRule, drop_nonfinite, fuse
from ..surgery.fused import FusedRule
from .compare import call_rule, check_tolerance, compare_samples, resolve_tolerances, rule_name

__all__ = [
    "assert_gradcheck",
    "assert_fused_matches_eager",
    "assert_surgery_backward_applies_rule",
]


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
    name = rule_name(rule)
    eps = check_tolerance("eps", eps)
    atol, rtol = check_tolerance("atol", atol), check_tolerance("rtol", rtol)
    if eps == 0:
        raise ValueError("eps must be > 0 for finite differences, got 0")
    for label, f, inputs, names in _gradcheck_cases(rule, grad, refs, wrt_refs):
        error = _run_gradcheck(f, inputs, eps=eps, atol=atol, rtol=rtol, fast_mode=fast_mode)
        if error is None:
            continue
        detail = _jacobian_deviation(f, inputs, names, eps)
        raise AssertionError(
            f"gradcheck of {name} w.r.t. {label} failed (float64, eps={eps:g}, atol={atol:g}, "
            f"rtol={rtol:g}){detail}. gradcheck said: {error}"
        )


_GradcheckCase = tuple[str, Callable[..., Tensor], list[Tensor], list[str]]


def _gradcheck_cases(
    rule: SurgeryRule, grad: Tensor, refs: Mapping[str, Tensor], wrt_refs: bool
) -> list[_GradcheckCase]:
    """`(label, function, float64 inputs, input names)` for each Jacobian to check.

    The first case is the full `rule(grad, refs)` call as a function of `grad`; with
    `wrt_refs=True` and references the rule reads, the second is `rule.forward` as a function
    of `grad` and those references (calling a rule detaches its references).
    """
    g64 = grad.detach().to(torch.float64).clone().requires_grad_(True)
    refs64: dict[str, Tensor] = {
        k: (v.detach().to(torch.float64).clone() if isinstance(v, Tensor) else v)
        for k, v in refs.items()
    }
    keys = [k for k in (getattr(rule, "refs", ()) or ()) if k in refs64] if wrt_refs else []

    def of_grad(g: Tensor) -> Tensor:
        return rule(g, refs64)

    checks: list[_GradcheckCase] = [("grad", of_grad, [g64], ["grad"])]
    if keys:
        rule.prepare(g64.detach(), refs64)  # validation only; forward gets the live tensors

        def of_all(g: Tensor, *rs: Tensor) -> Tensor:
            return rule.forward(g, dict(zip(keys, rs, strict=True)))

        leaves = [g64] + [refs64[k].clone().requires_grad_(True) for k in keys]
        checks.append((f"grad and references {keys}", of_all, leaves, ["grad"] + keys))
    return checks


def _run_gradcheck(
    f: Callable[..., Tensor],
    inputs: Sequence[Tensor],
    *,
    eps: float,
    atol: float,
    rtol: float,
    fast_mode: bool,
) -> str | None:
    """`None` when `torch.autograd.gradcheck` passes, else the first line of its error."""
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
    return None if ok else error


def _jacobian_deviation(
    f: Callable[..., Tensor], inputs: Sequence[Tensor], names: Sequence[str], eps: float
) -> str:
    """The largest analytical-vs-numerical Jacobian deviation, as a message fragment."""
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
        return (
            f"; max |analytical - numerical| Jacobian entry = {top:.3e} "
            f"(relative {rel:.3e}) w.r.t. {names[worst]!r}"
        )
    except Exception as exc:  # the deviation is a courtesy; never mask the failure
        return f"; could not compute the deviation ({type(exc).__name__}: {exc})"


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
    atol = check_tolerance("atol", atol)
    if rtol is None:
        rtol = max(1e-6, torch.finfo(grad.dtype).eps) if grad.is_floating_point() else 1e-6
    rtol = check_tolerance("rtol", rtol)
    fused = fuse(eager)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out_f = call_rule(fused, grad, refs, "the gradient (fused)")
    for w in caught:  # recorded for the failure message, and passed on to the caller
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    out_e = call_rule(eager, grad, refs, "the gradient (eager)")
    fallback = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    note = f"(torch.compile fell back to eager: {fallback[0]})" if fallback else ""
    if out_f.dtype != out_e.dtype:
        raise AssertionError(
            f"fuse({rule_name(eager)}) returned dtype {out_f.dtype}, eager {out_e.dtype}"
        )
    compare_samples(
        f"fuse({rule_name(eager)}) vs eager",
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
    name = rule_name(rule)
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
    expected = call_rule(rule, grad_output, expected_refs, "the upstream gradient")
    if got.dtype != expected.dtype:
        raise AssertionError(
            f"GradientSurgery with {name} passed back dtype {got.dtype}, "
            f"rule(grad) has {expected.dtype}"
        )
    atol, rtol = resolve_tolerances(x.dtype, atol, rtol)
    compare_samples(
        f"GradientSurgery backward vs {name}(upstream gradient)",
        got,
        expected,
        [grad_output],
        atol=atol,
        rtol=rtol,
        shape=x.shape,
    )
