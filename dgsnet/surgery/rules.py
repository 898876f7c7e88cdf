"""Gradient-surgery rules: pure tensor math on feature gradients.

A rule maps the gradient arriving at a feature tensor, `grad` of shape `(..., D)`, and a
mapping of named reference gradients of the same shape to a new gradient of that shape. Every
rule works per sample over the last dimension: the leading dimensions are independent samples.

Writing a rule means subclassing `SurgeryRule` and implementing `SurgeryRule.forward`
on tensors that have already been validated (see `docs/custom-rules.md`).

Examples:
    >>> import torch
    >>> from dgsnet.surgery import OrthogonalSuppression
    >>> g = torch.tensor([[1.0, 1.0]]); harm = torch.tensor([[2.0, -5.0]])
    >>> OrthogonalSuppression(eps=0.0)(g, {"harm": harm})
    tensor([[0., 1.]])
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from torch import Tensor

from ..errors import RuleOutputError  # re-exported: its earlier home

__all__ = [
    "SurgeryRule",
    "RuleOutputError",
    "check_inputs",
    "check_output",
    "sign_split",
    "drop_nonfinite",
    "OrthogonalSuppression",
    "PriorAlignment",
    "ConflictProjection",
    "Compose",
]

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def sign_split(g: Tensor) -> tuple[Tensor, Tensor]:
    """Split a gradient into its positive and negative parts.

    `g_pos = max(g, 0)` holds the *harmful* coordinates (raising the feature raises the loss),
    `g_neg = min(g, 0)` the *beneficial* ones. Exactly one of the two is zero in every
    coordinate, so `g_pos + g_neg == g` holds bit for bit (NaN stays NaN in both parts).

    Args:
        g: the gradient, any shape.

    Returns:
        `(g_pos, g_neg)`, each of `g`'s shape and dtype.

    Examples:
        >>> sign_split(torch.tensor([1.5, -2.0, 0.0]))
        (tensor([1.5000, 0.0000, 0.0000]), tensor([ 0., -2.,  0.]))
    """
    if not isinstance(g, Tensor):
        raise TypeError(f"sign_split expects a torch.Tensor, got {type(g).__name__}")
    if g.is_complex() or g.dtype == torch.bool:
        raise TypeError(f"sign_split expects a real-valued tensor, got dtype {g.dtype}")
    return g.clamp_min(0), g.clamp_max(0)


def drop_nonfinite(refs: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Return `refs` with every sample (row over the last dimension) that holds a NaN or an
    infinity replaced by zeros.

    All rules in this package are a no-op for a zero reference, so this turns "a broken
    reference gradient" into "no surgery for that sample". Used by
    `GradientSurgery(..., nonfinite="ignore")`.

    Args:
        refs: `{name: tensor}`, samples along the last dimension.

    Returns:
        A new dict with the same keys; the input tensors are not modified.

    Raises:
        TypeError: `refs` is not a mapping.
    """
    if not isinstance(refs, Mapping):
        raise TypeError(
            f"drop_nonfinite expects a mapping name -> tensor, got {type(refs).__name__}"
        )
    out = {}
    for key, ref in refs.items():
        if not isinstance(ref, Tensor):
            raise TypeError(
                f"drop_nonfinite: reference {key!r} must be a tensor, got {type(ref).__name__}"
            )
        bad = ~torch.isfinite(ref).all(dim=-1, keepdim=True)
        out[key] = ref.masked_fill(bad, 0.0)
    return out


class SurgeryRule:
    """Base class of all rules.

    Calling a rule validates its inputs, computes in float32 when the gradient is float16 or
    bfloat16, and returns a tensor of the gradient's shape and dtype. Subclasses set
    `refs` (the names of the reference gradients they read) and implement
    `forward`, which receives the gradient and *only its own* references, all of one
    floating dtype (float32 or float64), already checked for shape, device and finiteness.
    """

    refs: tuple[str, ...] = ()
    """Names of the reference gradients this rule reads."""

    def __call__(self, grad: Tensor, refs: Mapping[str, Tensor] | None = None) -> Tensor:
        refs = {} if refs is None else refs
        prepared, used = self.prepare(grad, refs)
        out = check_output(self, self.forward(prepared, used), prepared, "forward(grad, refs)")
        return out if out.dtype == grad.dtype else out.to(grad.dtype)

    # -- validation ---------------------------------------------------------------------------
    def prepare(
        self, grad: Tensor, refs: Mapping[str, Tensor], check_finite: bool = True
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Validate `grad` and the references this rule reads; return them in the compute
        dtype.

        Args:
            grad: the incoming gradient, shape `(..., D)`, floating point.
            refs: `{name: tensor}`; the keys in `refs` must be there.
            check_finite: `False` skips the one check that reads the data (the fused path
                folds it into its kernel).

        Returns:
            `(grad, used)`: the gradient and this rule's references (detached), all in the
            compute dtype (float32 for float16/bfloat16 gradients, else the gradient's).

        Raises:
            TypeError: a tensor of the wrong kind or dtype, refs not a mapping.
            ValueError: a missing reference, a shape or device mismatch, NaN/Inf in a reference.
        """
        check_inputs(type(self).__name__, self, grad, refs, what="gradient")
        compute = torch.float32 if grad.dtype in _LOW_PRECISION else grad.dtype
        used = {key: refs[key].detach().to(compute) for key in self.refs}
        if used and check_finite:
            finite = torch.stack([torch.isfinite(r).all() for r in used.values()]).all()
            raise_if_nonfinite(self, used, finite)
        return grad.to(compute), used

    # -- math ---------------------------------------------------------------------------------
    def forward(self, grad: Tensor, refs: dict[str, Tensor]) -> Tensor:
        """The rule's math on validated tensors; subclasses implement this.

        Args:
            grad: the gradient, already checked and cast to the compute dtype.
            refs: the references named in `refs`, checked and cast alike.

        Returns:
            The new gradient, of `grad`'s shape and dtype.
        """
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._repr_args().items())
        return f"{type(self).__name__}({args})"

    def _repr_args(self) -> dict[str, object]:
        return {}

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self._repr_args() == other._repr_args()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self).__name__, repr(self)))


def check_output(rule: object, out: object, like: Tensor, call: str) -> Tensor:
    """Return `out` when it is a tensor of `like`'s shape, dtype and device, else raise
    `RuleOutputError` naming `type(rule)` and `call` (how the rule was called).
    Metadata only: nothing is read from the device.

    Args:
        rule: the rule that produced `out` (for the message).
        out: what the rule returned.
        like: the tensor `out` must match.
        call: how the rule was called, e.g. `"forward(grad, refs)"`.

    Returns:
        `out`.

    Raises:
        RuleOutputError: `out` is not a tensor of `like`'s shape, dtype and device.
    """
    name = type(rule).__name__
    expected = f"a tensor of shape {tuple(like.shape)}, dtype {like.dtype}, device {like.device}"
    if not isinstance(out, Tensor):
        raise RuleOutputError(f"{name}.{call} returned {type(out).__name__}; expected {expected}")
    for field, got, want in (
        ("shape", tuple(out.shape), tuple(like.shape)),
        ("dtype", out.dtype, like.dtype),
        ("device", out.device, like.device),
    ):
        if got != want:
            raise RuleOutputError(f"{name}.{call} returned {field} {got}; expected {expected}")
    return out


def check_inputs(
    owner: str,
    rule: SurgeryRule,
    target: Tensor,
    refs: Mapping[str, Tensor],
    *,
    what: Literal["gradient", "features"],
) -> None:
    """The one validation of a gradient (or features) and the references `rule` reads:
    types, dtypes, shapes and devices, metadata only (no device synchronisation). Used by
    `SurgeryRule.prepare` and by `GradientSurgery`'s forward pass.

    Args:
        owner: the name that starts every message (the rule's class, or `GradientSurgery`).
        rule: whose `SurgeryRule.refs` are checked.
        target: the tensor the references must match, called `what` in the messages.
        refs: `{name: tensor}`.
        what: `"gradient"` (a rule's input) or `"features"` (`GradientSurgery`'s).

    Raises:
        TypeError: not a tensor, not floating point, refs not a mapping.
        ValueError: a scalar target, a missing reference, a shape or device mismatch.
    """
    arg = "grad" if what == "gradient" else what
    has = "has" if what == "gradient" else "have"
    is_ = "is" if what == "gradient" else "are"
    if not isinstance(target, Tensor):
        raise TypeError(f"{owner}: {arg} must be a torch.Tensor, got {type(target).__name__}")
    if not target.is_floating_point():
        raise TypeError(f"{owner}: {arg} must be a floating-point tensor, got dtype {target.dtype}")
    if target.dim() < 1:
        raise ValueError(f"{owner}: {arg} must have at least one dimension (..., D), got a scalar")
    if not isinstance(refs, Mapping):
        raise TypeError(
            f"{owner}: refs must be a mapping of name -> tensor, got {type(refs).__name__}"
        )
    missing = [k for k in rule.refs if k not in refs]
    if missing:
        raise ValueError(
            f"{owner}: missing reference gradient(s) {missing}; {rule!r} needs reference(s) "
            f"{list(rule.refs)}, got {sorted(refs)}"
        )
    for key in rule.refs:
        ref = refs[key]
        if not isinstance(ref, Tensor):
            raise TypeError(
                f"{owner}: reference {key!r} must be a torch.Tensor, got {type(ref).__name__} "
                f"({key!r} must be a tensor shaped like the {what})"
            )
        if not ref.is_floating_point():
            raise TypeError(
                f"{owner}: reference {key!r} must be floating point, got dtype {ref.dtype}"
            )
        if ref.shape != target.shape:
            raise ValueError(
                f"{owner}: reference {key!r} has shape {tuple(ref.shape)} but the {what} {has} "
                f"shape {tuple(target.shape)}; they must be equal"
            )
        if ref.device != target.device:
            raise ValueError(
                f"{owner}: reference {key!r} is on {ref.device} but the {what} {is_} on "
                f"{target.device}"
            )


def raise_if_nonfinite(rule: SurgeryRule, refs: Mapping[str, Tensor], all_finite: Tensor) -> None:
    """Raise a `ValueError` naming the non-finite references unless `all_finite` is true.
    Meta tensors hold no data: there is nothing to check (shape-only runs pass).

    Args:
        rule: whose references are checked (named in the message).
        refs: the references.
        all_finite: a boolean tensor, true when every reference is finite.

    Raises:
        ValueError: `all_finite` is false.
    """
    if all_finite.device.type == "meta" or bool(all_finite):
        return
    bad = [k for k, r in refs.items() if not bool(torch.isfinite(r).all())]
    raise ValueError(
        f"{type(rule).__name__}: reference gradient(s) {bad} contain NaN or Inf. Fix the loss "
        "that produced them, or pass nonfinite='ignore' to GradientSurgery to skip surgery for "
        "the affected samples"
    )


def _check_ref_name(rule: str, ref: object) -> str:
    if not isinstance(ref, str) or not ref:
        raise TypeError(f"{rule}: ref must be a non-empty string, got {ref!r}")
    return ref


def _check_nonneg_float(rule: str, arg: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{rule}: {arg} must be a float, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{rule}: {arg} must be finite and >= 0, got {value}")
    return value


class OrthogonalSuppression(SurgeryRule):
    r"""Remove the component of the gradient along the normalised harmful direction.

    With `r` the reference gradient (by default `refs["harm"]`, the text classifier's
    feature gradient in DGS-Net), per sample:

    $$
    u = \frac{\max(r, 0)}{\lVert \max(r, 0) \rVert_2 + \varepsilon}, \qquad
    g' = g - \langle g, u \rangle\, u
    $$

    `eps=1e-6` (default) is the released reference code's choice; `eps=0` normalises
    exactly (a zero positive part then gives `u = 0`, a no-op). With `conflict_only=True`
    the component is removed only where `<g, u> > 0`, that is where a descent step on `g`
    would also move the features along the harmful descent direction `-u`.

    Args:
        eps: added to the norm of the positive part (`>= 0`).
        conflict_only: remove the component only where `<g, u> > 0`.
        ref: the name of the reference gradient in `refs`.

    Raises:
        ValueError: `eps` negative or not finite.
        TypeError: `eps` not a number, `conflict_only` not a bool, or `ref` not a
            non-empty string.

    Examples:
        >>> rule = OrthogonalSuppression(eps=0.0)
        >>> rule(torch.tensor([[3.0, 4.0]]), {"harm": torch.tensor([[1.0, 0.0]])})
        tensor([[0., 4.]])
    """

    def __init__(self, eps: float = 1e-6, conflict_only: bool = False, ref: str = "harm") -> None:
        self.eps = _check_nonneg_float("OrthogonalSuppression", "eps", eps)
        """Added to `||relu(r)||` before dividing: a tiny reference fades out, never blows up."""
        if not isinstance(conflict_only, bool):
            raise TypeError(
                f"OrthogonalSuppression: conflict_only must be a bool, got {conflict_only!r}"
            )
        self.conflict_only = conflict_only
        """Project only where the gradient conflicts with the direction (`<g, u> > 0`), not both
        signs."""
        self.ref = _check_ref_name("OrthogonalSuppression", ref)
        """The name of the reference this rule reads (`"harm"` by default)."""
        self.refs = (self.ref,)
        """The references this rule reads: `(ref,)`."""

    def _repr_args(self) -> dict[str, object]:
        return {"eps": self.eps, "conflict_only": self.conflict_only, "ref": self.ref}

    def forward(self, grad: Tensor, refs: dict[str, Tensor]) -> Tensor:
        """`g - <g, u> u` per sample, with `u = relu(r) / (||relu(r)|| + eps)` (see the class
        docstring)."""
        return suppress(grad, refs[self.ref], self.eps, self.conflict_only)


def unit_vector(v: Tensor) -> Tensor:
    """`v / ||v||` per sample (over the last dimension), `0` where `v = 0`.

    The vector is first divided by its largest magnitude, so the squared norm neither underflows
    (a reference of 1e-25 in float32 would otherwise give `||v||^2 = 0` and a huge result) nor
    overflows (entries above about 1e19 in float32).

    Args:
        v: vectors over the last dimension.

    Returns:
        The unit vectors, of `v`'s shape.
    """
    if v.shape[-1] == 0:
        return v
    # per-sample reciprocals, then multiplications: no division per element. The clamps only
    # act on zero (or subnormal) vectors, which stay zero (or are scaled up less than fully).
    tiny = torch.finfo(v.dtype).tiny
    m = v.abs().amax(dim=-1, keepdim=True)
    s = v * (1.0 / m.clamp_min(tiny))
    n = torch.linalg.vector_norm(s, dim=-1, keepdim=True)
    return s * (1.0 / n.clamp_min(tiny))


def harmful_direction(ref: Tensor, eps: float) -> Tensor:
    """`u = relu(ref) / (||relu(ref)|| + eps)` per sample; `u = 0` where `relu(ref) = 0`.

    `eps = 0` normalises exactly, without under- or overflow (see `unit_vector`).

    Args:
        ref: the reference gradient.
        eps: added to the norm (`>= 0`).

    Returns:
        `u`, of `ref`'s shape.
    """
    pos = ref.clamp_min(0)
    if eps > 0:
        return pos * _inverse_norm(pos, eps)
    return unit_vector(pos)


def _inverse_norm(pos: Tensor, eps: float) -> Tensor:
    """`1 / (||pos|| + eps)` per sample."""
    return 1.0 / (torch.linalg.vector_norm(pos, dim=-1, keepdim=True) + eps)


def suppress(grad: Tensor, ref: Tensor, eps: float, conflict_only: bool = False) -> Tensor:
    """The math of `OrthogonalSuppression` on plain tensors (no validation).

    Args:
        grad: the gradient.
        ref: the harmful reference gradient, of `grad`'s shape.
        eps: added to the norm of the positive part.
        conflict_only: remove the component only where `<g, u> > 0`.

    Returns:
        The suppressed gradient.
    """
    if eps > 0:
        # with u = inv * pos: <g, u> u = (<g, pos> inv) inv pos. Written this way the work per
        # element is multiply-adds only, and u is never materialised
        pos = ref.clamp_min(0)
        inv = _inverse_norm(pos, eps)
        coef = (grad * pos).sum(dim=-1, keepdim=True) * inv
        if conflict_only:
            coef = coef.clamp_min(0)
        return grad - (coef * inv) * pos
    u = unit_vector(ref.clamp_min(0))
    coef = (grad * u).sum(dim=-1, keepdim=True)
    if conflict_only:
        coef = coef.clamp_min(0)
    return grad - coef * u


AlignScale = Literal["reference", "invariant"]


class PriorAlignment(SurgeryRule):
    r"""Add the beneficial (negative) part of a reference gradient.

    With `r` the reference (by default `refs["help"]`, the frozen teacher classifier's
    feature gradient in DGS-Net) and `B` the number of samples (the product of all leading
    dimensions):

    $$
    g' = g + \lambda\, s\, \min(r, 0), \qquad
    s = \begin{cases} 1/B & \texttt{scale="reference"} \\ 1 & \texttt{scale="invariant"}
    \end{cases}
    $$

    `scale="reference"` reproduces the released code, whose loss term
    `mean_b <f_b, min(r_b, 0)>` puts a second `1/B` on a reference gradient that already
    carries one; the alignment's weight relative to the task gradient then shrinks with the
    batch size. `scale="invariant"` keeps it at `weight` for every batch size (and under
    data parallelism, where each rank sees a share of the batch).

    Args:
        weight: `lambda`, the weight of the alignment term (`>= 0`).
        scale: `"reference"` or `"invariant"` (see above).
        ref: the name of the reference gradient in `refs`.

    Raises:
        ValueError: `weight` negative or not finite, or `scale` unknown.
        TypeError: `weight` not a number, or `ref` not a non-empty string.

    Examples:
        >>> PriorAlignment(weight=0.5, scale="invariant")(
        ...     torch.zeros(1, 2), {"help": torch.tensor([[2.0, -4.0]])})
        tensor([[ 0., -2.]])
    """

    def __init__(self, weight: float = 0.2, scale: AlignScale = "reference", ref: str = "help"):
        self.weight = _check_nonneg_float("PriorAlignment", "weight", weight)
        """The alignment weight `lambda` (0.2 in the reference)."""
        if scale not in ("reference", "invariant"):
            raise ValueError(
                f"PriorAlignment: scale must be 'reference' or 'invariant', got {scale!r}"
            )
        self.scale: AlignScale = scale
        """The factor: `weight / B` (`"reference"`, the released code's) or `weight`."""
        self.ref = _check_ref_name("PriorAlignment", ref)
        """The name of the reference this rule reads (`"help"` by default)."""
        self.refs = (self.ref,)
        """The references this rule reads: `(ref,)`."""

    def _repr_args(self) -> dict[str, object]:
        return {"weight": self.weight, "scale": self.scale, "ref": self.ref}

    def factor(self, num_samples: int) -> float:
        """The multiplier of `min(r, 0)`: `weight / B` or `weight`.

        Args:
            num_samples: `B`, the number of samples in the gradient.

        Returns:
            `weight / num_samples` for `scale="reference"`, else `weight`.
        """
        if self.scale == "reference":
            return self.weight / num_samples if num_samples else 0.0
        return self.weight

    def forward(self, grad: Tensor, refs: dict[str, Tensor]) -> Tensor:
        """`g + factor(B) * min(r, 0)`: the beneficial part of the reference, added."""
        num_samples = grad.numel() // grad.shape[-1] if grad.shape[-1] else 0
        return grad + self.factor(num_samples) * refs[self.ref].clamp_max(0)


class ConflictProjection(SurgeryRule):
    r"""Whole-vector conflict projection in the style of PCGrad (Yu et al., 2020).

    Where the gradient and the reference conflict (`<g, r> < 0`), remove from `g` its
    component along `r`; elsewhere leave `g` unchanged:

    $$
    g' = g - \frac{\min(\langle g, r\rangle, 0)}{\lVert r \rVert^2} r
    $$

    A zero reference is a no-op. This is a second, independent example of the rule API: it acts
    on whole vectors, where DGS-Net's rules act on sign-split coordinates.

    Args:
        ref: the name of the reference gradient in `refs`.

    Raises:
        TypeError: `ref` is not a non-empty string.

    Examples:
        >>> ConflictProjection()(torch.tensor([[1.0, -1.0]]), {"other": torch.tensor([[0.0, 1.0]])})
        tensor([[1., 0.]])
    """

    def __init__(self, ref: str = "other") -> None:
        self.ref = _check_ref_name("ConflictProjection", ref)
        """The name of the reference this rule reads (`"other"` by default)."""
        self.refs = (self.ref,)
        """The references this rule reads: `(ref,)`."""

    def _repr_args(self) -> dict[str, object]:
        return {"ref": self.ref}

    def forward(self, grad: Tensor, refs: dict[str, Tensor]) -> Tensor:
        """`g - min(<g, r_hat>, 0) r_hat`: the conflicting component removed, per sample."""
        # <g, r>/||r||^2 r == <g, r_hat> r_hat, with r_hat free of under/overflow
        r_hat = unit_vector(refs[self.ref])
        dot = (grad * r_hat).sum(dim=-1, keepdim=True).clamp_max(0)
        return grad - dot * r_hat


class Compose(SurgeryRule):
    """Apply rules in order: `Compose([a, b])(g) == b(a(g))`.

    The two DGS-Net orders:

    * `Compose([PriorAlignment(), OrthogonalSuppression()])`: align, then project the sum.
      This is what the released reference code computes (its projection hook sees the total
      gradient, alignment term included).
    * `Compose([OrthogonalSuppression(), PriorAlignment()])`: project the task gradient, then
      add the beneficial direction, as the paper's prose describes.

    Args:
        rules: the rules, applied first to last.

    Raises:
        TypeError: `rules` is not a sequence of `SurgeryRule`.
    """

    def __init__(self, rules: Sequence[SurgeryRule]) -> None:
        if isinstance(rules, SurgeryRule) or not isinstance(rules, Sequence):
            raise TypeError(f"Compose expects a sequence of rules, got {type(rules).__name__}")
        for i, rule in enumerate(rules):
            if not isinstance(rule, SurgeryRule):
                raise TypeError(
                    f"Compose: item {i} must be a SurgeryRule, got {type(rule).__name__}"
                )
        self.rules: tuple[SurgeryRule, ...] = tuple(rules)
        """The rules, applied first to last."""
        names: list[str] = []
        for rule in self.rules:
            names.extend(k for k in rule.refs if k not in names)
        self.refs = tuple(names)
        """Every reference some rule reads, in first-use order."""

    def __repr__(self) -> str:
        return f"Compose([{', '.join(repr(r) for r in self.rules)}])"

    def _repr_args(self) -> dict[str, object]:
        return {"rules": self.rules}

    def forward(self, grad: Tensor, refs: dict[str, Tensor]) -> Tensor:
        """Each rule in turn, each output checked before the next rule sees it."""
        for rule in self.rules:  # each step's output checked, naming the rule that broke it
            out = rule.forward(grad, {k: refs[k] for k in rule.refs})
            grad = check_output(rule, out, grad, "forward(grad, refs) inside Compose")
        return grad
