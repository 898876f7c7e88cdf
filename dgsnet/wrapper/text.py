"""The text branch of the DGS step: caption features from the frozen text tower.

`TextBranch` turns what a step receives as text (caption strings, token ids, precomputed
features, or nothing, with a caption source to look captions up) into `(B, D)` features on
the model's device, through the LRU cache of caption features. `DGSWrapper.encode_text`
calls it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ..encoders import DualEncoder
from .caches import TextCache
from .captions import MISSING_CAPTIONS_HELP, CaptionSource
from .validation import check_captions, check_text_features, check_tokens, vocab_size

__all__ = ["TextBranch"]


class TextBranch:
    """Text features for the step, from the frozen text tower.

    Args:
        encoder: the dual encoder (its text tower and tokenizer).
        feature_dim: `D`, the joint feature width.
        post: what the features go through (identity, or L2 normalisation).
        cache: the caption-feature cache.
        placement: returns the model's device and the dtype precomputed features take.
        captions: where captions come from when a step gets none, or `None`.
    """

    def __init__(
        self,
        encoder: DualEncoder,
        feature_dim: int,
        post: Callable[[Tensor], Tensor],
        cache: TextCache,
        placement: Callable[[], tuple[torch.device, torch.dtype]],
        captions: CaptionSource | None,
    ) -> None:
        self.encoder, self.feature_dim, self.post = encoder, feature_dim, post
        self.cache, self.placement, self.captions = cache, placement, captions

    @torch.no_grad()
    def encode(self, text: Any, batch_size: int | None = None, use_cache: bool = True) -> Tensor:
        """Features of `text` (see `DGSWrapper.encode_text` for the accepted kinds).

        Raises:
            TypeError: `text` is none of the accepted kinds.
            ValueError: wrong shape, empty list, or `batch_size` rows not matched.
        """
        device, dtype = self.placement()
        if text is None:
            raise TypeError(f"no captions: {MISSING_CAPTIONS_HELP}")
        if isinstance(text, str):
            raise TypeError("text must be a list of captions, got a single string")
        if isinstance(text, Tensor) and text.is_floating_point():
            check_text_features(text, self.feature_dim)
            feats = text.to(device, dtype)
        elif isinstance(text, (Tensor, Mapping)):
            if isinstance(text, Tensor):
                text = check_tokens(text, device=device, vocab=vocab_size(self.encoder.model))
            feats = self.post(self.encoder.encode_text(text))
        elif isinstance(text, Sequence):
            captions = check_captions(text)
            if use_cache:
                feats = self.cache.features(captions, self._encode_list).to(device)
            else:
                feats = self._encode_list(captions)
        else:
            raise TypeError(
                "text must be a list of strings, token ids, or a feature tensor, got "
                f"{type(text).__name__}"
            )
        if batch_size is not None and feats.shape[0] != batch_size:
            raise ValueError(f"got {feats.shape[0]} captions/text rows for {batch_size} images")
        if feats.shape[-1] != self.feature_dim:
            raise ValueError(
                f"text features have dimension {feats.shape[-1]} but image features "
                f"{self.feature_dim}: the surgery needs a joint embedding space"
            )
        return feats

    def _encode_list(self, captions: list[str]) -> Tensor:
        return self.post(self.encoder.encode_text(self.encoder.tokenize(captions)))

    def for_step(
        self, text: Any, batch: int, index: Tensor | None, paths: Sequence[Any] | None
    ) -> Tensor:
        """The step's text features: from `text`, or, when that is `None`, from the caption
        source looked up by `paths` or `index`.

        Raises:
            ValueError: no text and no caption source (the message lists the options).
        """
        if text is None:
            if self.captions is None:
                raise ValueError(f"no captions arrived for {batch} images. {MISSING_CAPTIONS_HELP}")
            text = self.captions.lookup(batch, index, paths)
        return self.encode(text, batch_size=batch)
