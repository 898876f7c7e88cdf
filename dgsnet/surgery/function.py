"""`GradientSurgery`: an identity in the forward pass that edits the gradient in backward."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import Tensor

from .rules import SurgeryRule, check_inputs, check_output, drop_nonfinite

__all__ = ["GradientSurgery", "gradient_surgery", "SurgeryStats"]

NonFinite = Literal["raise", "ignore"]


class SurgeryStats:
    """Diagnostics of one surgery, filled during backward and summarised on demand.

    `record` keeps detached references to the gradient before and after the rule (no
    copies, no device synchronisation in the backward pass); `summary` turns them into
    Python floats:

    * `grad_norm_in` / `grad_norm_out`: mean per-sample L2 norm before / after;
    * `removed_fraction`: `1 - ||g_out||_F / ||g_in||_F`, the fraction of gradient norm
      the surgery removed (negative when it added more than it removed);
    * `cos_<ref>`: for each reference, the mean per-sample cosine between the incoming
      gradient and that reference's relevant part (the positive part for `harm`, the
      negative part for `help`, the whole vector otherwise); 0 for samples with a zero part.
    """

    def __init__(self) -> None:
        self.grad_in: Tensor | None = None
        """The incoming feature gradient of the last backward (detached), or `None` before one."""
        self.grad_out: Tensor | None = None
        """The gradient the rule returned in the last backward (detached)."""
        self.refs: dict[str, Tensor] = {}
        """The references the rule read in the last backward (detached), by name."""
        self.extra_refs: dict[str, Tensor] = {}
        """References the caller adds for the diagnostics only (kept across `record`)."""

    @property
    def recorded(self) -> bool:
        """Whether a backward has been recorded yet."""
        return self.grad_in is not None

    def record(self, grad_in: Tensor, grad_out: Tensor, refs: Mapping[str, Tensor]) -> None:
        """Keep one backward's incoming gradient, outgoing gradient and references (detached)."""
        self.grad_in = grad_in.detach()
        self.grad_out = grad_out.detach()
        self.refs = {k: v.detach() for k, v in refs.items()}

    def summary(self) -> dict[str, float]:
        """The diagnostics of the recorded backward as floats (see the class docstring); `{}` before
        one."""
        if self.grad_in is None or self.grad_out is None:
            return {}
        g_in = self.grad_in.float()
        g_in = g_in.flatten(0, -2) if g_in.dim() > 1 else g_in[None]
        g_out = self.grad_out.float().reshape(g_in.shape)
        n_in = torch.linalg.vector_norm(g_in, dim=-1)
        n_out = torch.linalg.vector_norm(g_out, dim=-1)
        total_in = torch.linalg.vector_norm(g_in)
        total_out = torch.linalg.vector_norm(g_out)
        removed = 1.0 - total_out / total_in if total_in > 0 else torch.zeros(())
        out = {
            "grad_norm_in": n_in.mean(),
            "grad_norm_out": n_out.mean(),
            "removed_fraction": removed,
        }
        for key, ref in {**self.extra_refs, **self.refs}.items():
            r = ref.float().reshape(g_in.shape)
            if key == "harm":
                r = r.clamp_min(0)
            elif key == "help":
                r = r.clamp_max(0)
            denom = n_in * torch.linalg.vector_norm(r, dim=-1)
            cos = torch.where(denom > 0, (g_in * r).sum(-1) / denom.clamp_min(1e-30), 0.0)
            out[f"cos_{key}"] = cos.mean()
        return {k: float(v) for k, v in out.items()}


class GradientSurgery(torch.autograd.Function):
    """Identity in the forward pass; `rule(grad, refs)` on the gradient in backward.

    `GradientSurgery.apply(x, rule, refs, stats=None, nonfinite="raise")`

    * `x`: the features, shape `(..., D)`; returned as a view (no copy).
    * `rule`: a `SurgeryRule`.
    * `refs`: `{name: tensor}` reference gradients of `x`'s shape. They are detached:
      no gradient flows into them. They are saved with `ctx.save_for_backward` (no copy),
      so changing one in place between this call and the backward pass makes backward raise
      torch's `RuntimeError` ("... modified by an inplace operation") instead of computing
      the surgery from the changed values. To reuse a buffer, pass `buf.clone()`.
    * `stats`: an optional `SurgeryStats` filled during backward.
    * `nonfinite`: `"raise"` (default) raises a `ValueError` in backward when a reference
      holds NaN/Inf; `"ignore"` zeroes the affected samples' references, so those samples'
      gradients pass unchanged.

    Double backward (`create_graph=True`) is supported: the rule is written in differentiable
    torch ops, and its references are constants.

    Examples:
        >>> from dgsnet.surgery import OrthogonalSuppression
        >>> x = torch.ones(2, 3, requires_grad=True)
        >>> y = GradientSurgery.apply(x, OrthogonalSuppression(eps=0.0), {"harm": torch.eye(3)[:2]})
        >>> y.sum().backward(); x.grad
        tensor([[0., 1., 1.],
                [1., 0., 1.]])
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: Tensor,
        rule: SurgeryRule,
        refs: Mapping[str, Tensor],
        stats: SurgeryStats | None = None,
        nonfinite: NonFinite = "raise",
    ) -> Tensor:
        """Save the references and the rule; return `x` unchanged (a view). Called through
        `GradientSurgery.apply`."""
        if not isinstance(rule, SurgeryRule):
            raise TypeError(
                f"GradientSurgery: rule must be a SurgeryRule, got {type(rule).__name__}"
            )
        if nonfinite not in ("raise", "ignore"):
            raise ValueError(
                f"GradientSurgery: nonfinite must be 'raise' or 'ignore', got {nonfinite!r}"
            )
        if stats is not None and not isinstance(stats, SurgeryStats):
            raise TypeError(
                f"GradientSurgery: stats must be a SurgeryStats, got {type(stats).__name__}"
            )
        # Validate now, with the caller's stack, rather than deep inside backward.
        check_inputs("GradientSurgery", rule, x, refs, what="features")
        ctx.rule = rule
        # saved (not kept as attributes) so that torch's version-counter check applies: an
        # in-place change of a reference before backward raises instead of editing the
        # gradient with the changed values. detach() shares the version counter, copies nothing
        ctx.ref_names = tuple(rule.refs)
        ctx.save_for_backward(*(refs[k].detach() for k in ctx.ref_names))
        ctx.stats = stats
        ctx.nonfinite = nonfinite
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, None, None, None, None]:  # type: ignore[override]
        """Apply the rule to the incoming gradient, per sample, after the finiteness policy;
        gradients flow to `x` only."""
        refs = dict(zip(ctx.ref_names, ctx.saved_tensors, strict=True))
        if ctx.nonfinite == "ignore":
            refs = drop_nonfinite(refs)
        out = check_output(ctx.rule, ctx.rule(grad, refs), grad, "__call__(grad, refs)")
        if ctx.stats is not None:
            ctx.stats.record(grad, out, refs)
        return out, None, None, None, None


def gradient_surgery(
    x: Tensor,
    rule: SurgeryRule,
    refs: Mapping[str, Tensor],
    *,
    stats: SurgeryStats | None = None,
    nonfinite: NonFinite = "raise",
) -> Tensor:
    """Keyword-friendly form of `GradientSurgery.apply`.

    Args:
        x: the features, shape `(..., D)`.
        rule: the rule applied to the gradient of `x` in backward.
        refs: `{name: tensor}` reference gradients of `x`'s shape (detached, not copied).
        stats: filled during backward when given.
        nonfinite: `"raise"` or `"ignore"` for references holding NaN/Inf (see
            `GradientSurgery`).

    Returns:
        `x` as a view whose gradient passes through `rule`.
    """
    return GradientSurgery.apply(x, rule, refs, stats, nonfinite)
