"""`dgsnet eval` for a checkpoint with more than one class: top-1 and per-class accuracy.

A head with `num_classes > 1` logits has no probability of "fake", so the detection metrics
(acc at a threshold, r_acc, f_acc, AP) do not apply to it. Its test roots are class folders
(`dgsnet.data.ClassFolder`), and each root gives a `ClassificationReport`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from ..errors import UsageError
from .common import status

__all__ = ["add_classes_option", "evaluation_options", "run_classifier"]

#: `dgsnet eval` options that only mean something for a binary real/fake head
_DETECTION_ONLY = (
    ("plot", "--plot"),
    ("allow_single_class", "--allow-single-class"),
    ("subsets", "--subsets"),
)


def add_classes_option(g: Any) -> None:
    """`--classes NAME...`: the label order of a classifier's class folders."""
    g.add_argument(
        "--classes",
        nargs="+",
        metavar="NAME",
        help="a checkpoint with more than one class: the class folder names in label order "
        "(default: the root's class folders, sorted)",
    )


def evaluation_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments that `dgsnet eval` gives both `evaluate` (a binary head) and
    `evaluate_classifier`: the degradations, the batch size and workers, the progress bar
    and the precision. (Here rather than in `eval`, which imports this module.)"""
    return {
        "jpeg_quality": args.jpeg_quality,
        "blur_sigma": args.blur_sigma,
        "resize_scale": args.resize_scale,
        "batch_size": args.batch_size,
        "num_workers": args.workers,
        "progress": not args.quiet,
        "precision": args.precision,
    }


def run_classifier(args: argparse.Namespace, wrapper: Any, bundle: Any, degradation: str) -> None:
    """Evaluate a classifier checkpoint on `args.roots`: print one report per root, and
    write `--csv` / `--json`.

    Raises:
        UsageError: a detection-only option was given.
    """
    given = [flag for dest, flag in _DETECTION_ONLY if getattr(args, dest, None)]
    if given:
        raise UsageError(
            f"{', '.join(given)} apply to binary real/fake heads; this checkpoint has "
            f"{wrapper.config.num_classes} classes (it is evaluated by top-1 and per-class "
            "accuracy)"
        )
    from ..training import evaluate_classifier

    reports = evaluate_classifier(
        wrapper,
        args.roots,
        bundle.eval_transform,
        classes=args.classes,
        **evaluation_options(args),
    )
    for i, (root, report) in enumerate(reports.items()):
        if i:
            print()
        print(f"## {root} ({degradation})")
        print()
        print(
            f"top-1 accuracy {100 * report.top1:.1f}, mean per-class accuracy "
            f"{100 * report.mean_class_accuracy:.1f} ({report.n} images, "
            f"{len(report.classes)} classes)"
        )
        print()
        print(report.to_markdown())
    sys.stdout.flush()
    _write(args, reports, degradation)


def _write(args: argparse.Namespace, reports: dict[str, Any], degradation: str) -> None:
    from ..io import atomic_write_json, atomic_write_text
    from ..metrics import reports_csv

    if args.csv:
        atomic_write_text(Path(args.csv), reports_csv(reports, degradation))
        status(args, f"dgsnet: wrote {args.csv}")
    if args.json:
        atomic_write_json(
            Path(args.json),
            {
                "format": "dgsnet.eval_classes",
                "version": 1,
                "checkpoint": os.fspath(args.checkpoint),
                "degradation": degradation,
                "roots": [{"root": root, "report": r.to_dict()} for root, r in reports.items()],
            },
        )
        status(args, f"dgsnet: wrote {args.json}")
