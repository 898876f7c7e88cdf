"""Gradient surgery on feature gradients: the sign split, the DGS-Net rules, and
`GradientSurgery`, the autograd function that applies a rule in backward.

Examples:
    >>> import torch
    >>> from dgsnet.surgery import GradientSurgery, OrthogonalSuppression
    >>> f = torch.randn(4, 8, requires_grad=True)
    >>> g_ref = torch.randn(4, 8)
    >>> out = GradientSurgery.apply(f, OrthogonalSuppression(), {"harm": g_ref})
"""

from .function import GradientSurgery, SurgeryStats, gradient_surgery
from .fused import FusedRule, fuse
from .rules import (
    Compose,
    ConflictProjection,
    OrthogonalSuppression,
    PriorAlignment,
    RuleOutputError,
    SurgeryRule,
    drop_nonfinite,
    harmful_direction,
    sign_split,
    suppress,
)

__all__ = [
    "Compose",
    "ConflictProjection",
    "FusedRule",
    "GradientSurgery",
    "OrthogonalSuppression",
    "PriorAlignment",
    "RuleOutputError",
    "SurgeryRule",
    "SurgeryStats",
    "drop_nonfinite",
    "fuse",
    "gradient_surgery",
    "harmful_direction",
    "sign_split",
    "suppress",
]
