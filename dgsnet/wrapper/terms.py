"""The DGS loss terms around the student's features, shared by the step and `apply_surgery`.

Given the student's features `f` (with grad), the labels, the text features and the
teacher's outputs, `dgs_terms` attaches the Orthogonal Suppression projection to `f` and
builds the terms added to the task loss: the text head's loss, the weighted Prior Alignment
term, and the weighted feature distillation (DGS-Net, arXiv 2511.13108).
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..surgery import GradientSurgery, OrthogonalSuppression, SurgeryRule, SurgeryStats, fuse
from .config import DGSConfig
from .heads import HeadLoss
from .references import guard_help, help_reference, text_reference
from .validation import raise_nonfinite_inputs

__all__ = ["TermModel", "dgs_terms", "suppression_rule"]


class TermModel(Protocol):
    """The members of a wrapper that the terms use (`DGSWrapper` has them all)."""

    @property
    def config(self) -> DGSConfig:
        """The wrapper's configuration."""

    @property
    def rule(self) -> SurgeryRule | None:
        """The Orthogonal Suppression rule, or `None` when suppression is off."""

    @property
    def text_head(self) -> nn.Module:
        """The text head, trained on the frozen text features."""

    @property
    def teacher_head(self) -> nn.Module:
        """The frozen teacher head."""

    head_loss: HeadLoss
    """The head loss (`HeadLoss`)."""


def suppression_rule(config: DGSConfig) -> SurgeryRule | None:
    """Orthogonal Suppression as `config` sets it (`eps`, `conflict_only`, fused when
    `fused`); `None` when `suppression` is off."""
    if not config.suppression:
        return None
    rule: SurgeryRule = OrthogonalSuppression(eps=config.eps, conflict_only=config.conflict_only)
    return fuse(rule) if config.fused else rule


def dgs_terms(
    model: TermModel,
    f: Tensor,
    y: Tensor,
    t: Tensor | None,
    teacher: tuple[Tensor | None, Tensor | None],
    inputs_ok: Tensor | None,
    images: Tensor | None,
) -> tuple[Tensor, list[Tensor], dict[str, Tensor], SurgeryStats]:
    """The surgery on `f` and the DGS loss terms.

    Args:
        model: the wrapper (its config, rule and heads).
        f: `(B, D)` student features, with grad.
        y: `(B,)` labels, checked.
        t: `(B, D)` text features, or `None` without suppression.
        teacher: `(f_teacher, z_teacher)`, each `None` where the step does not need it.
        inputs_ok: the inputs' finiteness flag not read yet, or `None`.
        images: the step's images, for the non-finite message (or `None`).

    Returns:
        `(f_s, terms, losses, stats)`: the features with the surgery attached, the loss
        terms in the order they are added (text, weighted alignment, weighted
        distillation), their detached values, and the surgery diagnostics.
    """
    cfg = model.config
    f_teacher, z_teacher = teacher
    # "invariant" scale: per-sample reference gradients (no 1/B), so that neither the
    # alignment weight nor the projection's eps depends on the (per-rank) batch size
    per_sample = cfg.align_scale == "invariant"
    terms: list[Tensor] = []
    losses: dict[str, Tensor] = {}
    stats = SurgeryStats()
    f_s = f
    if model.rule is not None and t is not None:
        # the text head trains on detached text features; its input gradient is the harm
        loss_text, g_text = text_reference(model.text_head, t, y, model.head_loss, per_sample)
        terms.append(loss_text)
        losses["text"] = loss_text.detach()
        refs = {"harm": g_text.to(f.dtype)}
        f_s = GradientSurgery.apply(f, model.rule, refs, stats, cfg.nonfinite)
    if cfg.alignment:
        assert z_teacher is not None
        with torch.no_grad():
            losses["teacher"] = model.head_loss(z_teacher, y).detach()
        g_help = help_reference(
            model.teacher_head, f_teacher, z_teacher, y, model.head_loss, per_sample, f.dtype
        )
        g_help, inputs_ok = guard_help(
            g_help, cfg.nonfinite, inputs_ok, lambda: raise_nonfinite_inputs(images, t)
        )
        stats.extra_refs["help"] = g_help
        target = f_s if cfg.order == "align_then_project" else f
        loss_align = (target * g_help).sum(dim=-1).mean()
        terms.append(cfg.align_weight * loss_align)
        losses["align"] = loss_align.detach()
    if cfg.feature_distill > 0:
        # on the raw features f, not f_s: this gradient bypasses the projection
        assert f_teacher is not None
        loss_fd = F.mse_loss(f, f_teacher.to(f.dtype))
        terms.append(cfg.feature_distill * loss_fd)
        losses["distill"] = loss_fd.detach()
    if inputs_ok is not None and not bool(inputs_ok):
        raise_nonfinite_inputs(images, t)
    return f_s, terms, losses, stats
