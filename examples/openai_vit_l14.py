r"""DGS-Net with the paper's backbone: OpenAI CLIP ViT-L/14 through open_clip.

Needs the pre-trained weights: open_clip downloads them on first use (``pretrained="openai"``)
into its cache, or reads them from a local file (``pretrained="/path/ViT-L-14.pt"``). On a
machine without internet, copy the cache (~/.cache/huggingface or the file) there first.

Data: any detection folder ``<root>/<subset>[/<category>]/{0_real,1_fake}`` with a caption
JSON (see docs/datasets.md and docs/captions.md). This script is the library-level version of
``dgsnet train``; it shows the user's-own-loop pattern with the reference preset.

    python examples/openai_vit_l14.py --train /data/AIGIBench/train \
        --captions /data/AIGIBench/train_text/train.json
"""

from __future__ import annotations

import argparse

import open_clip
import torch
from torch.utils.data import DataLoader

from dgsnet import DGSConfig, DGSWrapper
from dgsnet.data import DetectionFolder, collate, load_captions


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", required=True, help="training root (0_real/1_fake layout)")
    p.add_argument("--captions", required=True, help="caption JSON keyed by image path")
    p.add_argument("--out", default="runs/vit_l14")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--pretrained", default="openai", help="open_clip tag or a local weights file")
    args = p.parse_args()

    model, _, preprocess = open_clip.create_model_and_transforms(
        "ViT-L-14", pretrained=args.pretrained
    )
    tokenizer = open_clip.get_tokenizer("ViT-L-14")
    dgs = DGSWrapper(model, tokenizer, DGSConfig.reference()).to(args.device)

    data = DetectionFolder(args.train, transform=preprocess, captions=load_captions(args.captions))
    loader = DataLoader(data, batch_size=32, shuffle=True, num_workers=4, collate_fn=collate)

    def on_device(loader):
        for images, captions, labels, index, _subsets in loader:
            yield images.to(args.device), captions, labels.to(args.device), index

    # stage 1: the teacher head as a linear probe on frozen features (3 epochs in the paper)
    dgs.fit_teacher_head(on_device(loader), epochs=1, lr=1e-4, progress=True)
    # stage 2: LoRA + heads with the surgery (1 epoch in the paper)
    opt = torch.optim.Adam(dgs.trainable_parameters(), lr=1e-4, betas=(0.9, 0.999))
    for step, (images, captions, labels, index) in enumerate(on_device(loader)):
        # preprocess is deterministic here (no random flip), so the index may key the teacher cache
        out = dgs(images, captions, labels, index=index)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        if step % 50 == 0:
            print(step, {k: round(float(v), 4) for k, v in out.losses.items()}, out.stats)
    dgs.save_pretrained(args.out)
    print("saved to", args.out)


if __name__ == "__main__":
    main()
