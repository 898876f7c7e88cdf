"""`dgsnet eval`: per-subset acc / r_acc / f_acc / AP tables of a checkpoint on test folders."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..training.workers import default_workers
from .common import check_positive, check_roots, load_checkpoint, status
from .errors import EXIT_OK
from .eval_classes import add_classes_option, evaluation_options
from .options import Formatter, add_scoring_options, common_parent, wrap
from .train_flags import flag_error

__all__ = ["NAME", "add_parser", "run"]

NAME = "eval"

EPILOG = """\
examples:
  dgsnet eval runs/dgs data/UniversalFakeDetect data/AIGCDetectBenchmark --csv results.csv
  dgsnet eval runs/dgs/final data/test --jpeg-quality 75 --json jpeg75.json
  dgsnet eval runs/dgs data/test --blur-sigma 1.0 --resize-scale 0.5 --plot acc.png

CHECKPOINT is a training folder (its final/, else last/) or a checkpoint folder. Each ROOT is
<root>/<subset>[/<category>]/{0_real,1_fake} (or GenImage's layout): one table row per subset.
With several roots a last table gives each root's mean row (one row per benchmark).
A checkpoint with more than one class (DGSConfig.num_classes > 1) is a classifier: each ROOT
is then <root>/<class>/... (class folders), and the report is the top-1 accuracy and the
accuracy within each class.
"""


def add_parser(sub: Any) -> list[argparse.ArgumentParser]:
    """Add `eval` and its options to the subparsers `sub`."""
    p = sub.add_parser(
        NAME,
        parents=[common_parent()],
        formatter_class=Formatter,
        epilog=EPILOG,
        help="per-subset acc / r_acc / f_acc / AP tables on test folders",
        description=wrap(
            "Evaluate a trained detector on one or more test roots: one table per root, "
            "one row per subset, printed as Markdown (x100, one decimal, with a mean row)."
        ),
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="training folder or checkpoint folder")
    p.add_argument("roots", nargs="+", metavar="ROOT", help="test folder(s)")
    g = p.add_argument_group("outputs")
    g.add_argument(
        "--csv", metavar="FILE", help="write all tables as one CSV (root,subset,acc,...)"
    )
    g.add_argument("--json", metavar="FILE", help="write all tables as JSON")
    g.add_argument(
        "--plot", metavar="PNG", help="per-subset accuracy bar chart (needs dgsnet[viz])"
    )
    g = p.add_argument_group("degradations (robustness tables)")
    g.add_argument(
        "--jpeg-quality", type=int, default=None, metavar="Q", help="JPEG re-compression, 1-100"
    )
    g.add_argument(
        "--blur-sigma", type=float, default=None, metavar="S", help="Gaussian blur sigma"
    )
    g.add_argument(
        "--resize-scale",
        type=float,
        default=None,
        metavar="F",
        help="resize factor in (0, 4], e.g. 0.5",
    )
    g = p.add_argument_group("evaluation")
    g.add_argument("--batch-size", type=int, default=64, metavar="N", help="(default: 64)")
    g.add_argument(
        "--workers",
        type=int,
        default=default_workers(),
        metavar="N",
        help=f"(default: 4, or the usable CPU cores when fewer: {default_workers()} here)",
    )
    g.add_argument("--subsets", nargs="+", metavar="NAME", help="evaluate these subsets only")
    g.add_argument(
        "--split", choices=("train", "val"), default="val", help="GenImage split (default: val)"
    )
    add_classes_option(g)
    g.add_argument(
        "--allow-single-class",
        action="store_true",
        help="accept subsets with real or fake images only; they report r_acc or f_acc only "
        "(AP and the other rates need both classes) in a table of their own",
    )
    add_scoring_options(p, g)
    p.set_defaults(func=run)
    return [p]


#: Degrade argument -> the flag that sets it
_DEGRADATION_FLAGS = {
    "jpeg_quality": "--jpeg-quality",
    "blur_sigma": "--blur-sigma",
    "resize_scale": "--resize-scale",
}


def _degradation_name(args: argparse.Namespace) -> str:
    from ..data import Degrade

    try:
        return Degrade(args.jpeg_quality, args.blur_sigma, args.resize_scale).name
    except ValueError as exc:  # name the flag, not the argument
        raise flag_error(exc, _DEGRADATION_FLAGS) from None


def _print_tables(tables: dict[str, Any], degradation: str) -> None:
    from ..metrics.tables import roots_summary_markdown

    for i, (root, table) in enumerate(tables.items()):
        if i:
            print()
        print(f"## {root} ({degradation})")
        print()
        print(table.to_markdown())
    if len(tables) > 1:
        print()
        print(f"## mean per root ({degradation})")
        print()
        print(roots_summary_markdown(tables))
    sys.stdout.flush()


def _write_outputs(
    args: argparse.Namespace,
    tables: dict[str, Any],
    degradation: str,
    single: dict[str, dict[str, Any]] | None = None,
) -> None:
    from ..io import atomic_write_json
    from ..metrics.tables import write_tables_csv
    from ..plots import accuracy_figure

    if args.csv and tables:  # (two-class tables only; single-class rows go to --json)
        write_tables_csv(args.csv, tables, degradation)
        status(args, f"dgsnet: wrote {args.csv}")
    if args.json:
        atomic_write_json(
            Path(args.json),
            {
                "format": "dgsnet.eval",
                "version": 1,
                "checkpoint": os.fspath(args.checkpoint),
                "degradation": degradation,
                "threshold": args.threshold,
                "roots": [{"root": root, "table": t.to_dict()} for root, t in tables.items()],
                **(
                    {
                        "single_class": {
                            root: {k: r.to_dict() for k, r in rows.items()}
                            for root, rows in single.items()
                        }
                    }
                    if single
                    else {}
                ),
            },
        )
        status(args, f"dgsnet: wrote {args.json}")
    if args.plot and tables:
        accuracy_figure(tables, args.plot, degradation)
        status(args, f"dgsnet: wrote {args.plot}")


def run(args: argparse.Namespace) -> int:
    """Run `dgsnet eval`; returns the exit status."""
    check_roots(args.roots, "test root")
    check_positive("--batch-size", args.batch_size)
    check_positive("--workers", args.workers, 0)
    degradation = _degradation_name(args)
    if args.plot:
        from ..plots import pyplot

        try:
            pyplot()  # fail before the model is loaded
        except ImportError as exc:
            raise UsageError(str(exc)) from None
    wrapper, bundle = load_checkpoint(args)
    if wrapper.config.num_classes > 1:  # a classifier: top-1 and per-class accuracy
        from .eval_classes import run_classifier

        run_classifier(args, wrapper, bundle, degradation)
        return EXIT_OK
    if args.classes:
        raise UsageError("--classes applies to checkpoints with more than one class")
    from ..errors import DatasetError
    from ..training.evaluation import evaluate

    single: dict[str, dict[str, Any]] | None = {} if args.allow_single_class else None
    try:
        tables = _evaluate(evaluate, wrapper, bundle, args, single)
    except DatasetError as exc:  # name the flag, not the Python keyword
        if "pass allow_single_class=True" not in str(exc):
            raise
        text = str(exc).replace("pass allow_single_class=True", "pass --allow-single-class")
        raise UsageError(text) from None
    if tables:
        _print_tables(tables, degradation)
    _print_single_class(single or {}, degradation)
    _write_outputs(args, tables, degradation, single or {})
    return EXIT_OK


def _evaluate(
    evaluate: Any,
    wrapper: Any,
    bundle: Any,
    args: argparse.Namespace,
    single: dict[str, dict[str, Any]] | None,
) -> dict[str, Any]:
    return evaluate(  # type: ignore[no-any-return]
        wrapper,
        args.roots,
        bundle.eval_transform,
        subsets=args.subsets,
        split=args.split,
        threshold=args.threshold,
        single_class=single,
        **evaluation_options(args),
    )


def _print_single_class(single: dict[str, dict[str, Any]], degradation: str) -> None:
    from ..metrics.single_class import single_class_markdown

    for root, rows in single.items():
        print()
        print(f"## {root}: single-class subsets ({degradation})")
        print()
        print(single_class_markdown(rows))
    sys.stdout.flush()
