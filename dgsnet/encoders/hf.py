"""Hugging Face `CLIPModel` / `SiglipModel` (`get_image_features` / `get_text_features`).

In recent transformers releases these methods return a `BaseModelOutputWithPooling` whose
`pooler_output` holds the projected features; older releases return the tensor itself. Both
are accepted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, cast

import torch
from torch import Tensor, nn

from .base import DualEncoder, Tokens


def _features(out: Any) -> Tensor:
    if isinstance(out, Tensor):
        return out
    pooled = getattr(out, "pooler_output", None)
    if isinstance(pooled, Tensor):
        return pooled
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        return out[0]
    raise TypeError(f"cannot find features in the model output of type {type(out).__name__}")


class _HFModel(Protocol):
    """The members of a transformers `CLIPModel` / `SiglipModel` that the adapter uses."""

    vision_model: nn.Module
    config: Any  # a CLIPConfig / SiglipConfig: `vision_config`, `text_config`, ...

    def get_image_features(self, pixel_values: Tensor) -> Any: ...

    def get_text_features(self, **inputs: Tensor) -> Any: ...


class HFCLIPEncoder(DualEncoder):
    """Adapter for `transformers` CLIP-like models (CLIP, SigLIP and relatives).

    LoRA targets the vision model's `q_proj`, `k_proj` and `v_proj` by default.

    Args:
        model: e.g. a `transformers.CLIPModel` or `SiglipModel`.
        tokenizer: the matching tokenizer or processor (called with truncation and padding).
    """

    kind = "hf"
    block_pattern = "layers"
    default_lora_targets = ("q_proj", "k_proj", "v_proj")

    @property
    def _hf(self) -> _HFModel:
        return cast(_HFModel, self.model)

    @property
    def image_tower(self) -> nn.Module:
        return self._hf.vision_model

    @property
    def _is_siglip(self) -> bool:
        return "siglip" in type(self.model).__name__.lower()

    @property
    def image_size(self) -> tuple[int, int] | None:
        size = getattr(self._hf.config.vision_config, "image_size", None)
        if size is None:
            return None
        return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))

    @property
    def context_length(self) -> int:
        return int(self._hf.config.text_config.max_position_embeddings)

    def encode_image(self, pixels: Tensor) -> Tensor:
        return _features(self._hf.get_image_features(pixel_values=pixels))

    def encode_text(self, tokens: Tokens) -> Tensor:
        if isinstance(tokens, Tensor):
            return _features(self._hf.get_text_features(input_ids=tokens))
        if isinstance(tokens, Mapping):
            names = ("input_ids", "attention_mask", "position_ids")
            keep = {k: v for k, v in tokens.items() if k in names}
            return _features(self._hf.get_text_features(**keep))
        raise TypeError(f"text tokens must be a tensor or a mapping, got {type(tokens).__name__}")

    @property
    def text_entry(self) -> str:
        return f"{type(self.model).__name__}.get_text_features"

    def probe_tokens(self) -> Tokens:
        if self.tokenizer is not None:
            return self.tokenize(["a photo"])
        device = next(self.model.parameters()).device
        return torch.tensor([[0, 1]], dtype=torch.long, device=device)

    def tokenize(self, texts: Sequence[str]) -> Tokens:
        if self.tokenizer is None:
            raise ValueError(
                "captions were given as strings but no tokenizer was passed: use "
                "DGSWrapper(model, tokenizer=AutoTokenizer.from_pretrained(path)) or pass token ids"
            )
        enc = self.tokenizer(
            list(texts),
            padding="max_length" if self._is_siglip else True,
            truncation=True,
            max_length=self.context_length,
            return_tensors="pt",
        )
        device = next(self.model.parameters()).device
        return {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}

    def blocks(self) -> Sequence[nn.Module] | None:
        enc = getattr(self.image_tower, "encoder", None)
        return getattr(enc, "layers", None)

    def feature_dim(self, device: torch.device | None = None) -> int:
        cfg = self._hf.config
        dim = getattr(cfg, "projection_dim", None)
        if dim is None or self._is_siglip:
            dim = cfg.vision_config.hidden_size
        return int(dim)

    def describe(self) -> dict[str, Any]:
        blocks = self.blocks()
        return {
            "kind": self.kind,
            "model_class": type(self.model).__name__,
            "image_size": self.image_size,
            "num_blocks": len(blocks) if blocks is not None else None,
            "feature_dim": self.feature_dim(),
        }
