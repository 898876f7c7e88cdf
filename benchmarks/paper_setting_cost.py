#!/usr/bin/env python
"""FLOPs and activation memory of the paper setting's training step (docs/paper-setting.md).

Builds open_clip ViT-L-14 with random weights (no download), wraps it with
``DGSConfig.reference()`` (LoRA r=6 on q/k/v of every block) and counts, per image:

* the teacher forward (adapters off, no grad): stage 1 runs it in every epoch;
* the text tower on one caption (77 tokens): once per caption before stage 2;
* the student forward + backward alone, and a whole first-epoch DGS step (student forward and
  backward, teacher forward, text tower): stage 2;
* the bytes of the tensors autograd saves for the backward of the student (parameters
  excluded): the activation memory per image of a training step, in float32.

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` (matmuls, convolutions,
attention; 2 FLOPs per multiply-add). Nothing here is timed: the page turns these counts into
time estimates with the GPUs' published peak rates.

    .venv/bin/python benchmarks/paper_setting_cost.py            # about a minute on 2 cores
"""

from __future__ import annotations

import argparse

import open_clip
import torch
from torch.utils.flop_counter import FlopCounterMode

from dgsnet import DGSConfig, DGSWrapper


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="ViT-L-14")
    p.add_argument("--batch", type=int, default=2)
    args = p.parse_args()
    torch.manual_seed(0)
    model = open_clip.create_model(args.model, pretrained=None)
    n_image = sum(p.numel() for p in model.visual.parameters())
    n_all = sum(p.numel() for p in model.parameters())
    wrapper = DGSWrapper(model, open_clip.get_tokenizer(args.model), DGSConfig.reference())
    wrapper.train()
    n_train = sum(p.numel() for p in wrapper.trainable_parameters())
    params = {p.untyped_storage().data_ptr() for p in wrapper.parameters()}
    size = wrapper.encoder.image_size or (224, 224)
    b = args.batch
    x = torch.randn(b, 3, *size)
    captions = [f"a photo of object number {i} on a table" for i in range(b)]
    labels = torch.tensor([i % 2 for i in range(b)])
    print(
        f"{args.model}: image tower {n_image / 1e6:.1f} M parameters, whole model "
        f"{n_all / 1e6:.1f} M, trainable (LoRA + heads) {n_train / 1e6:.3f} M"
    )

    def gflop(fn) -> float:
        with FlopCounterMode(display=False) as counter:
            fn()
        return counter.get_total_flops() / b / 1e9

    with torch.no_grad():
        teacher = gflop(lambda: wrapper.encode_teacher(x))
        text = gflop(lambda: wrapper.encode_text(captions))
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    def student() -> None:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            feats = wrapper.encode_student(x)
        feats.float().sum().backward()

    student_step = gflop(student)
    wrapper.zero_grad(set_to_none=True)
    wrapper.clear_caches()
    dgs_step = gflop(lambda: wrapper(x, captions, labels).loss.backward())
    print(
        f"per image: teacher forward {teacher:.1f} GFLOP, text tower {text:.1f} GFLOP per "
        f"caption, student forward+backward {student_step:.1f} GFLOP, whole DGS step "
        f"(first epoch) {dgs_step:.1f} GFLOP"
    )
    print(
        f"activations saved for the student's backward: "
        f"{sum(saved.values()) / b / 2**20:.0f} MiB per image (float32)"
    )


if __name__ == "__main__":
    main()
