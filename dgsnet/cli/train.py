"""`dgsnet train`: two-stage DGS training (teacher probe, then LoRA + surgery); resumable."""

from __future__ import annotations

import argparse
import dataclasses
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UsageError
from ..io import json_safe
from ..training.workers import default_workers
from .common import check_roots, resolve_device, status
from .errors import EXIT_OK
from .options import (
    Formatter,
    add_dgs_options,
    add_model_options,
    add_precision_options,
    common_parent,
    dgs_config,
    wrap,
)
from .presets import TRAIN_PRESETS, get_preset
from .run_config import resolved_config, write_run_config
from .train_flags import flag_error
from .train_validation import add_validation_options, open_validation

if TYPE_CHECKING:
    from ..training.options import TrainOptions

__all__ = ["NAME", "add_parser", "run", "run_options", "train_options"]

NAME = "train"

EPILOG = """\
examples:
  # the paper's whole training setting (ViT-L/14 OpenAI weights in the local cache;
  # the user guide's paper-setting page); flags and --config keys override it:
  dgsnet train --preset aigibench-setting2 data/AIGIBench/train --out runs/setting2

  # the reference recipe with the model's own preprocessing:
  dgsnet train data/AIGIBench/train --out runs/dgs --model ViT-L-14@openai

  # try the whole pipeline in a minute with a tiny random CLIP:
  dgsnet train data/train --out runs/tiny --model tiny --epochs 2 --batch-size 8 \\
      --lr 1e-3 --stage1-lr 1e-2

  # ablation: no Orthogonal Suppression, paper order, batch-size-invariant alignment:
  dgsnet train data/train --out runs/abl --no-suppression --order project_then_align \\
      --align-scale invariant

  # options from a JSON or YAML file (keys are option names); flags on the line override it:
  dgsnet train --config recipe.yaml --out runs/r2 --lr 5e-5

  # the same run again, from the config it saved (same final weights, bit for bit):
  dgsnet train --config runs/tiny/config.yaml --out runs/tiny-again

  # validation after every epoch, best/ weights, early stop after 3 epochs without gain:
  dgsnet train data/train --out runs/val --val data/val --patience 3

  # several GPUs:
  torchrun --nproc-per-node 4 -m dgsnet.cli train data/train --out runs/ddp

Captions: by default each root's caption file is looked up as <parent>/<split>_text/<split>.json
(make one with `dgsnet caption`). An interrupted run resumes from OUT/last when the same
command is run again (--no-resume starts over).
"""

_PRESET_HELP = (
    "reference: DGS options from DGSConfig.reference() (LoRA on q/k/v, as "
    "released); library: from DGSConfig(); aigibench-setting2: the whole paper setting "
    "(ViT-L-14@openai, patch-selection + flip, 3 + 1 epochs, batch 32, lr 1e-4, "
    "reference DGS; the user guide's paper-setting page). Precedence: preset < --config < flags "
    "(default: reference)"
)


# --------------------------------------------------------------------------------------------
# options
# --------------------------------------------------------------------------------------------


def add_parser(sub: Any) -> list[argparse.ArgumentParser]:
    """Add `train` and its options to the subparsers `sub`."""
    p = sub.add_parser(
        NAME,
        parents=[common_parent()],
        formatter_class=Formatter,
        epilog=EPILOG,
        help="two-stage DGS training (teacher probe, then LoRA + surgery); resumable",
        description=wrap(
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
        help="JSON or YAML (.yaml/.yml) mapping of options (keys = option names, e.g. "
        '"batch_size"; "dgs": DGSConfig fields), such as a run\'s OUT/config.yaml; '
        "command-line flags override it",
    )
    _add_data_options(p.add_argument_group("data"))
    _add_model_group(p.add_argument_group("model"))
    g = p.add_argument_group("training")
    _add_schedule_options(g)
    _add_run_options(g)
    add_validation_options(p.add_argument_group("validation during training"))
    g = p.add_argument_group("DGS (defaults: the reference preset)")
    g.add_argument("--preset", choices=tuple(TRAIN_PRESETS), default=None, help=_PRESET_HELP)
    add_dgs_options(g)
    p.set_defaults(func=run, dgs=None)
    return [p]


def _add_data_options(g: argparse._ArgumentGroup) -> None:
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
        default=default_workers(),
        metavar="N",
        help=f"DataLoader worker processes (default: 4, or the usable CPU cores when fewer: "
        f"{default_workers()} here)",
    )


def _add_model_group(g: argparse._ArgumentGroup) -> None:
    add_model_options(g, train=True)
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


def _add_schedule_options(g: argparse._ArgumentGroup) -> None:
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


def _add_run_options(g: argparse._ArgumentGroup) -> None:
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
    g.add_argument(
        "--tensorboard",
        action="store_true",
        help="also write the logged losses, lr and surgery statistics as TensorBoard scalars "
        "to OUT/tensorboard (needs the tensorboard extra)",
    )
    add_precision_options(g, compile=True)


# --------------------------------------------------------------------------------------------
# recorded options
# --------------------------------------------------------------------------------------------


def _preset_overrides(args: argparse.Namespace, config: Any) -> list[str]:
    """Names of the options (`dgs.<field>` for DGSConfig fields) whose effective value
    differs from what the run's preset selects."""
    preset = get_preset(args.preset)
    changed = [k for k, v in preset.options.items() if getattr(args, k) != v]
    base = preset.dgs_config().to_dict()
    changed += [f"dgs.{k}" for k, v in config.to_dict().items() if base.get(k) != v]
    return changed


def run_options(args: argparse.Namespace, config: Any) -> dict[str, Any]:
    """The effective options of a `train` run, as recorded in `OUT/run.json["options"]`:
    every option after layering (preset < --config < flags), the preset's name, the options
    that differ from it (`preset_overrides`) and the resulting `dgs_config`."""
    options = {k: v for k, v in vars(args).items() if k not in ("func", "_subparsers")}
    options["preset_overrides"] = _preset_overrides(args, config)
    options["dgs_config"] = config.to_dict()
    return json_safe(options, drop_private=True, default=str)  # type: ignore[no-any-return]


# --------------------------------------------------------------------------------------------
# run
# --------------------------------------------------------------------------------------------


def _check_args(args: argparse.Namespace) -> None:
    """The checks only the command line makes: roots and `--out` given, the named folders
    and files exist (the option values are checked by `TrainOptions`).
    """
    if not args.roots:
        raise UsageError(
            'train needs at least one ROOT (on the command line or "roots" in --config)'
        )
    if not args.out:
        raise UsageError("train needs --out DIR (the output folder)")
    check_roots(args.roots)
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
    if args.tensorboard:
        from ..training.tensorboard import require_tensorboard

        try:
            require_tensorboard()
        except ImportError as exc:
            raise UsageError(f"--tensorboard: {exc}") from None


def train_options(args: argparse.Namespace, run_info: dict[str, Any]) -> TrainOptions:
    """The run's `TrainOptions` from the parsed options (validated
    there, once; a bad value raises `TrainingConfigError`, exit 2).
    `progress`, `deterministic_transform` and `model_info` are filled in by `run`
    once the process group and the model exist."""
    from ..training.options import TrainOptions

    return TrainOptions(
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
        deterministic=args.deterministic,
        progress=not args.quiet,
        run_info=run_info,
        handle_signals=True,
        tensorboard=args.tensorboard,
        precision=args.precision,
        compile=args.compile,
        val_fraction=args.val_fraction,
        val_every=args.val_every,
        val_metric=args.val_metric,
        patience=args.patience,
    )


def _build_model(args: argparse.Namespace, device: Any) -> Any:
    from ..errors import ModelLoadError
    from ..models import build_model

    try:
        return build_model(
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


def _captions(args: argparse.Namespace, config: Any) -> tuple[Any, bool | None]:
    """The `captions` and `caption_fallback` arguments of `open_datasets`."""
    if args.stage == "1" or config.plain:
        return None, None
    captions: Any = list(args.captions) if args.captions else "auto"
    if captions == "auto" and args.caption_fallback:
        from ..data import find_caption_file
        from ..errors import CaptionError

        def found(root: str) -> bool:
            try:
                find_caption_file(root)
            except CaptionError:
                return False
            return True

        # no caption file at all: every image gets the fallback caption
        captions = ["auto" if found(r) else None for r in args.roots]
    return captions, (True if args.caption_fallback else None)


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
        "the user guide's paper-setting page for the folder layout (--subsets selects subsets)",
        UserWarning,
        stacklevel=2,
    )


def _report_data(args: argparse.Namespace, datasets: Sequence[Any], bundle: Any, info: Any) -> None:
    for root, ds in zip(args.roots, datasets, strict=True):
        counts = ds.counts()
        n_real = sum(c["real"] for c in counts.values())
        n_fake = sum(c["fake"] for c in counts.values())
        status(
            args,
            f"dgsnet: {root}: {len(ds)} images ({n_real} real, {n_fake} fake) in "
            f"{len(counts)} subset(s): {', '.join(counts)}",
        )
    det = (
        "deterministic (teacher cache on)"
        if bundle.deterministic_train
        else "random (flip/shuffle; teacher cache off)"
    )
    status(
        args, f"dgsnet: training transform: {args.transform}, {det}; world size {info.world_size}"
    )


def _report_result(args: argparse.Namespace, result: Any) -> None:
    resumed = (
        f", resumed from step {result.resumed_from}" if result.resumed_from is not None else ""
    )
    skipped = f" ({result.skipped_steps} skipped: non-finite)" if result.skipped_steps else ""
    if result.stage1_history:
        status(
            args,
            "dgsnet: stage 1 teacher-head loss per epoch: "
            + ", ".join(f"{h:.4f}" for h in result.stage1_history),
        )
    status(
        args,
        f"dgsnet: done: {result.global_step} stage-2 steps{skipped}{resumed} in "
        f"{result.elapsed_s:.1f} s; weights in {result.final_dir}",
    )


def _open_data(args: argparse.Namespace, config: Any, bundle: Any, quiet: bool) -> list[Any]:
    from ..training.data import open_datasets

    captions, fallback = _captions(args, config)
    datasets = open_datasets(
        args.roots,
        bundle.train_transform,
        captions=captions,
        caption_fallback=fallback,
        subsets=args.subsets,
        split="train",
    )
    _check_preset_subsets(args, datasets)
    if args.verify:
        for ds in datasets:
            ds.verify(num_workers=max(1, args.workers), progress=not quiet)
    return list(datasets)


def run(args: argparse.Namespace) -> int:
    """Run `dgsnet train`; returns the exit status."""
    _check_args(args)
    config = dgs_config(args)
    run_info = run_options(args, config)
    try:
        options = train_options(args, run_info)
    except ValueError as exc:  # TrainingConfigError: report the flag, not the field
        raise flag_error(exc) from None

    from ..training.distributed import setup_distributed
    from ..training.seeding import seed_everything
    from ..training.trainer import Trainer
    from ..wrapper import DGSWrapper

    device = resolve_device(args.device)
    info = setup_distributed(device)
    quiet = args.quiet or not info.is_main
    seed_everything(args.seed)
    if not quiet:
        overrides = run_info["preset_overrides"]
        status(
            args,
            f"dgsnet: preset {args.preset}"
            + (f" (overridden: {', '.join(overrides)})" if overrides else ""),
        )
        status(args, f"dgsnet: building model {args.model} on {device}")
    bundle = _build_model(args, device)
    wrapper = DGSWrapper(bundle.model, bundle.tokenizer, config)
    datasets = _open_data(args, config, bundle, quiet)
    if not quiet:
        _report_data(args, datasets, bundle, info)
    options = dataclasses.replace(
        options,
        progress=not quiet,
        deterministic_transform=bundle.deterministic_train,
        model_info=bundle.info(),
    )
    val_data = open_validation(args, bundle)
    resolved = resolved_config(args, config)

    def save_config(event: str, state: Any) -> None:  # once the run holds its folder
        if event == "train_begin" and state.rank == 0:
            write_run_config(args.out, resolved)

    result = Trainer(wrapper, datasets, options, callbacks=[save_config], val_data=val_data).run()
    if not quiet:
        _report_result(args, result)
    if info.distributed:
        import torch.distributed as dist

        dist.destroy_process_group()
    return EXIT_OK
