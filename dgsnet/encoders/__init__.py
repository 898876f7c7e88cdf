"""Encoder adapters: one face for CLIP-like dual encoders (see `dgsnet.encoders.base`)."""

from __future__ import annotations

from typing import Any

from torch import nn

from .base import DualEncoder, Tokens
from .hf import HFCLIPEncoder
from .open_clip import OpenCLIPEncoder, SplitAttention, split_attention

__all__ = [
    "DualEncoder",
    "HFCLIPEncoder",
    "OpenCLIPEncoder",
    "SplitAttention",
    "Tokens",
    "split_attention",
    "wrap_encoder",
]


def wrap_encoder(model: Any, tokenizer: Any = None) -> DualEncoder:
    """Pick the adapter for `model`.

    A `DualEncoder` is used as is (with `tokenizer` set when given); a model with
    `get_image_features` / `get_text_features` is treated as Hugging Face; one with
    `encode_image` / `encode_text` and a `visual` tower as open_clip / OpenAI CLIP.

    Args:
        model: a CLIP-like `nn.Module` or a `DualEncoder`.
        tokenizer: the model's tokenizer (optional for token-id input).

    Returns:
        The adapter.

    Raises:
        TypeError: `model` is none of the above.
    """
    if isinstance(model, DualEncoder):
        if tokenizer is not None:
            model.tokenizer = tokenizer
        return model
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"expected a CLIP-like nn.Module or a DualEncoder, got {type(model).__name__}"
        )
    if hasattr(model, "get_image_features") and hasattr(model, "get_text_features"):
        return HFCLIPEncoder(model, tokenizer)
    if all(hasattr(model, a) for a in ("encode_image", "encode_text", "visual")):
        return OpenCLIPEncoder(model, tokenizer)
    raise TypeError(
        f"{type(model).__name__} is not a recognised dual encoder: expected open_clip/OpenAI CLIP "
        "(encode_image, encode_text, visual) or Hugging Face (get_image_features, "
        "get_text_features); for anything else subclass dgsnet.encoders.DualEncoder"
    )
