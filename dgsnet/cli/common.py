"""Helpers every command uses: status lines, the device, simple checks, loading a checkpoint."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import UsageError

__all__ = ["check_positive", "check_roots", "load_checkpoint", "resolve_device", "status"]


def status(args: argparse.Namespace, message: str) -> None:
    """Print a status line to stderr unless `--quiet`."""
    if not getattr(args, "quiet", False):
        print(message, file=sys.stderr, flush=True)


def resolve_device(name: str) -> Any:
    """The `torch.device` for `--device NAME` (`auto`: CUDA when available). Under
    `torchrun` a bare `cuda` becomes this process's `cuda:LOCAL_RANK`."""
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except RuntimeError as exc:
        raise UsageError(f"--device {name!r}: {exc}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {name}: CUDA is not available on this machine")
        if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 and dev.index is None:
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return dev


def check_positive(name: str, value: Any, minimum: int = 1) -> None:
    """Raise `UsageError` unless `value` is an int `>= minimum` (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UsageError(f"{name} must be an integer >= {minimum}, got {value!r}")


def check_roots(roots: Sequence[str], what: str = "root") -> None:
    """Raise `UsageError` unless every path exists and is a folder."""
    for r in roots:
        p = Path(r)
        if not p.exists():
            raise UsageError(f"{what} {r} does not exist")
        if not p.is_dir():
            raise UsageError(f"{what} {r} is not a folder")


def load_checkpoint(args: argparse.Namespace) -> tuple[Any, Any]:
    """`(wrapper, bundle)` of `args.checkpoint` (a training or checkpoint folder, or a
    `hf-hub:` id) on
    `--device`, with the `--model`/`--pretrained`/`--cache-dir`/`--transform`
    options."""
    from ..training.evaluation import load_trained

    if not Path(args.checkpoint).exists() and not str(args.checkpoint).startswith("hf-hub:"):
        raise UsageError(f"checkpoint {args.checkpoint} does not exist")
    device = resolve_device(args.device)
    model = args.model
    if model is not None and args.pretrained:
        model = f"{model}@{args.pretrained}" if "@" not in model else model
    return load_trained(
        args.checkpoint,
        model=model,
        device=device,
        transform=getattr(args, "transform", None),
        cache_dir=args.cache_dir,
    )
