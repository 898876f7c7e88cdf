"""`dgsnet tsne` (alias `features`): t-SNE of teacher vs student features, real vs fake."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import UsageError
from .common import check_positive, check_roots, load_checkpoint, status
from .errors import EXIT_OK
from .options import Formatter, add_model_options, common_parent, wrap

__all__ = ["NAME", "add_parser", "run"]

NAME = "tsne"

EPILOG = """\
examples:
  dgsnet tsne runs/dgs data/test --out tsne.png
  dgsnet tsne runs/dgs data/test --out tsne.png --max-per-class 300 --save-features feats.npz

Two panels, as in the paper's Figure 1: t-SNE of the teacher's (pre-trained CLIP, adapters
off) and the student's (DGS fine-tuned) image features, real vs fake. Needs the viz extra
(pip install 'dgsnet[viz]').
"""


def add_parser(sub: Any) -> list[argparse.ArgumentParser]:
    """Add `tsne` (and its alias `features`) to the subparsers `sub`."""
    p = sub.add_parser(
        NAME,
        aliases=["features"],
        parents=[common_parent()],
        formatter_class=Formatter,
        epilog=EPILOG,
        help="t-SNE of teacher vs student features, real vs fake (PNG)",
        description=wrap(
            "Feature map of a trained run: t-SNE of the teacher's and the student's image "
            "features on a test folder, coloured real / fake."
        ),
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="training folder or checkpoint folder")
    p.add_argument("root", metavar="ROOT", help="image folder with real and fake images")
    p.add_argument("--out", "-o", metavar="PNG", required=True, help="the figure")
    p.add_argument(
        "--max-per-class",
        type=int,
        default=250,
        metavar="N",
        help="random images per class (default: 250)",
    )
    p.add_argument(
        "--perplexity",
        type=float,
        default=None,
        help="t-SNE perplexity (default: min(30, (n-1)/3))",
    )
    p.add_argument("--seed", type=int, default=0, metavar="N", help="(default: 0)")
    p.add_argument("--batch-size", type=int, default=64, metavar="N", help="(default: 64)")
    p.add_argument("--subsets", nargs="+", metavar="NAME", help="these subsets only")
    p.add_argument(
        "--split", choices=("train", "val"), default="val", help="GenImage split (default: val)"
    )
    p.add_argument(
        "--save-features", metavar="NPZ", help="also save the features and labels (numpy .npz)"
    )
    add_model_options(p.add_argument_group("model"), train=False)
    p.set_defaults(func=run)
    return [p]


def _sample(args: argparse.Namespace, labels: Any) -> list[int]:
    """Up to `--max-per-class` random indices of each class (seeded, sorted per class)."""
    import numpy as np

    rng = np.random.default_rng(args.seed)
    labels = np.asarray(labels)
    chosen: list[int] = []
    for cls in (0, 1):
        idx = np.flatnonzero(labels == cls)
        if len(idx) > args.max_per_class:
            idx = np.sort(rng.choice(idx, size=args.max_per_class, replace=False))
        chosen.extend(idx.tolist())
    if len(chosen) < 5:
        raise UsageError(f"{args.root} holds {len(chosen)} images; t-SNE needs at least 5")
    return chosen


def _features(args: argparse.Namespace, wrapper: Any, ds: Any, chosen: list[int]) -> Any:
    """`(features {"teacher", "student"}, labels, subsets)` of the chosen images."""
    import numpy as np
    import torch
    from torch.utils.data import DataLoader, Subset

    from ..data import collate

    loader = DataLoader(Subset(ds, chosen), batch_size=args.batch_size, collate_fn=collate)
    teacher, student, ys, subsets = [], [], [], []
    with torch.no_grad():
        for batch in loader:
            images = batch.images.to(wrapper.device)
            teacher.append(wrapper.encode_teacher(images).float().cpu().numpy())
            student.append(wrapper.encode_student(images).float().cpu().numpy())
            ys.append(batch.labels.numpy())
            subsets.extend(batch.subsets)
    feats = {"teacher": np.concatenate(teacher), "student": np.concatenate(student)}
    return feats, np.concatenate(ys), subsets


def run(args: argparse.Namespace) -> int:
    """Run `dgsnet tsne`; returns the exit status."""
    import numpy as np

    from ..data import open_dataset
    from ..plots import require_tsne, tsne_embedding, tsne_figure

    check_roots([args.root])
    check_positive("--max-per-class", args.max_per_class, 2)
    check_positive("--batch-size", args.batch_size)
    try:
        require_tsne()
    except ImportError as exc:
        raise UsageError(str(exc)) from None
    wrapper, bundle = load_checkpoint(args)
    kwargs: dict[str, Any] = {"transform": bundle.eval_transform}
    if args.subsets:
        kwargs["subsets"] = args.subsets
    ds = open_dataset(args.root, split=args.split, **kwargs)
    chosen = _sample(args, ds.labels)
    status(args, f"dgsnet: features of {len(chosen)} images")
    feats, y, subsets = _features(args, wrapper, ds, chosen)
    n = len(y)
    perplexity = (
        args.perplexity if args.perplexity is not None else max(1.0, min(30.0, (n - 1) / 3))
    )
    if not 0 < perplexity < n:
        raise UsageError(f"--perplexity must be in (0, {n}) for {n} images, got {perplexity}")
    emb = {}
    for name, f in feats.items():
        status(args, f"dgsnet: t-SNE of the {name} features")
        emb[name] = tsne_embedding(f, perplexity, seed=args.seed)
    if args.save_features:
        np.savez(
            args.save_features,
            teacher=feats["teacher"],
            student=feats["student"],
            labels=y,
            teacher_tsne=emb["teacher"],
            student_tsne=emb["student"],
            subsets=np.asarray(subsets, dtype=str),
        )
    tsne_figure(emb, y, args.out, f"t-SNE of image features: {Path(args.root).name}")
    status(args, f"dgsnet: wrote {args.out}")
    return EXIT_OK
