"""`dgsnet train`'s validation options: `--val`, `--val-fraction`, `--val-every`,
`--val-metric`, `--patience` (see `dgsnet.training.monitor`)."""

from __future__ import annotations

import argparse
from typing import Any

from ..training.options import VAL_METRICS
from .common import check_roots

__all__ = ["add_validation_options", "open_validation"]


def add_validation_options(g: argparse._ArgumentGroup) -> None:
    """Add the validation options to the argument group `g`."""
    g.add_argument(
        "--val",
        nargs="+",
        metavar="ROOT",
        help="validation folder(s), same layouts as the training roots, scored with the "
        "evaluation transform after every epoch (or --val-every steps)",
    )
    g.add_argument(
        "--val-fraction",
        type=float,
        default=0.0,
        metavar="F",
        help="hold out this share of the training images for validation instead (per label, "
        "seeded; default: 0, none)",
    )
    g.add_argument(
        "--val-every",
        type=int,
        default=0,
        metavar="STEPS",
        help="validate every STEPS stage-2 steps (default: 0, at every epoch end)",
    )
    g.add_argument(
        "--val-metric",
        choices=VAL_METRICS,
        default="auto",
        help="the metric that picks OUT/best/ and the early stop, higher is better "
        "(default: auto = acc)",
    )
    g.add_argument(
        "--patience",
        type=int,
        default=0,
        metavar="N",
        help="stop after N validations without improvement (default: 0, never)",
    )


def open_validation(args: argparse.Namespace, bundle: Any) -> list[Any] | None:
    """The `--val` datasets, with the evaluation transform and no captions; `None` without
    `--val`."""
    if not args.val:
        return None
    from ..training import open_datasets

    check_roots(args.val, "validation root")
    return list(open_datasets(args.val, bundle.eval_transform, captions=None, split="val"))
