"""The study's "pre-trained CLIP": a small open_clip model trained contrastively (CLIP's
symmetric InfoNCE) on the world's image-caption pairs.

The pre-training set has no labels and no generator fingerprints: random scenes, each in two
of three looks (camera photo, grainy photo, digital rendering), captioned from their content
and their look (:func:`world.pretraining_set`). The trained weights are written as
safetensors (with the settings and the code's digest in a JSON beside), so repeated study runs
made with the same settings and code reuse them.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F

from dgsnet.io import atomic_write_json, load_tensors, save_tensors

from . import world

CONTEXT = 32
MEAN, STD = 0.5, 0.25


@dataclass(frozen=True)
class PriorSpec:
    """How the prior is built (recorded beside its weights)."""

    pairs: int = 12000
    epochs: int = 8
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup: int = 50
    width: int = 64
    layers: int = 4
    embed_dim: int = 64
    seed: int = 0


def build_model(spec: PriorSpec) -> open_clip.CLIP:
    return open_clip.CLIP(
        embed_dim=spec.embed_dim,
        vision_cfg=dict(
            image_size=world.SIZE, patch_size=4, width=spec.width, layers=spec.layers, head_width=32
        ),
        text_cfg=dict(context_length=CONTEXT, vocab_size=49408, width=64, heads=4, layers=2),
    )


def tokenizer() -> open_clip.tokenizer.SimpleTokenizer:
    return open_clip.tokenizer.SimpleTokenizer(context_length=CONTEXT)


def to_input(images: torch.Tensor) -> torch.Tensor:
    """Pixel values in [0, 1] -> the model's input."""
    return (images - MEAN) / STD


def pretrain(spec: PriorSpec, log=print) -> tuple[open_clip.CLIP, dict]:
    torch.manual_seed(spec.seed)
    model = build_model(spec)
    images, captions = world.pretraining_set(spec.pairs + 512, spec.seed)
    tokens = tokenizer()(captions)
    held_img, held_tok = images[-512:], tokens[-512:]
    images, tokens = images[:-512], tokens[:-512]
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    steps_per_epoch = len(images) // spec.batch_size
    total = spec.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            min(1.0, (s + 1) / spec.warmup) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total))
        ),
    )
    gen = torch.Generator().manual_seed(spec.seed + 1)
    model.train()
    t0 = time.time()
    history = []
    for epoch in range(spec.epochs):
        # shuffle scenes, keeping each scene's two looks in the same batch
        perm = (2 * torch.randperm(len(images) // 2, generator=gen)).repeat_interleave(2)
        perm[1::2] += 1
        run = 0.0
        for i in range(steps_per_epoch):
            idx = perm[i * spec.batch_size : (i + 1) * spec.batch_size]
            img_f, txt_f, scale = model(to_input(images[idx]), tokens[idx])
            logits = scale * img_f @ txt_f.T
            target = torch.arange(len(idx))
            loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            run += float(loss.detach())
        history.append(run / steps_per_epoch)
        log(
            f"  prior epoch {epoch + 1}/{spec.epochs}: contrastive loss {history[-1]:.3f} "
            f"({time.time() - t0:.0f} s)"
        )
    model.eval()
    report = {
        "loss_per_epoch": history,
        "retrieval@1_of_512": retrieval(model, held_img, held_tok),
        "seconds": time.time() - t0,
    }
    log(
        f"  prior: held-out image->text retrieval top-1 among 512: "
        f"{report['retrieval@1_of_512']:.3f} (chance 0.002)"
    )
    return model, report


@torch.no_grad()
def retrieval(model: open_clip.CLIP, images: torch.Tensor, tokens: torch.Tensor) -> float:
    img = F.normalize(model.encode_image(to_input(images)), dim=-1)
    txt = F.normalize(model.encode_text(tokens), dim=-1)
    return float(((img @ txt.T).argmax(1) == torch.arange(len(img))).float().mean())


def source_digest() -> str:
    """sha256 of the code that makes the prior (this module and the world)."""
    h = hashlib.sha256()
    for mod in (world.__file__, __file__):
        h.update(Path(mod).read_bytes())
    return h.hexdigest()


def load_or_pretrain(spec: PriorSpec, folder: Path, log=print) -> tuple[open_clip.CLIP, dict]:
    """The prior for ``spec``: loaded from ``folder`` when it holds one made with the same
    spec by the same code, else pre-trained and written there."""
    weights, meta_path = folder / "prior.safetensors", folder / "prior.json"
    if weights.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("spec") == asdict(spec) and meta.get("source_sha256") == source_digest():
            model = build_model(spec)
            model.load_state_dict(load_tensors(weights, meta.get("sha256")))
            model.eval()
            log(f"  prior: loaded {weights}")
            return model, meta["report"]
        log(f"  prior: {meta_path} was made with other settings or code; pre-training again")
    model, report = pretrain(spec, log)
    folder.mkdir(parents=True, exist_ok=True)
    sha = save_tensors(weights, model.state_dict())
    atomic_write_json(
        meta_path,
        {"spec": asdict(spec), "report": report, "sha256": sha, "source_sha256": source_digest()},
    )
    return model, report
