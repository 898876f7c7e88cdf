"""`dgsnet import-released`: turn a released DGS-Net checkpoint into a dgsnet run folder."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import UsageError
from .common import status
from .errors import EXIT_OK
from .options import Formatter, add_status_options, wrap

__all__ = ["NAME", "add_parser", "run"]

NAME = "import-released"

EPILOG = """\
examples:
  # the authors' stage-2 weights -> a run folder for `dgsnet eval` / `dgsnet predict`:
  dgsnet import-released model_epoch_step2.pth -o runs/released
  dgsnet predict runs/released photo.jpg

  # refer to the OpenAI weights in the local cache instead of storing the file's copy:
  dgsnet import-released model_epoch_step2.pth -o runs/released --model ViT-L-14-quickgelu@openai

  # the stage-1 file (teacher head only): start stage 2 from it
  dgsnet import-released model_epoch_step1.pth -o runs/stage1
  dgsnet train data/train -o runs/stage2 --stage 2 --init-from runs/stage1

The file is read with torch.load(weights_only=True) (no code in it is run). Merged (saved in
eval mode) and unmerged files are both accepted; the folder's released_import.json says which
one was found. The user guide's released-checkpoints page has the details.
"""


def add_parser(sub: Any) -> list[argparse.ArgumentParser]:
    """Add `import-released` and its options to the subparsers `sub`."""
    from ..interop import RELEASED_ALPHA

    p = sub.add_parser(
        NAME,
        formatter_class=Formatter,
        epilog=EPILOG,
        help="turn a released DGS-Net checkpoint (.pth) into a dgsnet run folder",
        description=wrap(
            "Read a checkpoint released with the DGS-Net code (model_epoch_step1.pth or "
            "model_epoch_step2.pth, a torch.save of the model's state dict), check every key "
            "and shape, and write a dgsnet run folder (final/ weights, the preprocessing, "
            "released_import.json) that `dgsnet eval` and `dgsnet predict` accept."
        ),
    )
    p.add_argument("path", metavar="PATH", help="the released .pth file")
    p.add_argument(
        "--out",
        "-o",
        metavar="RUN_DIR",
        required=True,
        help="the run folder to create (must not exist)",
    )
    p.add_argument(
        "--model",
        metavar="SPEC",
        default=None,
        help="open_clip model spec whose weights equal the file's pristine CLIP (checked); "
        "the folder then refers to it (default: store the file's CLIP in the folder; nothing "
        "is downloaded)",
    )
    p.add_argument(
        "--alpha",
        type=float,
        default=RELEASED_ALPHA,
        help=f"the LoRA alpha the file was trained with, not stored in it (default: "
        f"{RELEASED_ALPHA:g}, the released value)",
    )
    add_status_options(p)
    p.set_defaults(func=run)
    return [p]


def run(args: argparse.Namespace) -> int:
    """Run `dgsnet import-released`; returns the exit status.

    Raises:
        UsageError: `--out` exists or is a symbolic link, `--alpha` is not a number in
            (0, 1e4], or the file is not a released checkpoint (the reading error's message,
            one line).
    """
    from ..interop import import_released
    from ..interop.reading import check_alpha

    try:
        check_alpha(args.alpha)
    except ValueError as exc:
        raise UsageError(f"--{exc}") from None
    if not Path(args.path).is_file():
        raise UsageError(f"released checkpoint {args.path} does not exist or is not a file")
    try:
        info = import_released(args.path, args.out, model=args.model, alpha=args.alpha)
    except FileExistsError as exc:  # no filename: the contract would show a traceback
        raise UsageError(str(exc)) from None
    if info.stage == 1:
        what = "stage 1: the teacher head"
    else:
        found = {True: "merged", False: "unmerged", None: "B = 0"}[info.merged]
        what = f"stage 2, {found} q/k/v weights, LoRA rank {info.rank}, scaling {info.scaling:.4g}"
    status(args, f"dgsnet: imported {args.path} ({what}) into {args.out}")
    return EXIT_OK
