"""Tiny randomly initialised CLIP-like models for the tests (no weights are downloaded)."""

from __future__ import annotations

import torch


def tiny_open_clip(seed: int = 0, image_size: int = 32, layers: int = 2, embed_dim: int = 16,
                   dtype: torch.dtype = torch.float32):
    import open_clip

    torch.manual_seed(seed)
    model = open_clip.CLIP(
        embed_dim=embed_dim,
        vision_cfg=dict(image_size=image_size, patch_size=8, width=32, layers=layers, head_width=16),
        text_cfg=dict(context_length=16, vocab_size=49408, width=32, heads=2, layers=1),
    )
    return model.to(dtype)


def open_clip_tokenizer():
    import open_clip

    return open_clip.get_tokenizer("ViT-B-32")


def tiny_hf_clip(seed: int = 0, image_size: int = 32):
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(seed)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=1000, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=16, bos_token_id=0,
                         eos_token_id=2, pad_token_id=1),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, image_size=image_size, patch_size=8),
        projection_dim=16,
    )
    return CLIPModel(cfg)


def make_lora_nonzero(wrapper, seed: int = 1, scale: float = 0.05) -> None:
    """LoRA B matrices start at zero (student == teacher); make them non-zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in wrapper.named_trainable_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * scale)
