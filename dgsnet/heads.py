"""`dgsnet.heads`: an earlier path of `dgsnet.wrapper.heads`, kept working.

This module re-exports the public names of `dgsnet.wrapper.heads`; new code imports them
from there (or from `dgsnet` / `dgsnet.wrapper`).
"""

from .wrapper.heads import (
    HeadLoss,
    LossFn,
    autograd_input_grad,
    check_image_head,
    classification_loss,
    input_grad,
    linear_input_grad,
)

__all__ = [
    "HeadLoss",
    "LossFn",
    "autograd_input_grad",
    "check_image_head",
    "classification_loss",
    "input_grad",
    "linear_input_grad",
]
