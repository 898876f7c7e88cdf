"""The `dgsnet` parser (a loop over the command modules) and `main`."""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence

from . import caption, demo, import_released, plot, predict, push, train, tsne
from . import eval as eval_command
from . import export as export_command
from .errors import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    PROG,
    error_message,
    exit_status,
    print_error,
    show_warning,
)
from .options import Formatter, dgs_config, parse_args, wrap

__all__ = ["COMMANDS", "build_parser", "main", "train_settings"]

#: The command modules, in the order `dgsnet --help` lists them. Each has `NAME`,
#: `add_parser(subparsers) -> [parsers]` (the parser, then any alias) and `run(args)`.
COMMANDS = (
    train,
    eval_command,
    predict,
    import_released,
    export_command,
    push,
    caption,
    tsne,
    plot,
    demo,
)


def build_parser() -> argparse.ArgumentParser:
    """The `dgsnet` argument parser, with one subcommand per module of `COMMANDS`."""
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog=PROG,
        formatter_class=Formatter,
        description=wrap(
            "DGS-Net: gradient-surgery LoRA fine-tuning of CLIP to detect AI-generated images."
        ),
        epilog="Run `dgsnet <command> --help` for a command's options and examples. "
        "Docs: docs/cli.md",
    )
    parser.add_argument("--version", action="version", version=f"dgsnet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    parsers: dict[str, argparse.ArgumentParser] = {}
    for command in COMMANDS:
        parsers[command.NAME] = command.add_parser(sub)[0]
    parser.set_defaults(_subparsers=parsers)
    return parser


def train_settings(argv: Sequence[str]) -> dict[str, object]:
    """The effective settings of `dgsnet train ARGV...` without running it (`argv` are the
    arguments after `train`): the dict that the run records as `OUT/run.json["options"]`.
    Reads the `--config` file if one is given; builds no model and opens no data.

    Examples:
        >>> argv = ["--preset", "aigibench-setting2", "data/train", "-o", "runs/x"]
        >>> train_settings(argv)["model"]
        'ViT-L-14@openai'
    """
    args = parse_args(build_parser(), ["train", *argv])
    return train.run_options(args, dgs_config(args))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `dgsnet` command; returns the exit status.

    Errors print one `dgsnet: error: ...` line (exit status by type, see
    `dgsnet.cli.errors`); `--debug` lets the exception and its traceback through.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    parser = build_parser()
    with warnings.catch_warnings():
        warnings.showwarning = show_warning
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        try:
            args = parse_args(parser, argv)
            return int(args.func(args) or 0)
        except SystemExit as exc:  # argparse: --help, --version, usage errors
            if isinstance(exc.code, int):
                return exc.code
            return 0 if exc.code is None else EXIT_FAILURE
        except KeyboardInterrupt as exc:
            if debug:
                raise
            msg = str(exc).strip()
            print(f"{PROG}: interrupted" + (f": {msg}" if msg else ""), file=sys.stderr)
            return EXIT_INTERRUPTED
        except Exception as exc:
            code = exit_status(exc)
            if debug or code is None:
                raise
            print_error(error_message(exc))
            return code
