"""dgsnet: DGS-Net (Distillation-Guided Gradient Surgery) for fine-tuning CLIP-like models.

The method is the one of the DGS-Net paper (arXiv 2511.13108); the default configuration
reproduces the training gradients of the authors' released code (HorizonTEL/DGS-Net).

Example:
    >>> from dgsnet import DGSWrapper, DGSConfig
    >>> from dgsnet.surgery import GradientSurgery, OrthogonalSuppression, PriorAlignment
"""

from .surgery import (
    Compose,
    ConflictProjection,
    GradientSurgery,
    OrthogonalSuppression,
    PriorAlignment,
    SurgeryRule,
    SurgeryStats,
    sign_split,
)
from .wrapper import DGSConfig, DGSOutput, DGSWrapper, SurgeryResult

__version__ = "0.1.0.dev0"

__all__ = [
    "Compose",
    "ConflictProjection",
    "DGSConfig",
    "DGSOutput",
    "DGSWrapper",
    "GradientSurgery",
    "OrthogonalSuppression",
    "PriorAlignment",
    "SurgeryResult",
    "SurgeryRule",
    "SurgeryStats",
    "__version__",
    "sign_split",
]
