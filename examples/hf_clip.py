"""DGS-Net with a Hugging Face CLIP (or SigLIP) checkpoint.

Needs the checkpoint locally or in the Hugging Face cache (``openai/clip-vit-large-patch14``,
``google/siglip-base-patch16-224``, or a folder). LoRA goes on the vision tower's q/k/v
projections by default; the teacher is the same weights with the adapters switched off.

    python examples/hf_clip.py --model openai/clip-vit-base-patch16

Run with ``--tiny`` to try the code path with a tiny random CLIP and no download.
"""

from __future__ import annotations

import argparse

import torch

from dgsnet import DGSConfig, DGSWrapper


def tiny_model_and_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import CLIPConfig, CLIPModel, PreTrainedTokenizerFast

    cfg = CLIPConfig(
        text_config=dict(
            vocab_size=64,
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
            image_size=32,
            patch_size=8,
        ),
        projection_dim=16,
    )
    words = "a photo of cat dog car in the street".split()
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3} | {w: i + 4 for i, w in enumerate(words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
    )
    return CLIPModel(cfg), tokenizer, 32


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="openai/clip-vit-base-patch16")
    p.add_argument("--tiny", action="store_true", help="tiny random CLIP, no download")
    args = p.parse_args()
    if args.tiny:
        model, tokenizer, size = tiny_model_and_tokenizer()
    else:
        from transformers import AutoModel, AutoTokenizer

        model = AutoModel.from_pretrained(args.model)
        tokenizer = AutoTokenizer.from_pretrained(args.model)
        size = model.config.vision_config.image_size

    dgs = DGSWrapper(model, tokenizer, DGSConfig(lora_targets=["q_proj", "v_proj"]))
    print(
        f"{type(model).__name__}: {len(dgs.lora_modules)} LoRA modules, "
        f"feature dim {dgs.feature_dim}"
    )
    opt = torch.optim.Adam(dgs.trainable_parameters(), lr=1e-4)
    images = torch.randn(4, 3, size, size)  # use the model's image processor on real images
    captions = ["a photo of a cat", "a dog in the street", "a car", "a photo of a dog"]
    labels = torch.tensor([0, 1, 0, 1])
    for step in range(3):
        out = dgs(images, captions, labels)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        print(f"step {step}: loss {out.loss.item():.4f}, surgery {out.stats}")


if __name__ == "__main__":
    main()
