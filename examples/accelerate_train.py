"""DGS-Net fine-tuning with Hugging Face Accelerate: one script for CPU, one GPU, many GPUs.

Run it as is (one process), or launch it on several processes::

    python examples/accelerate_train.py --tiny --steps 20
    accelerate launch --num_processes 2 examples/accelerate_train.py --data /data/AIGIBench/train
    torchrun --nproc_per_node 2 examples/accelerate_train.py --tiny --cpu      # 2 CPU processes

``--tiny`` uses a small randomly initialised open_clip model and synthetic real/fake images
(nothing is downloaded); otherwise ``--model``/``--pretrained`` name an open_clip model and
``--data`` a folder in the ``<subset>/{0_real,1_fake}`` layout with a caption file found by
``dgsnet.data.find_caption_file``.

What Accelerate does here, and why it is safe for the surgery (see docs/scaling.md):

* ``prepare`` wraps the :class:`~dgsnet.DGSWrapper` in ``DistributedDataParallel`` when there
  are several processes and shards the data loader; gradients are averaged over processes.
  The default ``align_scale="invariant"`` below makes the averaged step equal to the step of
  one process on the whole global batch (the reference ``lambda/B`` scaling would weight the
  alignment by the per-process batch instead).
* ``--mixed-precision bf16|fp16`` runs the forward under autocast (fp16 adds a loss scaler):
  the alignment is a loss term and the projection is linear in the incoming gradient, so
  both commute with loss scaling.
* ``--grad-accum k`` accumulates ``k`` micro-batches per optimizer step
  (``accelerator.accumulate`` divides the loss by ``k`` and skips the all-reduce in between).

Stage 1 (the teacher head's linear probe) runs before ``prepare`` on every process over the
same, unsharded data with the same seed, so every process holds the same teacher head and the
same teacher cache. The script writes ``summary.json`` (losses, the final weights' checksum)
and, on the main process, the checkpoint (``save_pretrained``) to ``--out``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from dgsnet import DGSConfig, DGSWrapper

OBJECTS = ["cat", "dog", "car", "chair", "horse", "house", "bird", "tree"]


class SyntheticPairs(Dataset):
    """Deterministic real/fake images (fakes carry a faint checkerboard) with captions."""

    def __init__(self, n: int, size: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        low = torch.randn(n, 3, size // 8, size // 8, generator=g)
        x = torch.nn.functional.interpolate(
            low, size=(size, size), mode="bilinear", align_corners=False
        )
        self.labels = torch.arange(n) % 2
        yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
        checker = ((yy + xx) % 2).float() * 2 - 1
        self.images = x + 0.1 * self.labels.view(-1, 1, 1, 1) * checker
        pick = torch.randint(len(OBJECTS), (n,), generator=g).tolist()
        self.captions = [f"a photo of a {OBJECTS[i]}" for i in pick]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.images[i], self.captions[i], int(self.labels[i]), i


def tiny_model(seed: int = 0):
    import open_clip

    torch.manual_seed(seed)
    model = open_clip.CLIP(
        embed_dim=16,
        vision_cfg=dict(image_size=32, patch_size=8, width=32, layers=2, head_width=16),
        text_cfg=dict(context_length=16, vocab_size=49408, width=32, heads=2, layers=1),
    )
    return model, open_clip.get_tokenizer("ViT-B-32"), 32


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="tiny random model + synthetic data")
    p.add_argument("--model", default="ViT-L-14")
    p.add_argument("--pretrained", default="openai")
    p.add_argument("--data", help="training folder (<subset>/{0_real,1_fake}) with captions")
    p.add_argument("--samples", type=int, default=64, help="synthetic images (--tiny)")
    p.add_argument("--batch-size", type=int, default=8, help="per process")
    p.add_argument("--steps", type=int, default=10, help="optimizer steps")
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--stage1-epochs", type=int, default=1)
    p.add_argument("--stage1-batch-size", type=int, default=32)
    p.add_argument("--align-scale", choices=["invariant", "reference"], default="invariant")
    p.add_argument("--lora-dropout", type=float, default=0.0)
    p.add_argument("--mixed-precision", choices=["no", "bf16", "fp16"], default="no")
    p.add_argument("--cpu", action="store_true", help="force the CPU (also on a GPU machine)")
    p.add_argument("--no-shuffle", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="accelerate_run")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    args = parse_args(argv)
    accelerator = Accelerator(
        cpu=args.cpu or not torch.cuda.is_available(),
        mixed_precision=args.mixed_precision,
        gradient_accumulation_steps=args.grad_accum,
    )
    set_seed(args.seed)

    if args.tiny:
        model, tokenizer, size = tiny_model(args.seed)
        dataset = SyntheticPairs(args.samples, size, args.seed)
    else:
        import open_clip

        from dgsnet.data import DetectionFolder, default_transform

        if not args.data:
            raise SystemExit("--data is required without --tiny")
        model, _, preprocess = open_clip.create_model_and_transforms(
            args.model, pretrained=args.pretrained
        )
        tokenizer = open_clip.get_tokenizer(args.model)
        ds = DetectionFolder(
            args.data, transform=default_transform(preprocess, train=True), captions="auto"
        )
        # (image, caption, label, index) tuples; a real run would wrap ds with a collate_fn
        dataset = [(s.image, s.caption, s.label, s.index) for s in ds]

    config = DGSConfig.reference(align_scale=args.align_scale, lora_dropout=args.lora_dropout)
    dgs = DGSWrapper(model, tokenizer, config).to(accelerator.device)

    # stage 1 on every process, same data, same seed: identical teacher heads and caches
    probe = DataLoader(dataset, batch_size=args.stage1_batch_size, shuffle=False)
    history = dgs.fit_teacher_head(probe, epochs=args.stage1_epochs, lr=1e-2)

    loader = DataLoader(
        dataset,
        batch_size=args.batch_size,
        shuffle=not args.no_shuffle,
        generator=torch.Generator().manual_seed(args.seed),
        drop_last=True,
    )
    optimizer = torch.optim.Adam(dgs.trainable_parameters(), lr=args.lr)
    model_ddp, optimizer, loader = accelerator.prepare(dgs, optimizer, loader)
    dgs = accelerator.unwrap_model(model_ddp)

    losses: list[float] = []
    step = 0
    model_ddp.train()
    while step < args.steps:
        for images, captions, labels, index in loader:
            with accelerator.accumulate(model_ddp):
                out = model_ddp(images, list(captions), labels, index=index)
                accelerator.backward(out.loss)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            if accelerator.sync_gradients:
                loss = accelerator.reduce(out.loss.detach().float(), reduction="mean")
                losses.append(float(loss))
                step += 1
                if accelerator.is_main_process and (step % 5 == 0 or step == args.steps):
                    print(f"step {step:4d}  loss {losses[-1]:.4f}  stats {out.stats}", flush=True)
                if step >= args.steps:
                    break

    accelerator.wait_for_everyone()
    weights = torch.cat([p.detach().float().flatten().cpu() for p in dgs.trainable_parameters()])
    summary = {
        "rank": accelerator.process_index,
        "world_size": accelerator.num_processes,
        "distributed_type": str(accelerator.distributed_type),
        "mixed_precision": accelerator.mixed_precision,
        "stage1": history,
        "losses": losses,
        "finite": all(math.isfinite(v) for v in losses),
        "weights_sha256": hashlib.sha256(weights.numpy().tobytes()).hexdigest(),
    }
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"summary_rank{accelerator.process_index}.json").write_text(json.dumps(summary))
    if accelerator.is_main_process:
        dgs.save_pretrained(out_dir / "checkpoint")
    accelerator.end_training()
    return summary


if __name__ == "__main__":
    main()
