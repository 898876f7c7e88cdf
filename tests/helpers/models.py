"""Tiny randomly initialised CLIP-like models, and DGSWrapper builders around them.

No weights are downloaded: every model here is built from a config with a fixed seed.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch

from dgsnet import DGSConfig, DGSWrapper

CAPTIONS = [
    "a photo of a cat",
    "a red car on a road",
    "two dogs",
    "a photo of a cat",
    "a bowl of fruit",
    "a chair",
]
"""Six captions with one repeat (positions 0 and 3), for the text cache."""


def tiny_open_clip(
    seed: int = 0,
    image_size: int = 32,
    layers: int = 2,
    embed_dim: int = 16,
    dtype: torch.dtype = torch.float32,
    layer_scale: float | None = None,
) -> Any:
    """An open_clip ``CLIP`` with a 2-block ViT (patch 8) and a 1-block text tower;
    `layer_scale`: the ViT's LayerScale init value (none by default)."""
    import open_clip

    torch.manual_seed(seed)
    vision: dict[str, Any] = dict(
        image_size=image_size, patch_size=8, width=32, layers=layers, head_width=16
    )
    if layer_scale is not None:
        vision["ls_init_value"] = layer_scale
    model = open_clip.CLIP(
        embed_dim=embed_dim,
        vision_cfg=vision,
        text_cfg=dict(context_length=16, vocab_size=49408, width=32, heads=2, layers=1),
    )
    return model.to(dtype)


def open_clip_tokenizer() -> Any:
    """open_clip's ViT-B-32 tokenizer (its vocabulary ships with open_clip)."""
    import open_clip

    return open_clip.get_tokenizer("ViT-B-32")


def tiny_hf_clip(seed: int = 0, image_size: int = 32, projection_dim: int = 16) -> Any:
    """A Hugging Face ``CLIPModel`` of the same size (needs ``transformers``)."""
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(seed)
    cfg = CLIPConfig(
        text_config=dict(
            vocab_size=1000,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=16,
            bos_token_id=0,
            eos_token_id=2,
            pad_token_id=1,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=image_size,
            patch_size=8,
        ),
        projection_dim=projection_dim,
    )
    return CLIPModel(cfg)


def hf_tokenizer() -> Any:
    """A word-level Hugging Face fast tokenizer over the words of `CAPTIONS` (needs
    ``transformers``)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for c in CAPTIONS for w in c.split()})
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3} | {w: i + 4 for i, w in enumerate(words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
    )


def write_tiny_hf_base(folder: Path) -> Path:
    """A folder `build_model("hf:<folder>")` loads: :func:`tiny_hf_clip` (32 pixels), a
    word-level tokenizer and an image processor (needs ``transformers``)."""
    import tokenizers
    import transformers

    tiny_hf_clip(image_size=32).save_pretrained(folder)
    words = "a photo of cat dog on the grass red car street chair in room".split()
    vocab = {"[PAD]": 1, "[UNK]": 3, "<s>": 0, "</s>": 2, **{w: i + 4 for i, w in enumerate(words)}}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]"
    )
    fast.save_pretrained(folder)
    transformers.CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    ).save_pretrained(folder)
    return folder


def make_lora_nonzero(wrapper: Any, seed: int = 1, scale: float = 0.05) -> None:
    """LoRA B matrices start at zero (student == teacher); make them non-zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in wrapper.named_trainable_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * scale)


def batch(
    n: int = 6, seed: int = 0, size: int = 32, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, list[str], torch.Tensor]:
    """``n`` random images ``(n, 3, size, size)``, their captions and binary labels."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size, size, generator=g).to(dtype)
    y = torch.tensor([0, 1, 1, 0, 1, 0][:n])
    return x, CAPTIONS[:n], y


def build(
    config: DGSConfig | None = None, seed: int = 0, dtype: torch.dtype = torch.float32, **kw: Any
) -> tuple[DGSWrapper, Any]:
    """A wrapper around :func:`tiny_open_clip` with non-trivial heads and non-zero LoRA, and
    a deep copy of the model taken before LoRA went in (the teacher, for reference steps)."""
    model = tiny_open_clip(seed=seed, dtype=dtype, **kw)
    original = copy.deepcopy(model)
    w = DGSWrapper(model, open_clip_tokenizer(), config or DGSConfig(lora_dropout=0.0))
    torch.manual_seed(seed + 7)
    with torch.no_grad():  # heads: non-trivial, reproducible weights
        for head in (w.image_head, w.text_head, w.teacher_head):
            head.weight.normal_(0, 0.5)
            head.bias.normal_(0, 0.1)
    make_lora_nonzero(w)
    return w, original


def grads(w: DGSWrapper) -> dict[str, torch.Tensor]:
    """Copies of the trainable parameters' gradients, by name (each must have one)."""
    return {n: p.grad.detach().clone() for n, p in w.named_trainable_parameters()}


def zero_grads(w: DGSWrapper) -> None:
    """Drop every gradient of the wrapper."""
    for p in w.parameters():
        p.grad = None


def _load_vendored(name: str) -> Any:
    """A module of the OpenAI CLIP code loaded from its file, the way detection codebases
    vendor it (UniversalFakeDetect keeps a copy under `models/clip/`): the installed
    `clip-anytorch` package provides the files; its `__init__` is not run."""
    import importlib.util
    import sys

    spec = importlib.util.find_spec("clip")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("needs the OpenAI CLIP code: pip install clip-anytorch (the test extra)")
    folder = list(spec.submodule_search_locations)[0]
    key = f"vendored_clip_{name}"
    if key not in sys.modules:
        file_spec = importlib.util.spec_from_file_location(key, f"{folder}/{name}.py")
        assert file_spec is not None and file_spec.loader is not None
        module = importlib.util.module_from_spec(file_spec)
        sys.modules[key] = module
        file_spec.loader.exec_module(module)
    return sys.modules[key]


def tiny_openai_clip(seed: int = 0) -> Any:
    """The OpenAI CLIP class (`clip.model.CLIP`) at a tiny size: a 2-block ViT (patch 8,
    32 px, width 64 = one head) and a 1-block text tower with the real 49408-token vocabulary."""
    model_module = _load_vendored("model")
    torch.manual_seed(seed)
    return model_module.CLIP(
        embed_dim=16,
        image_resolution=32,
        vision_layers=2,
        vision_width=64,
        vision_patch_size=8,
        context_length=77,
        vocab_size=49408,
        transformer_width=32,
        transformer_heads=2,
        transformer_layers=1,
    )


def openai_clip_tokenize() -> Any:
    """`clip.tokenize` as the OpenAI code defines it: start token, BPE ids, end token,
    zero-padded to the context length; `truncate=True` cuts long captions."""
    tokenizer = _load_vendored("simple_tokenizer").SimpleTokenizer()
    sot, eot = tokenizer.encoder["<|startoftext|>"], tokenizer.encoder["<|endoftext|>"]

    def tokenize(texts: Any, context_length: int = 77, truncate: bool = False) -> torch.Tensor:
        texts = [texts] if isinstance(texts, str) else texts
        out = torch.zeros(len(texts), context_length, dtype=torch.long)
        for i, text in enumerate(texts):
            ids = [sot, *tokenizer.encode(text), eot]
            if len(ids) > context_length:
                if not truncate:
                    raise RuntimeError(f"{text!r} is too long for context length {context_length}")
                ids = ids[:context_length]
                ids[-1] = eot
            out[i, : len(ids)] = torch.tensor(ids)
        return out

    return tokenize
