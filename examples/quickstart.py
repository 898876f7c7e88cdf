"""dgsnet quickstart: DGS-Net fine-tuning in your own training loop, on CPU, in about a minute.

A tiny randomly initialised open_clip model stands in for CLIP ViT-L/14 (no weights are
downloaded), and a synthetic real/fake image set stands in for ProGAN: "fake" images carry a
faint periodic up-sampling artefact, "real" ones do not. Captions are made by the script and,
as with BLIP captions of real data sets, their content is partly correlated with the label
(fakes are more often "a dog"), which is exactly the kind of semantic shortcut DGS-Net's
orthogonal suppression keeps out of the image features.

Stage 1 trains the teacher head as a linear probe on the frozen encoder; stage 2 trains LoRA
and the image/text heads with the gradient surgery. For a real run swap in::

    model, _, preprocess = open_clip.create_model_and_transforms("ViT-L-14", pretrained="openai")
    tokenizer = open_clip.get_tokenizer("ViT-L-14")
"""

from __future__ import annotations

import argparse
import random
import time

import open_clip
import torch
from tqdm.auto import tqdm

from dgsnet import DGSConfig, DGSWrapper

OBJECTS = ["cat", "dog", "car", "chair", "horse", "house", "bird", "tree"]
PLACES = ["on a street", "in a room", "in a field", "near the sea"]


def make_images(n: int, fake: bool, size: int, gen: torch.Generator) -> torch.Tensor:
    """Smooth random scenes; fakes get a faint checkerboard (a transposed-conv artefact)."""
    low = torch.randn(n, 3, size // 8, size // 8, generator=gen)
    x = torch.nn.functional.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)
    x = x + 0.1 * torch.randn(n, 3, size, size, generator=gen)
    if fake:
        yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
        checker = ((yy + xx) % 2).float() * 2 - 1
        x = x + 0.06 * checker
    return x


def make_split(n: int, size: int, seed: int) -> tuple[torch.Tensor, list[str], torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    half = n // 2
    images = torch.cat([make_images(half, False, size, gen), make_images(n - half, True, size, gen)])
    labels = torch.cat([torch.zeros(half), torch.ones(n - half)]).long()
    captions = []
    for label in labels.tolist():
        obj = "dog" if (label == 1 and rng.random() < 0.6) else rng.choice(OBJECTS)
        captions.append(f"a photo of a {obj} {rng.choice(PLACES)}")
    perm = torch.randperm(n, generator=gen)
    return images[perm], [captions[i] for i in perm.tolist()], labels[perm]


def batches(images, captions, labels, batch_size, shuffle, seed):
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed)) if shuffle \
        else torch.arange(len(labels))
    for i in range(0, len(order), batch_size):
        idx = order[i : i + batch_size]
        yield images[idx], [captions[j] for j in idx.tolist()], labels[idx], idx


def accuracy(dgs: DGSWrapper, images, labels) -> float:
    dgs.eval()
    with torch.no_grad():
        scores = torch.cat([dgs.predict(images[i : i + 64]).sigmoid().flatten()
                            for i in range(0, len(images), 64)])
    dgs.train()
    return float(((scores > 0.5).long() == labels).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=384, help="training images")
    parser.add_argument("--test", type=int, default=256, help="held-out images")
    parser.add_argument("--epochs", type=int, default=3, help="stage-2 epochs")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    start = time.perf_counter()

    size = 64
    model = open_clip.CLIP(
        embed_dim=64,
        vision_cfg=dict(image_size=size, patch_size=8, width=96, layers=4, head_width=32),
        text_cfg=dict(context_length=32, vocab_size=49408, width=64, heads=2, layers=2),
    )
    tokenizer = open_clip.get_tokenizer("ViT-B-32")  # the BPE vocabulary ships with open_clip
    config = DGSConfig.reference(lora_dropout=0.1)  # r=6, alpha=6 on q/k/v, reference surgery
    dgs = DGSWrapper(model, tokenizer, config)
    n_train = sum(p.numel() for p in dgs.trainable_parameters())
    print(f"model: tiny open_clip ViT ({len(dgs.lora_modules)} LoRA modules, {n_train} trainable "
          f"parameters); config: {config.order}, align {config.align_weight} ({config.align_scale})")

    train = make_split(args.train, size, args.seed)
    test = make_split(args.test, size, args.seed + 1)

    print("stage 1: linear probe of the frozen teacher")
    history = dgs.fit_teacher_head(
        list(batches(*train, args.batch_size, True, args.seed)), epochs=3, lr=1e-2, progress=True
    )
    print(f"  teacher-head loss per epoch: {', '.join(f'{h:.3f}' for h in history)}")
    print(f"  held-out accuracy of the teacher probe: {teacher_accuracy(dgs, *test):.3f}")
    print(f"  held-out accuracy before stage 2 (student): {accuracy(dgs, test[0], test[2]):.3f}")

    print("stage 2: LoRA + heads with gradient surgery, in a plain training loop")
    opt = torch.optim.Adam(dgs.trainable_parameters(), lr=args.lr)
    step = 0
    for epoch in range(args.epochs):
        bar = tqdm(list(batches(*train, args.batch_size, True, args.seed + epoch)),
                   desc=f"epoch {epoch + 1}/{args.epochs}")
        for images, captions, labels, index in bar:
            out = dgs(images, captions, labels, index=index)
            opt.zero_grad()
            out.loss.backward()
            opt.step()
            step += 1
            s = out.stats
            bar.set_postfix(loss=f"{out.loss.item():.3f}", removed=f"{s['removed_fraction']:.3f}",
                            cos_harm=f"{s['cos_harm']:+.2f}")
            if step % 8 == 0:
                tqdm.write(
                    f"  step {step:3d} loss {out.loss.item():.4f} (image {out.losses['image']:.3f}, "
                    f"text {out.losses['text']:.3f}, align {out.losses['align']:+.4f}) | surgery: "
                    f"removed {s['removed_fraction']:.3f} of the gradient norm, "
                    f"cos(task, harm) {s['cos_harm']:+.3f}, cos(task, help) {s['cos_help']:+.3f}"
                )
        print(f"  epoch {epoch + 1}: held-out accuracy {accuracy(dgs, test[0], test[2]):.3f}")

    acc = accuracy(dgs, test[0], test[2])
    print(f"held-out accuracy after DGS fine-tuning: {acc:.3f} "
          f"({args.test} images, {time.perf_counter() - start:.0f} s in all)")


def teacher_accuracy(dgs: DGSWrapper, images, captions, labels) -> float:
    with torch.no_grad():
        z = dgs.teacher_head(dgs.encode_teacher(images)).flatten()
    return float(((z > 0).long() == labels).float().mean())


if __name__ == "__main__":
    main()
