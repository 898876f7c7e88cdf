"""The ``dgsnet`` command line: ``train``, ``eval``, ``predict``, ``caption``, ``tsne``.

Run ``dgsnet <command> --help`` for the options and examples; ``docs/cli.md`` has the whole
story (output folder layout, resume semantics, ``torchrun``, model specs).

Errors caused by the input (a missing folder, an unreadable image, missing captions, a damaged
checkpoint, a bad option) are printed as ``dgsnet: error: ...`` and exit with status 2; a
non-finite loss exits with 1, an interrupted run with 130. ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .presets import DEFAULT_PRESET, TRAIN_PRESETS, get_preset

__all__ = ["main", "build_parser", "train_settings", "UsageError"]

PROG = "dgsnet"
EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(ValueError):
    """A command-line option or input is invalid (exit status 2)."""


def _wrap(text: str) -> str:
    import textwrap

    return textwrap.fill(text, min(100, _term_width()) - 2)


class _Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32, width=min(100, _term_width()))


def _term_width() -> int:
    try:
        return os.get_terminal_size().columns
    except OSError:
        return 100


# ============================================================================================
# parser
# ============================================================================================

TRAIN_EPILOG = """\
examples:
  # the paper's whole training setting (ViT-L/14 OpenAI weights in the local cache;
  # docs/paper-setting.md); flags and --config keys override the preset's values:
  dgsnet train --preset aigibench-setting2 data/AIGIBench/train --out runs/setting2

  # the reference recipe with the model's own preprocessing:
  dgsnet train data/AIGIBench/train --out runs/dgs --model ViT-L-14@openai

  # try the whole pipeline in a minute with a tiny random CLIP:
  dgsnet train data/train --out runs/tiny --model tiny --epochs 2 --batch-size 8 \\
      --lr 1e-3 --stage1-lr 1e-2

  # ablation: no Orthogonal Suppression, paper order, batch-size-invariant alignment:
  dgsnet train data/train --out runs/abl --no-suppression --order project_then_align \\
      --align-scale invariant

  # options from a JSON file (keys are option names); flags on the line override it:
  dgsnet train --config recipe.json --out runs/r2 --lr 5e-5

  # several GPUs:
  torchrun --nproc-per-node 4 -m dgsnet.cli train data/train --out runs/ddp

Captions: by default each root's caption file is looked up as <parent>/<split>_text/<split>.json
(make one with `dgsnet caption`). An interrupted run resumes from OUT/last when the same
command is run again (--no-resume starts over).
"""

EVAL_EPILOG = """\
examples:
  dgsnet eval runs/dgs data/UniversalFakeDetect data/AIGCDetectBenchmark --csv results.csv
  dgsnet eval runs/dgs/final data/test --jpeg-quality 75 --json jpeg75.json
  dgsnet eval runs/dgs data/test --blur-sigma 1.0 --resize-scale 0.5 --plot acc.png

CHECKPOINT is a training folder (its final/, else last/) or a checkpoint folder. Each ROOT is
<root>/<subset>[/<category>]/{0_real,1_fake} (or GenImage's layout): one table row per subset.
With several roots a last table gives each root's mean row (one row per benchmark).
"""

PREDICT_EPILOG = """\
examples:
  dgsnet predict runs/dgs photo1.jpg photo2.png
  dgsnet predict runs/dgs downloads/ --out scores.csv --threshold 0.5

Prints (or writes) a CSV with columns path,score,label_pred: score = P(fake) = sigmoid(logit),
label_pred = 1 (fake) when score > threshold, else 0 (real). Folders are searched recursively.
"""

CAPTION_EPILOG = """\
examples:
  dgsnet caption data/AIGIBench/train                    # BLIP (pip install 'dgsnet[hf]')
  dgsnet caption data/train --template                   # "a photo of a <category>", no model
  dgsnet caption data/train --out captions.json --relative --blip-model ./blip-base

Writes the JSON file `dgsnet train` looks for (default <parent>/<split>_text/<split>.json).
Re-running the same command resumes: images already captioned in the file are skipped.
Template captions carry no per-image content and weaken the text branch (a warning says so).
"""

TSNE_EPILOG = """\
examples:
  dgsnet tsne runs/dgs data/test --out tsne.png
  dgsnet tsne runs/dgs data/test --out tsne.png --max-per-class 300 --save-features feats.npz

Two panels, as in the paper's Figure 1: t-SNE of the teacher's (pre-trained CLIP, adapters
off) and the student's (DGS fine-tuned) image features, real vs fake. Needs the viz extra
(pip install 'dgsnet[viz]').
"""


def _common(debug_only: bool = False) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("general")
    g.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    if not debug_only:
        g.add_argument(
            "--quiet", "-q", action="store_true", help="no progress bars or status lines"
        )
        g.add_argument(
            "--device",
            default="auto",
            help="cpu, cuda, cuda:1, ... (default: auto = cuda when available)",
        )
    return p


def _add_scoring_options(p: argparse.ArgumentParser, threshold_group: Any) -> None:
    """Options shared by `eval` and `predict`: the decision threshold, the model options of a
    trained checkpoint, and a preprocessing override."""
    threshold_group.add_argument(
        "--threshold",
        type=float,
        default=0.5,
        metavar="T",
        help="fake iff score > threshold (default: 0.5)",
    )
    g = p.add_argument_group("model")
    _add_model_options(g, train=False)
    g.add_argument(
        "--transform",
        choices=("model", "patch-selection"),
        default=None,
        help="override the preprocessing recorded with the checkpoint",
    )


def _add_model_options(g: argparse._ArgumentGroup, *, train: bool) -> None:
    if train:
        g.add_argument(
            "--model",
            default="ViT-L-14@openai",
            metavar="SPEC",
            help="tiny[:SIZE] | <open_clip name>@<weights> | hf:<path> "
            "(default: ViT-L-14@openai, the reference backbone)",
        )
    else:
        g.add_argument(
            "--model",
            default=None,
            metavar="SPEC",
            help="base model spec, if the checkpoint does not record it",
        )
    g.add_argument(
        "--pretrained",
        default=None,
        metavar="TAG",
        help="open_clip weights tag or local file (same as NAME@TAG)",
    )
    g.add_argument(
        "--cache-dir", default=None, metavar="DIR", help="open_clip / Hugging Face cache folder"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        formatter_class=_Formatter,
        description=_wrap(
            "DGS-Net: gradient-surgery LoRA fine-tuning of CLIP to detect AI-generated images."
        ),
        epilog="Run `dgsnet <command> --help` for a command's options and examples. "
        "Docs: docs/cli.md",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"dgsnet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    parsers: dict[str, argparse.ArgumentParser] = {}

    # -- train ---------------------------------------------------------------------------------
    p = sub.add_parser(
        "train",
        parents=[_common()],
        formatter_class=_Formatter,
        epilog=TRAIN_EPILOG,
        help="two-stage DGS training (teacher probe, then LoRA + surgery); resumable",
        description=_wrap(
            "Train a DGS-Net detector: stage 1 fits the teacher head (linear probe on "
            "frozen CLIP features), stage 2 trains LoRA + image/text heads with the gradient "
            "surgery. Writes OUT/last (resumable state), OUT/final (weights), "
            "OUT/train_log.jsonl."
        ),
    )
    p.add_argument(
        "roots",
        nargs="*",
        metavar="ROOT",
        help="training folder(s): <root>/<subset>[/<category>]/{0_real,1_fake} or GenImage",
    )
    p.add_argument(
        "--config",
        metavar="FILE",
        help='JSON object of options (keys = option names, e.g. "batch_size"; "dgs": '
        "DGSConfig fields); command-line flags override it",
    )
    g = p.add_argument_group("data")
    g.add_argument(
        "--captions",
        action="append",
        metavar="FILE",
        help="caption JSON (image path -> caption); once for all roots or once per root "
        "(default: <parent>/<split>_text/<split>.json beside each root)",
    )
    g.add_argument(
        "--caption-fallback",
        action="store_true",
        help="use a neutral template caption for images without one (warns; weakens "
        "Orthogonal Suppression)",
    )
    g.add_argument("--subsets", nargs="+", metavar="NAME", help="train on these subsets only")
    g.add_argument("--verify", action="store_true", help="decode every image before training")
    g.add_argument(
        "--workers",
        type=int,
        default=4,
        metavar="N",
        help="DataLoader worker processes (default: 4)",
    )
    g = p.add_argument_group("model")
    _add_model_options(g, train=True)
    g.add_argument(
        "--transform",
        choices=("model", "patch-selection"),
        default="model",
        help="model: the model's preprocessing; patch-selection: DGS-Net's 7x7 "
        "spectral-entropy mosaic (image size a multiple of 7) (default: model)",
    )
    g.add_argument(
        "--no-flip",
        dest="flip",
        action="store_false",
        help="no random horizontal flip (the training transform becomes deterministic "
        "with --transform model, which enables the teacher cache)",
    )
    g = p.add_argument_group("training")
    g.add_argument("--out", "-o", metavar="DIR", help="output folder (required)")
    g.add_argument(
        "--stage",
        choices=("1", "2", "both"),
        default="both",
        help="1: teacher head only; 2: LoRA + heads (needs --init-from); both (default)",
    )
    g.add_argument("--epochs", type=int, default=1, metavar="N", help="stage-2 epochs (default: 1)")
    g.add_argument(
        "--stage1-epochs", type=int, default=3, metavar="N", help="stage-1 epochs (default: 3)"
    )
    g.add_argument(
        "--batch-size", type=int, default=32, metavar="N", help="per process (default: 32)"
    )
    g.add_argument(
        "--lr", type=float, default=1e-4, help="stage-2 Adam learning rate (default: 1e-4)"
    )
    g.add_argument(
        "--stage1-lr",
        type=float,
        default=1e-4,
        metavar="LR",
        help="stage-1 learning rate (default: 1e-4)",
    )
    g.add_argument(
        "--lr-step",
        type=int,
        default=10,
        metavar="EPOCHS",
        help="multiply the lr by --lr-gamma every this many epochs (default: 10)",
    )
    g.add_argument("--lr-gamma", type=float, default=0.9, metavar="G", help="(default: 0.9)")
    g.add_argument("--seed", type=int, default=0, metavar="N", help="(default: 0)")
    g.add_argument(
        "--on-nonfinite",
        choices=("raise", "skip"),
        default="raise",
        help="on a NaN/Inf loss or gradient: stop with an error naming the step, or skip "
        "the update and count it (default: raise)",
    )
    g.add_argument(
        "--init-from", metavar="DIR", help="initialise from a checkpoint (e.g. a stage-1 run)"
    )
    g.add_argument(
        "--resume",
        dest="resume",
        action="store_const",
        const=True,
        default=None,
        help="resume from OUT/last (default: automatically when it exists)",
    )
    g.add_argument(
        "--no-resume",
        dest="resume",
        action="store_const",
        const=False,
        help="delete OUT's previous training state and start over",
    )
    g.add_argument(
        "--save-every",
        type=int,
        default=500,
        metavar="STEPS",
        help="checkpoint every N stage-2 steps, and at each epoch end (default: 500)",
    )
    g.add_argument(
        "--log-every", type=int, default=1, metavar="STEPS", help="log every N steps (default: 1)"
    )
    g.add_argument(
        "--deterministic",
        action="store_true",
        help="torch.use_deterministic_algorithms during training",
    )
    g = p.add_argument_group("DGS (defaults: the reference preset)")
    g.add_argument(
        "--preset",
        choices=tuple(TRAIN_PRESETS),
        default=None,
        help="reference: DGS options from DGSConfig.reference() (LoRA on q/k/v, as "
        "released); library: from DGSConfig(); aigibench-setting2: the whole paper setting "
        "(ViT-L-14@openai, patch-selection + flip, 3 + 1 epochs, batch 32, lr 1e-4, "
        "reference DGS; docs/paper-setting.md). Precedence: preset < --config < flags "
        "(default: reference)",
    )
    g.add_argument(
        "--order",
        choices=("align_then_project", "project_then_align"),
        default=None,
        help="alignment before the projection (reference code) or after (paper)",
    )
    g.add_argument(
        "--align-weight", type=float, default=None, metavar="W", help="lambda (reference 0.2)"
    )
    g.add_argument(
        "--align-scale",
        choices=("reference", "invariant"),
        default=None,
        help="reference: lambda/B as released; invariant: batch-size invariant",
    )
    g.add_argument(
        "--no-suppression",
        dest="suppression",
        action="store_const",
        const=False,
        default=None,
        help="ablation: switch Orthogonal Suppression off",
    )
    g.add_argument(
        "--no-alignment",
        dest="alignment",
        action="store_const",
        const=False,
        default=None,
        help="ablation: switch Prior Alignment off",
    )
    g.add_argument(
        "--conflict-only",
        action="store_const",
        const=True,
        default=None,
        help="project only when the gradient conflicts with the harmful direction",
    )
    g.add_argument("--lora-rank", type=int, default=None, metavar="R", help="(reference 6)")
    g.add_argument("--lora-alpha", type=float, default=None, metavar="A", help="(reference 6)")
    g.add_argument("--lora-dropout", type=float, default=None, metavar="P", help="(reference 0.8)")
    g.add_argument(
        "--lora-targets",
        nargs="+",
        default=None,
        metavar="NAME",
        help="module names, e.g. q_proj k_proj v_proj",
    )
    g.add_argument(
        "--lora-layers",
        nargs="+",
        type=int,
        default=None,
        metavar="I",
        help="block indices (negative from the end); default all",
    )
    g.add_argument(
        "--teacher",
        choices=("shared", "copy"),
        default=None,
        help="shared: adapters off (no copy, default); copy: a frozen deep copy",
    )
    g.add_argument(
        "--fused", action="store_const", const=True, default=None, help="fused surgery kernel"
    )
    g.add_argument(
        "--normalize-features",
        action="store_const",
        const=True,
        default=None,
        help="L2-normalise features before the heads",
    )
    p.set_defaults(func=_cmd_train, dgs=None)
    parsers["train"] = p

    # -- eval ----------------------------------------------------------------------------------
    p = sub.add_parser(
        "eval",
        parents=[_common()],
        formatter_class=_Formatter,
        epilog=EVAL_EPILOG,
        help="per-subset acc / r_acc / f_acc / AP tables on test folders",
        description=_wrap(
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
        "--resize-scale", type=float, default=None, metavar="F", help="resize factor, e.g. 0.5"
    )
    g = p.add_argument_group("evaluation")
    g.add_argument("--batch-size", type=int, default=64, metavar="N", help="(default: 64)")
    g.add_argument("--workers", type=int, default=4, metavar="N", help="(default: 4)")
    g.add_argument("--subsets", nargs="+", metavar="NAME", help="evaluate these subsets only")
    g.add_argument(
        "--split", choices=("train", "val"), default="val", help="GenImage split (default: val)"
    )
    _add_scoring_options(p, g)
    p.set_defaults(func=_cmd_eval)
    parsers["eval"] = p

    # -- predict -------------------------------------------------------------------------------
    p = sub.add_parser(
        "predict",
        parents=[_common()],
        formatter_class=_Formatter,
        epilog=PREDICT_EPILOG,
        help="score images or folders: CSV of path,score,label_pred",
        description=_wrap("Score images with a trained detector."),
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="training folder or checkpoint folder")
    p.add_argument("inputs", nargs="+", metavar="PATH", help="image files and/or folders")
    p.add_argument(
        "--out", "-o", metavar="CSV", help="write the CSV here (default: standard output)"
    )
    p.add_argument("--batch-size", type=int, default=64, metavar="N", help="(default: 64)")
    p.add_argument("--workers", type=int, default=0, metavar="N", help="(default: 0)")
    _add_scoring_options(p, p)
    p.set_defaults(func=_cmd_predict)
    parsers["predict"] = p

    # -- caption -------------------------------------------------------------------------------
    p = sub.add_parser(
        "caption",
        parents=[_common()],
        formatter_class=_Formatter,
        epilog=CAPTION_EPILOG,
        help="write the caption JSON for a dataset (BLIP or templates); resumable",
        description=_wrap(
            "Caption every image under ROOT into the JSON file `dgsnet train` reads."
        ),
    )
    p.add_argument("root", metavar="ROOT", help="dataset folder (or any folder of images)")
    p.add_argument(
        "--out",
        "-o",
        metavar="FILE",
        help="caption JSON (default: <parent>/<split>_text/<split>.json for ROOT=<parent>/<split>)",
    )
    p.add_argument(
        "--template",
        nargs="?",
        const="",
        default=None,
        metavar="TEMPLATE",
        help='no model: template captions, default "a photo of {article} {category}" '
        "(fields: category, article)",
    )
    p.add_argument(
        "--blip-model",
        default=None,
        metavar="NAME_OR_PATH",
        help="BLIP captioning model (default: Salesforce/blip-image-captioning-base)",
    )
    p.add_argument(
        "--local-files-only", action="store_true", help="never download the BLIP weights"
    )
    p.add_argument("--batch-size", type=int, default=16, metavar="N", help="(default: 16)")
    p.add_argument("--max-new-tokens", type=int, default=30, metavar="N", help="(default: 30)")
    p.add_argument("--relative", action="store_true", help="keys relative to ROOT (portable file)")
    p.add_argument(
        "--save-every",
        type=int,
        default=1,
        metavar="BATCHES",
        help="rewrite the file every N batches (default: 1)",
    )
    p.add_argument(
        "--skip-errors", action="store_true", help="skip unreadable images instead of stopping"
    )
    p.set_defaults(func=_cmd_caption)
    parsers["caption"] = p

    # -- tsne ----------------------------------------------------------------------------------
    p = sub.add_parser(
        "tsne",
        aliases=["features"],
        parents=[_common()],
        formatter_class=_Formatter,
        epilog=TSNE_EPILOG,
        help="t-SNE of teacher vs student features, real vs fake (PNG)",
        description=_wrap(
            "Feature map of a trained run: t-SNE of the teacher's and the student's image "
            "features on a test folder, coloured real / fake."
        ),
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="training folder or checkpoint folder")
    p.add_argument("root", metavar="ROOT", help="image folder with real and fake images")
    p.add_argument("--out", "-o", metavar="PNG", required=True, help="the figure")
    p.add_argument(
        "--max-per-class",
        type=int,
        default=250,
        metavar="N",
        help="random images per class (default: 250)",
    )
    p.add_argument(
        "--perplexity",
        type=float,
        default=None,
        help="t-SNE perplexity (default: min(30, (n-1)/3))",
    )
    p.add_argument("--seed", type=int, default=0, metavar="N", help="(default: 0)")
    p.add_argument("--batch-size", type=int, default=64, metavar="N", help="(default: 64)")
    p.add_argument("--subsets", nargs="+", metavar="NAME", help="these subsets only")
    p.add_argument(
        "--split", choices=("train", "val"), default="val", help="GenImage split (default: val)"
    )
    p.add_argument(
        "--save-features", metavar="NPZ", help="also save the features and labels (numpy .npz)"
    )
    g = p.add_argument_group("model")
    _add_model_options(g, train=False)
    p.set_defaults(func=_cmd_tsne)
    parsers["tsne"] = p
    parsers["features"] = p

    parser.set_defaults(_subparsers=parsers)
    return parser


# ============================================================================================
# --config
# ============================================================================================

_CONFIG_SKIP = {"help", "config", "func", "_subparsers", "debug", "dgs"}


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse ``argv``; for ``train``, layer the option values: parser defaults < the preset's
    options < the ``--config`` file < command-line flags. The preset is the ``--preset`` flag,
    else the config file's ``"preset"``, else ``reference``; ``args.preset`` holds it."""
    args = parser.parse_args(argv)
    if args.command != "train":
        return args
    train_parser = args._subparsers["train"]
    from_file = _read_config(args.config, train_parser) if args.config else {}
    name = args.preset or from_file.get("preset") or DEFAULT_PRESET
    layered = {**get_preset(name).options, **from_file, "preset": name}
    train_parser.set_defaults(**layered)
    return parser.parse_args(argv)


def _read_config(config: str, train_parser: argparse.ArgumentParser) -> dict[str, Any]:
    """The ``--config`` file's options as ``{dest: value}`` (validated against the parser)."""
    path = Path(config)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read config file {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise UsageError(
            f"config file {path} is not valid JSON (line {exc.lineno}, column {exc.colno}: "
            f"{exc.msg})"
        ) from None
    if not isinstance(data, dict):
        raise UsageError(f"config file {path} must hold a JSON object of options")
    actions = {a.dest: a for a in train_parser._actions if a.dest not in _CONFIG_SKIP}
    defaults: dict[str, Any] = {}
    for key, value in data.items():
        dest = str(key).lstrip("-").replace("-", "_")
        if dest == "dgs":
            if not isinstance(value, dict):
                raise UsageError(f'config file {path}: "dgs" must be an object of DGSConfig fields')
            defaults["dgs"] = value
            continue
        if dest not in actions:
            known = ", ".join(sorted(actions))
            raise UsageError(f"config file {path}: unknown option {key!r} (known: {known}, dgs)")
        action = actions[dest]
        if (
            action.choices is not None
            and value is not None
            and value not in action.choices
            and str(value) not in action.choices
        ):
            raise UsageError(
                f"config file {path}: {key} must be one of {list(action.choices)}, got {value!r}"
            )
        if action.choices is not None and value is not None and value not in action.choices:
            value = str(value)
        defaults[dest] = value
    return defaults


# ============================================================================================
# helpers
# ============================================================================================


def _status(args: argparse.Namespace, message: str) -> None:
    if not getattr(args, "quiet", False):
        print(message, file=sys.stderr, flush=True)


def _device(name: str) -> Any:
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


def _positive(name: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UsageError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_roots(roots: Sequence[str], what: str = "root") -> None:
    for r in roots:
        p = Path(r)
        if not p.exists():
            raise UsageError(f"{what} {r} does not exist")
        if not p.is_dir():
            raise UsageError(f"{what} {r} is not a folder")


def _dgs_config(args: argparse.Namespace) -> Any:
    from .config import DGSConfig

    data = get_preset(args.preset).dgs_config().to_dict()
    overrides = args.dgs or {}
    unknown = sorted(set(overrides) - set(data))
    if unknown:
        raise UsageError(f'config "dgs": unknown DGSConfig field(s) {unknown}')
    data.update(overrides)
    for name in (
        "order",
        "align_weight",
        "align_scale",
        "suppression",
        "alignment",
        "conflict_only",
        "lora_rank",
        "lora_alpha",
        "lora_dropout",
        "lora_targets",
        "lora_layers",
        "teacher",
        "fused",
        "normalize_features",
    ):
        value = getattr(args, name, None)
        if value is not None:
            data[name] = value
    try:
        return DGSConfig.from_dict(data)
    except (ValueError, TypeError) as exc:
        raise UsageError(str(exc)) from None


def _preset_overrides(args: argparse.Namespace, config: Any) -> list[str]:
    """Names of the options (``dgs.<field>`` for DGSConfig fields) whose effective value
    differs from what the run's preset selects."""
    preset = get_preset(args.preset)
    changed = [k for k, v in preset.options.items() if getattr(args, k) != v]
    base = preset.dgs_config().to_dict()
    changed += [f"dgs.{k}" for k, v in config.to_dict().items() if base.get(k) != v]
    return changed


def _run_options(args: argparse.Namespace, config: Any) -> dict[str, Any]:
    """The effective options of a ``train`` run, as recorded in ``OUT/run.json["options"]``:
    every option after layering (preset < --config < flags), the preset's name, the options
    that differ from it (``preset_overrides``) and the resulting ``dgs_config``."""
    options = {k: v for k, v in vars(args).items() if k not in ("func", "_subparsers")}
    options["preset_overrides"] = _preset_overrides(args, config)
    options["dgs_config"] = config.to_dict()
    return _json_safe(options)


def train_settings(argv: Sequence[str]) -> dict[str, Any]:
    """The effective settings of ``dgsnet train ARGV...`` without running it (``argv`` are the
    arguments after ``train``): the dict that the run records as ``OUT/run.json["options"]``.
    Reads the ``--config`` file if one is given; builds no model and opens no data.

    >>> train_settings(["--preset", "aigibench-setting2", "data/train", "-o", "runs/x"])["model"]
    'ViT-L-14@openai'
    """
    args = _parse(build_parser(), ["train", *argv])
    return _run_options(args, _dgs_config(args))


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {
            str(k): _json_safe(v)
            for k, v in obj.items()
            if not callable(v) and not str(k).startswith("_")
        }
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


# ============================================================================================
# train
# ============================================================================================


def _cmd_train(args: argparse.Namespace) -> int:
    if not args.roots:
        raise UsageError(
            'train needs at least one ROOT (on the command line or "roots" in --config)'
        )
    if not args.out:
        raise UsageError("train needs --out DIR (the output folder)")
    _check_roots(args.roots)
    for name in ("epochs", "stage1_epochs", "batch_size", "lr_step", "log_every"):
        _positive("--" + name.replace("_", "-"), getattr(args, name))
    for name in ("workers", "save_every", "seed"):
        _positive("--" + name.replace("_", "-"), getattr(args, name), 0)
    for name in ("lr", "stage1_lr", "lr_gamma"):
        v = getattr(args, name)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise UsageError(f"--{name.replace('_', '-')} must be a positive number, got {v!r}")
    if args.captions:
        for c in args.captions:
            if not Path(c).is_file():
                raise UsageError(f"caption file {c} does not exist")
        if len(args.captions) not in (1, len(args.roots)):
            raise UsageError(
                f"got {len(args.captions)} --captions for {len(args.roots)} roots: give one, "
                "or one per root"
            )
    if args.init_from and not Path(args.init_from).exists():
        raise UsageError(f"--init-from {args.init_from} does not exist")
    config = _dgs_config(args)

    from .training import (
        ModelLoadError,
        build_model,
        open_datasets,
        seed_everything,
        setup_distributed,
        train,
    )
    from .wrapper import DGSWrapper

    device = _device(args.device)
    info = setup_distributed(device)
    quiet = args.quiet or not info.is_main
    seed_everything(args.seed)
    run_info = _run_options(args, config)
    overrides = run_info["preset_overrides"]
    if not quiet:
        _status(
            args,
            f"dgsnet: preset {args.preset}"
            + (f" (overridden: {', '.join(overrides)})" if overrides else ""),
        )
        _status(args, f"dgsnet: building model {args.model} on {device}")
    try:
        bundle = build_model(
            args.model,
            pretrained=args.pretrained,
            transform=args.transform,
            flip=args.flip,
            device=device,
            cache_dir=args.cache_dir,
        )
    except ModelLoadError as exc:
        preset = get_preset(args.preset)
        chosen = preset.options.get("transform")
        if args.transform == "patch-selection" and chosen == args.transform:
            raise ModelLoadError(
                f"{exc}; --preset {preset.name} selects --transform patch-selection "
                "(pass --transform model to use the model's own preprocessing)"
            ) from None
        raise
    wrapper = DGSWrapper(bundle.model, bundle.tokenizer, config)
    need_captions = args.stage != "1" and not config.plain
    captions: Any = None
    if need_captions:
        captions = list(args.captions) if args.captions else "auto"
        if captions == "auto" and args.caption_fallback:
            from .data import CaptionError, find_caption_file

            def found(root: str) -> bool:
                try:
                    find_caption_file(root)
                except CaptionError:
                    return False
                return True

            # no caption file at all: every image gets the fallback caption
            captions = ["auto" if found(r) else None for r in args.roots]
    datasets = open_datasets(
        args.roots,
        bundle.train_transform,
        captions=captions,
        caption_fallback=True if (need_captions and args.caption_fallback) else None,
        subsets=args.subsets,
        split="train",
    )
    _check_preset_subsets(args, datasets)
    if args.verify:
        for ds in datasets:
            ds.verify(num_workers=max(1, args.workers), progress=not quiet)
    if not quiet:
        for root, ds in zip(args.roots, datasets, strict=True):
            counts = ds.counts()
            n_real = sum(c["real"] for c in counts.values())
            n_fake = sum(c["fake"] for c in counts.values())
            _status(
                args,
                f"dgsnet: {root}: {len(ds)} images ({n_real} real, {n_fake} fake) in "
                f"{len(counts)} subset(s): {', '.join(counts)}",
            )
        det = (
            "deterministic (teacher cache on)"
            if bundle.deterministic_train
            else "random (flip/shuffle; teacher cache off)"
        )
        _status(
            args,
            f"dgsnet: training transform: {args.transform}, {det}; world size {info.world_size}",
        )
    result = train(
        wrapper,
        datasets,
        args.out,
        stage=args.stage,
        epochs=args.epochs,
        stage1_epochs=args.stage1_epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        stage1_lr=args.stage1_lr,
        lr_step=args.lr_step,
        lr_gamma=args.lr_gamma,
        seed=args.seed,
        resume=args.resume,
        init_from=args.init_from,
        save_every=args.save_every,
        log_every=args.log_every,
        on_nonfinite=args.on_nonfinite,
        num_workers=args.workers,
        deterministic_transform=bundle.deterministic_train,
        deterministic=args.deterministic,
        progress=not quiet,
        model_info=bundle.info(),
        run_info=run_info,
        handle_signals=True,
    )
    if not quiet:
        resumed = (
            f", resumed from step {result.resumed_from}" if result.resumed_from is not None else ""
        )
        skipped = f" ({result.skipped_steps} skipped: non-finite)" if result.skipped_steps else ""
        if result.stage1_history:
            _status(
                args,
                "dgsnet: stage 1 teacher-head loss per epoch: "
                + ", ".join(f"{h:.4f}" for h in result.stage1_history),
            )
        _status(
            args,
            f"dgsnet: done: {result.global_step} stage-2 steps{skipped}{resumed} in "
            f"{result.elapsed_s:.1f} s; weights in {result.final_dir}",
        )
    if info.distributed:
        import torch.distributed as dist

        dist.destroy_process_group()
    return EXIT_OK


def _check_preset_subsets(args: argparse.Namespace, datasets: Sequence[Any]) -> None:
    """Warn when a whole-setting preset runs on other subsets than it was defined on."""
    expected = get_preset(args.preset).subsets
    if not expected:
        return
    found: list[str] = []
    for ds in datasets:
        found += [s for s in ds.subsets() if s not in found]
    if set(found) == set(expected):
        return
    missing = [s for s in expected if s not in found]
    extra = [s for s in found if s not in expected]
    parts = ([f"missing {', '.join(missing)}"] if missing else []) + (
        [f"not in the setting: {', '.join(extra)}"] if extra else []
    )
    warnings.warn(
        f"--preset {args.preset} is defined on the training subsets {', '.join(expected)}; "
        f"this run's data has {', '.join(found)} ({'; '.join(parts)}). See "
        "docs/paper-setting.md for the folder layout (--subsets selects subsets)",
        UserWarning,
        stacklevel=2,
    )


# ============================================================================================
# eval
# ============================================================================================


def _load(args: argparse.Namespace) -> tuple[Any, Any]:
    from .training import load_trained

    if not Path(args.checkpoint).exists():
        raise UsageError(f"checkpoint {args.checkpoint} does not exist")
    device = _device(args.device)
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


def _degradation_name(args: argparse.Namespace) -> str:
    from .data import Degrade

    try:
        return Degrade(args.jpeg_quality, args.blur_sigma, args.resize_scale).name
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _cmd_eval(args: argparse.Namespace) -> int:
    _check_roots(args.roots, "test root")
    _positive("--batch-size", args.batch_size)
    _positive("--workers", args.workers, 0)
    degradation = _degradation_name(args)
    plot_backend = _import_matplotlib() if args.plot else None
    wrapper, bundle = _load(args)
    from .training import evaluate

    tables = evaluate(
        wrapper,
        args.roots,
        bundle.eval_transform,
        jpeg_quality=args.jpeg_quality,
        blur_sigma=args.blur_sigma,
        resize_scale=args.resize_scale,
        batch_size=args.batch_size,
        num_workers=args.workers,
        subsets=args.subsets,
        split=args.split,
        threshold=args.threshold,
        progress=not args.quiet,
    )
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
        print(_roots_summary_markdown(tables))
    sys.stdout.flush()
    if args.csv:
        _write_eval_csv(args.csv, tables, degradation)
        _status(args, f"dgsnet: wrote {args.csv}")
    if args.json:
        from .io import atomic_write_json

        atomic_write_json(
            Path(args.json),
            {
                "format": "dgsnet.eval",
                "version": 1,
                "checkpoint": os.fspath(args.checkpoint),
                "degradation": degradation,
                "threshold": args.threshold,
                "roots": [{"root": root, "table": t.to_dict()} for root, t in tables.items()],
            },
        )
        _status(args, f"dgsnet: wrote {args.json}")
    if args.plot:
        _plot_accuracy(plot_backend, args.plot, tables, degradation)
        _status(args, f"dgsnet: wrote {args.plot}")
    return EXIT_OK


def _roots_summary_markdown(tables: dict[str, Any]) -> str:
    """One row per root: its number of subsets and its mean row (the plain mean over its
    subsets, x100, one decimal), i.e. one row per benchmark when each root is one."""
    from .metrics import TABLE_COLUMNS, markdown_grid

    rows = [
        [
            root.replace("|", "\\|"),
            str(len(table)),
            *(f"{100.0 * table.mean()[c]:.1f}" for c in TABLE_COLUMNS),
        ]
        for root, table in tables.items()
    ]
    return markdown_grid(["root", "subsets", *TABLE_COLUMNS], rows)


def _write_eval_csv(path: str, tables: dict[str, Any], degradation: str) -> None:
    from .io import atomic_write_text

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    header_done = False
    for root, table in tables.items():
        buf = io.StringIO()
        table.to_csv(buf)
        rows = list(csv.reader(io.StringIO(buf.getvalue())))
        if not header_done:
            writer.writerow(["root", "degradation", *rows[0]])
            header_done = True
        for row in rows[1:]:
            writer.writerow([root, degradation, *row])
    atomic_write_text(Path(path), out.getvalue())


def _import_matplotlib() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError(
            "plots need matplotlib, which is not installed: pip install 'dgsnet[viz]'"
        ) from None
    return plt


def _plot_accuracy(plt: Any, path: str, tables: dict[str, Any], degradation: str) -> None:
    import numpy as np

    fig, axes = plt.subplots(
        len(tables),
        1,
        figsize=(max(6.0, 0.9 * max(len(t) + 1 for t in tables.values()) + 2), 3.2 * len(tables)),
        squeeze=False,
    )
    for ax, (root, table) in zip(axes[:, 0], tables.items(), strict=True):
        names = [*table.subsets, "mean"]
        mean = table.mean()
        cols = ("acc", "r_acc", "f_acc")
        x = np.arange(len(names))
        width = 0.8 / len(cols)
        for j, col in enumerate(cols):
            vals = [100 * getattr(table[n], col) for n in table.subsets] + [100 * mean[col]]
            ax.bar(x + (j - 1) * width, vals, width, label=col)
        ax.set_xticks(x)
        ax.set_xticklabels(names, rotation=30, ha="right")
        ax.set_ylim(0, 105)
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"{Path(root).name} ({degradation})")
        ax.axhline(50, color="grey", lw=0.6, ls="--")
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ============================================================================================
# predict
# ============================================================================================


class _PathDataset:
    def __init__(self, paths: list[str], transform: Any) -> None:
        self.paths, self.transform = paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Any:
        from .data import CorruptImageError, DatasetError, Sample
        from .data._common import load_image

        try:
            img = load_image(self.paths[i])
        except CorruptImageError as exc:
            raise DatasetError(str(exc)) from exc
        return Sample(self.transform(img), None, 0, "", i, self.paths[i])


def _cmd_predict(args: argparse.Namespace) -> int:
    from .data import list_images
    from .data._common import is_image_file

    _positive("--batch-size", args.batch_size)
    _positive("--workers", args.workers, 0)
    paths: list[str] = []
    for item in args.inputs:
        p = Path(item)
        if p.is_dir():
            found = list_images(p)
            if not found:
                raise UsageError(f"folder {item} contains no images")
            paths.extend(found)
        elif p.is_file():
            if not is_image_file(p):
                raise UsageError(f"{item} is not an image file (by its extension)")
            paths.append(os.fspath(p))
        else:
            raise UsageError(f"{item} does not exist")
    paths = list(dict.fromkeys(paths))
    wrapper, bundle = _load(args)
    from .training import predict_scores

    scores, _, _, done_paths = predict_scores(
        wrapper,
        _PathDataset(paths, bundle.eval_transform),
        batch_size=args.batch_size,
        num_workers=args.workers,
        progress=not args.quiet and args.out is not None,
    )
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["path", "score", "label_pred"])
    for path, score in zip(done_paths, scores.tolist(), strict=True):
        writer.writerow([path, f"{score:.6f}", int(score > args.threshold)])
    if args.out:
        from .io import atomic_write_text

        atomic_write_text(Path(args.out), out.getvalue())
        n_fake = int((scores > args.threshold).sum())
        _status(
            args, f"dgsnet: wrote {args.out}: {len(done_paths)} images, {n_fake} predicted fake"
        )
    else:
        sys.stdout.write(out.getvalue())
        sys.stdout.flush()
    return EXIT_OK


# ============================================================================================
# caption
# ============================================================================================


def _cmd_caption(args: argparse.Namespace) -> int:
    from .data import (
        BlipCaptioner,
        DatasetError,
        TemplateCaptioner,
        caption_file_candidates,
        generate_captions,
        list_images,
        open_dataset,
    )

    _check_roots([args.root])
    _positive("--batch-size", args.batch_size)
    _positive("--save-every", args.save_every)
    categories: dict[str, str | None] = {}
    try:
        ds = open_dataset(args.root, split="train", allow_single_class=True)
        paths = list(ds.paths)
        categories = dict(zip(ds.paths, ds.categories, strict=True))
    except DatasetError:
        paths = list_images(args.root)
    if not paths:
        raise UsageError(f"{args.root} contains no images")
    out = Path(args.out) if args.out else caption_file_candidates(args.root)[0]
    if args.template is not None:
        captioner: Any = TemplateCaptioner(args.template or None, categories=categories.get)
    else:
        device = None if args.device == "auto" else os.fspath(args.device)
        kw: dict[str, Any] = {
            "device": device,
            "max_new_tokens": args.max_new_tokens,
            "local_files_only": args.local_files_only,
        }
        name = args.blip_model or BlipCaptioner.DEFAULT_MODEL
        try:
            captioner = BlipCaptioner(name, **kw)
        except ImportError as exc:
            raise UsageError(f"{exc} (or use --template)") from None
        except Exception as exc:
            raise UsageError(
                f"cannot load the BLIP model {name!r}: {' '.join(str(exc).split())[:300]} "
                "(it must be available locally without network; or use --template)"
            ) from None
    _status(args, f"dgsnet: captioning {len(paths)} images into {out}")
    report = generate_captions(
        paths,
        out,
        captioner,
        batch_size=args.batch_size,
        progress=not args.quiet,
        root=args.root,
        relative=args.relative,
        save_every=args.save_every,
        on_error="skip" if args.skip_errors else "raise",
    )
    _status(
        args,
        f"dgsnet: {out}: {report.new} new caption(s), {report.existing} already there"
        + (f", {len(report.failed)} unreadable image(s) skipped" if report.failed else ""),
    )
    return EXIT_OK


# ============================================================================================
# tsne
# ============================================================================================


def _cmd_tsne(args: argparse.Namespace) -> int:
    import numpy as np

    _check_roots([args.root])
    _positive("--max-per-class", args.max_per_class, 2)
    _positive("--batch-size", args.batch_size)
    plt = _import_matplotlib()
    try:
        from sklearn.manifold import TSNE
    except ImportError:
        raise UsageError(
            "t-SNE needs scikit-learn, which is not installed: pip install 'dgsnet[viz]'"
        ) from None
    import torch
    from torch.utils.data import DataLoader, Subset

    from .data import collate, open_dataset

    wrapper, bundle = _load(args)
    kwargs: dict[str, Any] = {"transform": bundle.eval_transform}
    if args.subsets:
        kwargs["subsets"] = args.subsets
    ds = open_dataset(args.root, split=args.split, **kwargs)
    rng = np.random.default_rng(args.seed)
    labels = np.asarray(ds.labels)
    chosen: list[int] = []
    for cls in (0, 1):
        idx = np.flatnonzero(labels == cls)
        if len(idx) > args.max_per_class:
            idx = np.sort(rng.choice(idx, size=args.max_per_class, replace=False))
        chosen.extend(idx.tolist())
    if len(chosen) < 5:
        raise UsageError(f"{args.root} holds {len(chosen)} images; t-SNE needs at least 5")
    loader = DataLoader(Subset(ds, chosen), batch_size=args.batch_size, collate_fn=collate)
    teacher, student, ys, subsets = [], [], [], []
    _status(args, f"dgsnet: features of {len(chosen)} images")
    with torch.no_grad():
        for batch in loader:
            images = batch.images.to(wrapper.device)
            teacher.append(wrapper.encode_teacher(images).float().cpu().numpy())
            student.append(wrapper.encode_student(images).float().cpu().numpy())
            ys.append(batch.labels.numpy())
            subsets.extend(batch.subsets)
    feats = {"teacher": np.concatenate(teacher), "student": np.concatenate(student)}
    y = np.concatenate(ys)
    n = len(y)
    perplexity = (
        args.perplexity if args.perplexity is not None else max(1.0, min(30.0, (n - 1) / 3))
    )
    if not 0 < perplexity < n:
        raise UsageError(f"--perplexity must be in (0, {n}) for {n} images, got {perplexity}")
    emb = {}
    for name, f in feats.items():
        _status(args, f"dgsnet: t-SNE of the {name} features")
        emb[name] = TSNE(
            n_components=2, perplexity=perplexity, init="pca", random_state=args.seed
        ).fit_transform(f)
    if args.save_features:
        np.savez(
            args.save_features,
            teacher=feats["teacher"],
            student=feats["student"],
            labels=y,
            teacher_tsne=emb["teacher"],
            student_tsne=emb["student"],
            subsets=np.asarray(subsets, dtype=str),
        )
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6))
    titles = {
        "teacher": "teacher: pre-trained CLIP (adapters off)",
        "student": "student: DGS fine-tuned",
    }
    for ax, name in zip(axes, ("teacher", "student"), strict=True):
        e = emb[name]
        for lab, colour, text in ((0, "tab:blue", "real"), (1, "tab:red", "fake")):
            m = y == lab
            ax.scatter(e[m, 0], e[m, 1], s=8, c=colour, alpha=0.7, label=f"{text} ({int(m.sum())})")
        ax.set_title(titles[name])
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(loc="best", fontsize="small")
    fig.suptitle(f"t-SNE of image features: {Path(args.root).name}")
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=130)
    plt.close(fig)
    _status(args, f"dgsnet: wrote {args.out}")
    return EXIT_OK


# ============================================================================================
# main
# ============================================================================================


def _input_errors() -> tuple[type[BaseException], ...]:
    from .data import DatasetError
    from .io import CheckpointError
    from .training import ModelLoadError, TrainingConfigError

    return (UsageError, DatasetError, CheckpointError, ModelLoadError, TrainingConfigError)


_DATA_ERROR_NAMES = ("DatasetError", "CorruptImageError", "CaptionError")


def _worker_error(exc: BaseException) -> str | None:
    """The message of a data error re-raised from a DataLoader worker (which wraps it in a
    traceback text), or ``None``."""
    text = str(exc)
    if "DataLoader worker" not in text or "Traceback" not in text:
        return None
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        head, sep, msg = ln.partition(": ")
        if sep and head.rsplit(".", 1)[-1] in _DATA_ERROR_NAMES:
            return msg
    return None


def _print_error(exc: BaseException | str) -> None:
    text = str(exc).strip() or type(exc).__name__
    lines = text.splitlines()
    print(f"{PROG}: error: {lines[0]}", file=sys.stderr)
    for ln in lines[1:8]:
        print(f"  {ln.strip()}", file=sys.stderr)
    if len(lines) > 8:
        print("  ...", file=sys.stderr)


def _show_warning(
    message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None
) -> None:
    text = str(message).strip().splitlines()
    stream = sys.stderr if file is None else file
    print(f"{PROG}: warning: {text[0] if text else category.__name__}", file=stream)
    for ln in text[1:6]:
        print(f"  {ln.strip()}", file=stream)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dgsnet`` command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    parser = build_parser()
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        try:
            args = _parse(parser, argv)
            return int(args.func(args) or 0)
        except SystemExit as exc:  # argparse: --help, --version, usage errors
            return (
                exc.code if isinstance(exc.code, int) else (0 if exc.code is None else EXIT_FAILURE)
            )
        except KeyboardInterrupt as exc:
            if debug:
                raise
            msg = str(exc).strip()
            print(f"{PROG}: interrupted" + (f": {msg}" if msg else ""), file=sys.stderr)
            return EXIT_INTERRUPTED
        except Exception as exc:
            from .training import NonFiniteError

            if debug:
                raise
            worker = _worker_error(exc)
            if worker is not None:
                _print_error(worker)
                return EXIT_USAGE
            if isinstance(exc, NonFiniteError):
                _print_error(exc)
                return EXIT_FAILURE
            if isinstance(exc, _input_errors()):
                _print_error(exc)
                return EXIT_USAGE
            if isinstance(exc, OSError) and exc.filename is not None:
                _print_error(f"{exc.strerror or exc}: {exc.filename}")
                return EXIT_FAILURE
            raise


if __name__ == "__main__":
    sys.exit(main())
