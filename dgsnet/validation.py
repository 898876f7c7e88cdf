"""`dgsnet.validation`: an earlier path of `dgsnet.wrapper.validation`, kept working.

This module re-exports the public names of `dgsnet.wrapper.validation`; new code imports them
from there (or from `dgsnet` / `dgsnet.wrapper`).
"""

from .wrapper.validation import (
    BatchChecker,
    Placement,
    autocast_enabled,
    check_captions,
    check_heads_placement,
    check_images,
    check_index,
    check_labels,
    check_text_features,
    check_tokens,
    inputs_finite,
    raise_nonfinite_inputs,
    vocab_size,
)

__all__ = [
    "BatchChecker",
    "Placement",
    "autocast_enabled",
    "check_captions",
    "check_heads_placement",
    "check_images",
    "check_index",
    "check_labels",
    "check_text_features",
    "check_tokens",
    "inputs_finite",
    "raise_nonfinite_inputs",
    "vocab_size",
]
