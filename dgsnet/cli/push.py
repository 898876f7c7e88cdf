"""`dgsnet push`: upload a run folder to the Hugging Face Hub with a generated model card."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import UsageError
from .common import status
from .errors import EXIT_OK
from .options import Formatter, add_status_options, wrap

__all__ = ["NAME", "add_parser", "run"]

NAME = "push"

EPILOG = """\
examples:
  dgsnet eval runs/dgs data/test --json runs/dgs/eval.json
  dgsnet push runs/dgs my-org/dgs-detector --license mit
  dgsnet push runs/released my-org/dgs-released --export onnx --private

  # anyone, then:
  dgsnet predict hf-hub:my-org/dgs-detector photo.jpg

Uploads README.md (the model card: base model, settings, LoRA, training data, evaluation
tables, license, how to load it with and without dgsnet), final/ (weights and config),
base_model/ (an imported released checkpoint's CLIP), run.json (local paths reduced to folder
names), eval/*.json and, with --export, exports/<format>/. Never the optimizer state of last/.
Log in first (`hf auth login`) or set HF_TOKEN.
"""


def add_parser(sub: Any) -> list[argparse.ArgumentParser]:
    """Add `push` and its options to the subparsers `sub`."""
    from ..export import FORMATS

    p = sub.add_parser(
        NAME,
        formatter_class=Formatter,
        epilog=EPILOG,
        help="upload a run folder to the Hugging Face Hub with a model card",
        description=wrap(
            "Upload a trained detector (a run folder or a checkpoint folder) to a Hugging Face "
            "Hub repository, with a model card generated from the run's own files."
        ),
    )
    p.add_argument("source", metavar="RUN_DIR", help="run folder or checkpoint folder")
    p.add_argument("repo_id", metavar="ORG/NAME", help="the Hub repository (created if missing)")
    p.add_argument("--revision", default=None, help="branch to upload to (default: main)")
    p.add_argument("--private", action="store_true", help="create the repository as private")
    p.add_argument("--license", default=None, help="license of the weights, for the card")
    p.add_argument(
        "--eval",
        action="append",
        default=[],
        metavar="JSON",
        dest="eval_files",
        help="a `dgsnet eval --json` file to include (repeatable; the run folder's are found)",
    )
    p.add_argument(
        "--export",
        action="append",
        default=[],
        choices=FORMATS,
        dest="exports",
        help="also upload this export under exports/<format>/ (repeatable)",
    )
    p.add_argument(
        "--model",
        default=None,
        metavar="SPEC",
        help="base model spec, if RUN_DIR does not record it",
    )
    p.add_argument("--message", "-m", default=None, help="the commit message")
    add_status_options(p)
    p.set_defaults(func=run)
    return [p]


def run(args: argparse.Namespace) -> int:
    """Run `dgsnet push`; returns the exit status.

    Raises:
        UsageError: a missing folder, a malformed repository id, or an export that cannot
            be made.
    """
    from ..export import ExportError
    from ..hub import push_to_hub
    from ..wrapper.locate import parse_hub_id

    if not Path(args.source).exists():
        raise UsageError(f"{args.source} does not exist")
    try:
        parse_hub_id(args.repo_id)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    try:
        result = push_to_hub(
            args.source,
            args.repo_id,
            revision=args.revision,
            private=True if args.private else None,
            commit_message=args.message,
            model=args.model,
            eval_files=args.eval_files,
            exports=args.exports,
            license=args.license,
        )
    except ExportError as exc:
        raise UsageError(str(exc)) from None
    where = result.repo_id + (f"@{result.revision}" if result.revision else "")
    status(args, f"dgsnet: uploaded {len(result.files)} files to {where}")
    return EXIT_OK
