"""`dgsnet export`: a trained detector as open_clip / Hugging Face / peft / ONNX / .pt2 files."""

from __future__ import annotations

import argparse
import math
from typing import Any

from ..errors import UsageError
from .common import status
from .errors import EXIT_OK
from .options import Formatter, add_status_options, wrap

__all__ = ["NAME", "add_parser", "run"]

NAME = "export"

EPILOG = """\
examples:
  dgsnet export runs/dgs --format onnx -o deploy/onnx
  dgsnet export runs/dgs --format open_clip -o deploy/open_clip
  dgsnet export hf-hub:org/name --format peft -o deploy/adapter

  # the authors' released weights as an ONNX detector, in two commands:
  dgsnet import-released model_epoch_step2.pth -o runs/released
  dgsnet export runs/released --format onnx -o deploy/released-onnx

Every OUT folder holds the artefact, the image head (head.safetensors, head.json), the
preprocessing (preprocessing.json), a loader that needs no dgsnet (python OUT/load_detector.py
IMAGE...) and export.json (files, sizes, and the check against dgsnet's own scores).
The user guide's deploy page describes each format.
"""


def add_parser(sub: Any) -> list[argparse.ArgumentParser]:
    """Add `export` and its options to the subparsers `sub`."""
    from ..export import FORMATS

    p = sub.add_parser(
        NAME,
        formatter_class=Formatter,
        epilog=EPILOG,
        help="write a trained detector as open_clip, hf, peft, onnx or pt2 files",
        description=wrap(
            "Export a trained detector (a run folder, a checkpoint folder, an imported released "
            "checkpoint or a hf-hub: id) so that it runs without dgsnet. The artefact is "
            "loaded back with its own library and its scores are compared with dgsnet's "
            "before the folder is put in place."
        ),
    )
    p.add_argument("source", metavar="SOURCE", help="run folder, checkpoint folder or hf-hub:ID")
    p.add_argument(
        "--format",
        "-f",
        required=True,
        choices=(*FORMATS, "torch.export"),
        help="open_clip | hf | peft | onnx | pt2 (= torch.export)",
    )
    p.add_argument("--out", "-o", required=True, metavar="OUT", help="the folder to create")
    g = p.add_argument_group("model")
    g.add_argument(
        "--model",
        default=None,
        metavar="SPEC",
        help="base model spec, if SOURCE does not record it",
    )
    g.add_argument("--revision", default=None, help="hub revision (branch, tag or commit)")
    g.add_argument(
        "--cache-dir", default=None, metavar="DIR", help="open_clip / Hugging Face cache folder"
    )
    _add_format_and_check_options(p)
    add_status_options(p)
    p.set_defaults(func=run)
    return [p]


def _add_format_and_check_options(p: argparse.ArgumentParser) -> None:
    """The per-format options and the check against dgsnet's scores."""
    g = p.add_argument_group("format options")
    g.add_argument(
        "--open-clip-name",
        default=None,
        metavar="NAME",
        help="open_clip: the built-in architecture name to record (default: the base model's)",
    )
    g.add_argument("--opset", type=int, default=None, metavar="N", help="onnx: the opset (20)")
    g.add_argument(
        "--peft-base",
        choices=("open_clip", "hf"),
        default=None,
        help="peft: the library of the base model the adapter loads onto (an open_clip run: "
        "open_clip, the default, or hf, its CLIPModel equivalent)",
    )
    g = p.add_argument_group("check")
    g.add_argument(
        "--no-check", action="store_true", help="do not load the artefact back and compare"
    )
    g.add_argument(
        "--tolerance",
        type=float,
        default=None,
        metavar="T",
        help="largest score difference accepted (default 1e-5; onnx 1e-4)",
    )


def _options(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if args.open_clip_name is not None:
        if args.format != "open_clip":
            raise UsageError("--open-clip-name applies to --format open_clip only")
        options["model_name"] = args.open_clip_name
    if args.opset is not None:
        if args.format != "onnx":
            raise UsageError("--opset applies to --format onnx only")
        if args.opset < 18:
            raise UsageError(
                f"--opset must be 18 or more (the exporter's minimum), got {args.opset}"
            )
        options["opset"] = args.opset
    if args.peft_base is not None:
        if args.format != "peft":
            raise UsageError("--peft-base applies to --format peft only")
        options["peft_base"] = args.peft_base
    if args.tolerance is not None and not (math.isfinite(args.tolerance) and args.tolerance > 0):
        raise UsageError(f"--tolerance must be a positive number, got {args.tolerance!r}")
    return options


def run(args: argparse.Namespace) -> int:
    """Run `dgsnet export`; returns the exit status.

    Raises:
        UsageError: an option that does not apply, or an export that cannot be made (the
            reason in one line).
    """
    from ..export import ExportError, export

    options = _options(args)
    try:
        result = export(
            args.source,
            args.format,
            args.out,
            model=args.model,
            revision=args.revision,
            cache_dir=args.cache_dir,
            check=not args.no_check,
            tolerance=args.tolerance,
            **options,
        )
    except ExportError as exc:
        raise UsageError(str(exc)) from None
    total = sum(f["bytes"] for f in result.files.values())
    check = result.get("check")
    checked = (
        f"scores within {check['max_abs_score_diff']:.2g} of dgsnet's" if check else "not checked"
    )
    status(args, f"dgsnet: wrote {args.out} ({result['export_format']}, {total} bytes, {checked})")
    return EXIT_OK
