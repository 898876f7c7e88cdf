"""`dgsnet plot`: PNG training curves of a run from its `train_log.jsonl`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import UsageError
from .common import status
from .errors import EXIT_OK
from .options import Formatter, add_status_options, wrap

__all__ = ["NAME", "add_parser", "run"]

NAME = "plot"

EPILOG = """\
examples:
  dgsnet plot runs/dgs                 # PNGs in runs/dgs/plots/
  dgsnet plot runs/dgs -o figures/dgs

Writes losses.png (the total loss and its parts: image, text, align, teacher, distill as
logged), removed_fraction.png (the fraction of the gradient norm the surgery removed),
cosines.png (cos(task, harm) and cos(task, help)), lr.png, and run.png with all of them.
Needs the viz extra (pip install 'dgsnet[viz]').
"""


def add_parser(sub: Any) -> list[argparse.ArgumentParser]:
    """Add `plot` and its options to the subparsers `sub`."""
    p = sub.add_parser(
        NAME,
        formatter_class=Formatter,
        epilog=EPILOG,
        help="PNG curves of a run's losses, surgery statistics and learning rate",
        description=wrap(
            "Draw the training curves of a run from RUN_DIR/train_log.jsonl, one value per "
            "logged stage-2 step."
        ),
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a training folder (or its train_log.jsonl)")
    p.add_argument(
        "--out", "-o", metavar="DIR", help="folder for the PNGs (default: RUN_DIR/plots)"
    )
    add_status_options(p)
    p.set_defaults(func=run)
    return [p]


def run(args: argparse.Namespace) -> int:
    """Run `dgsnet plot`; returns the exit status.

    Raises:
        UsageError: no run log at RUN_DIR, a damaged log, a log without stage-2 steps, or
            matplotlib missing.
    """
    from ..plots import pyplot, run_figures

    if not Path(args.run_dir).exists():
        raise UsageError(f"run folder {args.run_dir} does not exist")
    try:
        pyplot()
        curves = run_figures(args.run_dir, args.out)
    except (ImportError, FileNotFoundError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    src = Path(args.run_dir)
    out = Path(args.out) if args.out else (src.parent if src.is_file() else src) / "plots"
    names = ", ".join(f"{k}.png" for k in [*curves, "run"])
    status(args, f"dgsnet: wrote {names} to {out}")
    return EXIT_OK
