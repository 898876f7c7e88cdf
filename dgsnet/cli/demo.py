"""`dgsnet demo`: the quickstart of `dgsnet.demo` (tiny random CLIP, synthetic data)."""

from __future__ import annotations

import argparse
from typing import Any

from .errors import EXIT_OK
from .options import Formatter, wrap

__all__ = ["NAME", "add_parser", "run"]

NAME = "demo"

EPILOG = """\
examples:
  dgsnet demo                       # about a minute on a CPU
  dgsnet demo --train 128 --test 64 --epochs 1 --no-progress

The same program as `python -m dgsnet.demo`: nothing is downloaded and no data is read.
"""


def add_parser(sub: Any) -> list[argparse.ArgumentParser]:
    """Add `demo` and the options of `dgsnet.demo.build_parser` to the subparsers
    `sub`."""
    from .. import demo

    p = sub.add_parser(
        NAME,
        formatter_class=Formatter,
        epilog=EPILOG,
        help="DGS-Net on a tiny random CLIP and synthetic images, on CPU, in about a minute",
        description=wrap(
            "Run the dgsnet quickstart: stage 1 (teacher probe) and stage 2 (LoRA + heads "
            "with the gradient surgery) of DGS-Net on a tiny randomly initialised CLIP and a "
            "synthetic real/fake image set, printing the losses, the surgery statistics and "
            "the held-out accuracy."
        ),
    )
    demo.build_parser(p)
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    p.set_defaults(func=run)
    return [p]


def run(args: argparse.Namespace) -> int:
    """Run `dgsnet demo` (`dgsnet.demo.run` with the parsed options)."""
    from .. import demo

    demo.run(
        train=args.train,
        test=args.test,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        progress=not args.no_progress,
    )
    return EXIT_OK
