"""`dgsnet caption`: write the caption JSON of a dataset (BLIP or templates); resumable."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from ..errors import UsageError
from .common import check_positive, check_roots, status
from .errors import EXIT_OK
from .options import Formatter, common_parent, wrap

__all__ = ["NAME", "add_parser", "run"]

NAME = "caption"

EPILOG = """\
examples:
  dgsnet caption data/AIGIBench/train                    # BLIP (pip install 'dgsnet[hf]')
  dgsnet caption data/train --template                   # "a photo of a <category>", no model
  dgsnet caption data/train --out captions.json --relative --blip-model ./blip-base

Writes the JSON file `dgsnet train` looks for (default <parent>/<split>_text/<split>.json).
Re-running the same command resumes: images already captioned in the file are skipped.
Template captions carry no per-image content and weaken the text branch (a warning says so).
"""


def add_parser(sub: Any) -> list[argparse.ArgumentParser]:
    """Add `caption` and its options to the subparsers `sub`."""
    p = sub.add_parser(
        NAME,
        parents=[common_parent()],
        formatter_class=Formatter,
        epilog=EPILOG,
        help="write the caption JSON for a dataset (BLIP or templates); resumable",
        description=wrap("Caption every image under ROOT into the JSON file `dgsnet train` reads."),
    )
    p.add_argument("root", metavar="ROOT", help="dataset folder (or any folder of images)")
    p.add_argument(
        "--out",
        "-o",
        metavar="FILE",
        help="caption JSON (default: <parent>/<split>_text/<split>.json for ROOT=<parent>/<split>)",
    )
    p.add_argument(
        "--template",
        nargs="?",
        const="",
        default=None,
        metavar="TEMPLATE",
        help='no model: template captions, default "a photo of {article} {category}" '
        "(fields: category, article)",
    )
    p.add_argument(
        "--blip-model",
        default=None,
        metavar="NAME_OR_PATH",
        help="BLIP captioning model (default: Salesforce/blip-image-captioning-base)",
    )
    p.add_argument(
        "--local-files-only", action="store_true", help="never download the BLIP weights"
    )
    p.add_argument("--batch-size", type=int, default=16, metavar="N", help="(default: 16)")
    p.add_argument("--max-new-tokens", type=int, default=30, metavar="N", help="(default: 30)")
    p.add_argument("--relative", action="store_true", help="keys relative to ROOT (portable file)")
    p.add_argument(
        "--save-every",
        type=int,
        default=1,
        metavar="BATCHES",
        help="rewrite the file every N batches (default: 1)",
    )
    p.add_argument(
        "--skip-errors", action="store_true", help="skip unreadable images instead of stopping"
    )
    p.set_defaults(func=run)
    return [p]


def _images(root: str) -> tuple[list[str], dict[str, str | None]]:
    """The images under `root` and their categories (from the dataset layout when `root`
    has one; else every image found, without categories)."""
    from ..data import list_images, open_dataset
    from ..errors import DatasetError

    try:
        ds = open_dataset(root, split="train", allow_single_class=True)
    except DatasetError:
        return list_images(root), {}
    return list(ds.paths), dict(zip(ds.paths, ds.categories, strict=True))


def _captioner(args: argparse.Namespace, categories: dict[str, str | None]) -> Any:
    from ..data import BlipCaptioner, TemplateCaptioner

    if args.template is not None:
        return TemplateCaptioner(args.template or None, categories=categories.get)
    device = None if args.device == "auto" else os.fspath(args.device)
    name = args.blip_model or BlipCaptioner.DEFAULT_MODEL
    try:
        return BlipCaptioner(
            name,
            device=device,
            max_new_tokens=args.max_new_tokens,
            local_files_only=args.local_files_only,
        )
    except ImportError as exc:
        raise UsageError(f"{exc} (or use --template)") from None
    except Exception as exc:
        raise UsageError(
            f"cannot load the BLIP model {name!r}: {' '.join(str(exc).split())[:300]} "
            "(it must be available locally without network; or use --template)"
        ) from None


def run(args: argparse.Namespace) -> int:
    """Run `dgsnet caption`; returns the exit status."""
    from ..data import caption_file_candidates, generate_captions

    check_roots([args.root])
    check_positive("--batch-size", args.batch_size)
    check_positive("--save-every", args.save_every)
    paths, categories = _images(args.root)
    if not paths:
        raise UsageError(f"{args.root} contains no images")
    out = Path(args.out) if args.out else caption_file_candidates(args.root)[0]
    captioner = _captioner(args, categories)
    status(args, f"dgsnet: captioning {len(paths)} images into {out}")
    report = generate_captions(
        paths,
        out,
        captioner,
        batch_size=args.batch_size,
        progress=not args.quiet,
        root=args.root,
        relative=args.relative,
        save_every=args.save_every,
        on_error="skip" if args.skip_errors else "raise",
    )
    status(
        args,
        f"dgsnet: {out}: {report.new} new caption(s), {report.existing} already there"
        + (f", {len(report.failed)} unreadable image(s) skipped" if report.failed else ""),
    )
    return EXIT_OK
