"""`dgsnet predict`: score images or folders with a checkpoint (path,score,label_pred records)."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from ..errors import UsageError
from .common import check_positive, load_checkpoint, status
from .errors import EXIT_OK
from .options import Formatter, add_scoring_options, common_parent, wrap
from .predict_format import FORMATS, format_class_predictions, format_predictions

__all__ = ["NAME", "add_parser", "run"]

NAME = "predict"

EPILOG = """\
examples:
  dgsnet predict runs/dgs photo1.jpg photo2.png
  dgsnet predict runs/dgs downloads/ --out scores.csv --threshold 0.5
  dgsnet predict runs/dgs downloads/ --format jsonl > scores.jsonl

Prints (or writes) one record per image, path,score,label_pred: score = P(fake) =
sigmoid(logit), label_pred = 1 (fake) when score > threshold, else 0 (real); as CSV (the
default), a JSON array (--format json) or JSON lines (--format jsonl). Folders are searched
recursively. A checkpoint with more than one class (DGSConfig.num_classes > 1) writes
path, one probability per class (prob_0, prob_1, ...) and label_pred, the most probable
class; --threshold applies to binary heads only.
"""


def add_parser(sub: Any) -> list[argparse.ArgumentParser]:
    """Add `predict` and its options to the subparsers `sub`."""
    p = sub.add_parser(
        NAME,
        parents=[common_parent()],
        formatter_class=Formatter,
        epilog=EPILOG,
        help="score images or folders: path,score,label_pred (CSV, JSON, JSON lines)",
        description=wrap("Score images with a trained detector."),
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="training folder or checkpoint folder")
    p.add_argument("inputs", nargs="+", metavar="PATH", help="image files and/or folders")
    p.add_argument(
        "--out", "-o", metavar="FILE", help="write the predictions here (default: standard output)"
    )
    p.add_argument(
        "--format",
        choices=FORMATS,
        default="csv",
        help="csv (default): a header and one row per image; json: one array of objects; "
        "jsonl: one JSON object per line",
    )
    p.add_argument("--batch-size", type=int, default=64, metavar="N", help="(default: 64)")
    p.add_argument("--workers", type=int, default=0, metavar="N", help="(default: 0)")
    add_scoring_options(p, p)
    p.set_defaults(func=run)
    return [p]


def _image_paths(inputs: list[str]) -> list[str]:
    """The image files named by `inputs` (files, and folders searched recursively), each
    once, in order."""
    from ..data import is_image_file, list_images

    paths: list[str] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = list_images(p)
            _report_skipped(item, len(found), skipped_files(p))
            if not found:
                raise UsageError(f"folder {item} contains no images")
            paths.extend(found)
        elif p.is_file():
            if not is_image_file(p):
                raise UsageError(f"{item} is not an image file (by its extension)")
            paths.append(os.fspath(p))
        else:
            raise UsageError(f"{item} does not exist")
    return list(dict.fromkeys(paths))


#: why a folder's entry is not scored -> how the report says it
_SKIP_REASONS = {
    "extension": "not an image extension",
    "hidden": "hidden (the name starts with '.')",
    "linked folder": "a linked folder (not followed)",
}


def skipped_files(folder: Path) -> dict[str, list[str]]:
    """The entries under `folder` that `list_images` does not return, by reason:
    `"extension"` (a file without one of `IMAGE_EXTENSIONS`), `"hidden"` (a file or
    folder whose name starts with `.`; a hidden folder is listed, not its files) and
    `"linked folder"` (a symbolic link to a folder, not followed)."""
    from ..data import is_image_file

    out: dict[str, list[str]] = {reason: [] for reason in _SKIP_REASONS}
    for dirpath, dirnames, filenames in os.walk(folder):
        for d in sorted(dirnames):
            path = os.path.join(dirpath, d)
            if d.startswith("."):
                out["hidden"].append(path + os.sep)
            elif os.path.islink(path):
                out["linked folder"].append(path + os.sep)
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for f in sorted(filenames):
            if f.startswith("."):
                out["hidden"].append(os.path.join(dirpath, f))
            elif not is_image_file(f):
                out["extension"].append(os.path.join(dirpath, f))
    return {reason: sorted(paths) for reason, paths in out.items() if paths}


def _report_skipped(folder: str, scored: int, skipped: dict[str, list[str]]) -> None:
    """Warn, with counts and the first names, about the entries of `folder` not scored."""
    from ..data import IMAGE_EXTENSIONS

    if not skipped:
        return
    total = sum(len(v) for v in skipped.values())
    parts = []
    for reason, paths in skipped.items():
        shown = ", ".join(
            os.path.relpath(x, folder) + (os.sep if x.endswith(os.sep) else "") for x in paths[:3]
        )
        more = f", ... ({len(paths) - 3} more)" if len(paths) > 3 else ""
        parts.append(f"{len(paths)} {_SKIP_REASONS[reason]}: {shown}{more}")
    warnings.warn(
        f"{folder}: scored {scored} image(s), skipped {total} "
        f"entr{'y' if total == 1 else 'ies'}: {'; '.join(parts)} (images are files ending in "
        f"{', '.join(sorted(IMAGE_EXTENSIONS))}, any case, not hidden)",
        UserWarning,
        stacklevel=2,
    )


def run(args: argparse.Namespace) -> int:
    """Run `dgsnet predict`; returns the exit status."""
    check_positive("--batch-size", args.batch_size)
    check_positive("--workers", args.workers, 0)
    paths = _image_paths(args.inputs)
    wrapper, bundle = load_checkpoint(args)
    from ..training.evaluation import EvalItems, ImageFiles, predict_probabilities

    probs, _, _, done_paths = predict_probabilities(
        wrapper,
        EvalItems(ImageFiles(paths, bundle.eval_transform)),
        batch_size=args.batch_size,
        num_workers=args.workers,
        progress=not args.quiet and args.out is not None,
        precision=args.precision,
    )
    if wrapper.config.num_classes > 1:  # a classifier: no probability of fake
        text = format_class_predictions(done_paths, probs.tolist(), args.format)
        summary = f"{probs.shape[1]} classes"
    else:
        scores = probs[:, 1]
        text = format_predictions(done_paths, scores.tolist(), args.threshold, args.format)
        summary = f"{int((scores > args.threshold).sum())} predicted fake"
    if args.out:
        from ..io import atomic_write_text

        atomic_write_text(Path(args.out), text)
        status(args, f"dgsnet: wrote {args.out}: {len(done_paths)} images, {summary}")
    else:
        sys.stdout.write(text)
        sys.stdout.flush()
    return EXIT_OK
