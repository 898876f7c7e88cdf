"""Options shared by several commands, the DGS options, and the layering of `train`'s values.

* `common_parent`: `--debug`, `--quiet`, `--device` (the commands with `--device`);
  `add_status_options`: `--debug`, `--quiet` (the commands without it).
* `add_model_options`, `add_scoring_options`: the model of a run or checkpoint,
  and the threshold and preprocessing override of `eval` and `predict`.
* `add_precision_options`: `--precision` (`train`, `eval`, `predict`) and
  `--compile` (`train`).
* `add_dgs_options`: one option per `DGSConfig` field, derived
  from `dataclasses.fields(DGSConfig)` (`DGS_FLAGS` only adjusts help text and names);
  `dgs_config` builds the run's config from them.
* `parse_args`: for `train`, option values are layered
  `parser defaults < the preset's options < the --config file < command-line flags`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import textwrap
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..errors import UsageError
from ..wrapper import DGSConfig
from .presets import DEFAULT_PRESET, get_preset

__all__ = [
    "DGS_FLAGS",
    "DgsFlag",
    "Formatter",
    "add_dgs_options",
    "add_model_options",
    "add_precision_options",
    "add_scoring_options",
    "add_status_options",
    "check_option_values",
    "common_parent",
    "dgs_config",
    "dgs_flags",
    "parse_args",
    "probability",
    "read_config",
    "unknown_key",
    "wrap",
]


#: help text is laid out for this many columns at most, and at least `_MIN_WIDTH`
_MAX_WIDTH, _MIN_WIDTH = 100, 40


def _term_width() -> int:
    """The help width: the terminal's columns (`COLUMNS` first, then the terminal), clamped to
    [40, 100]. A terminal that reports 0 columns (a pty under `script`, some CI runners) or
    no terminal at all gives 100."""
    columns = shutil.get_terminal_size(fallback=(_MAX_WIDTH, 24)).columns
    if columns <= 0:  # shutil falls back on 0 already; a negative COLUMNS is refused here
        columns = _MAX_WIDTH
    return max(_MIN_WIDTH, min(_MAX_WIDTH, columns))


def wrap(text: str) -> str:
    """`text` filled to the help width (at most 100 columns)."""
    return textwrap.fill(text, _term_width() - 2)


class Formatter(argparse.RawDescriptionHelpFormatter):
    """Help layout of every command: epilogs kept as written, options at column 32."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32, width=_term_width())


# --------------------------------------------------------------------------------------------
# shared option groups
# --------------------------------------------------------------------------------------------


def add_status_options(p: argparse.ArgumentParser) -> None:
    """The "general" group of a command without `--device`: `--debug` and `--quiet`/`-q`
    (no status lines). The commands with `--device` take `common_parent` instead."""
    g = p.add_argument_group("general")
    g.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    g.add_argument("--quiet", "-q", action="store_true", help="no status lines")


def common_parent() -> argparse.ArgumentParser:
    """The parent parser of every command: `--debug`, `--quiet`/`-q`, `--device`."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("general")
    g.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    g.add_argument("--quiet", "-q", action="store_true", help="no progress bars or status lines")
    g.add_argument(
        "--device",
        default="auto",
        help="cpu, cuda, cuda:1, ... (default: auto = cuda when available)",
    )
    return p


def add_model_options(g: argparse._ArgumentGroup, *, train: bool) -> None:
    """`--model`, `--pretrained`, `--cache-dir`: the backbone of a new run (`train`),
    or the base model of a checkpoint that does not record it."""
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


PRECISION_CHOICES = ("fp32", "tf32", "bf16", "fp16")


def add_precision_options(g: argparse._ArgumentGroup, *, compile: bool) -> None:
    """`--precision {fp32,tf32,bf16,fp16}` and, with `compile`, `--compile`.

    Args:
        g: the option group to add them to.
        compile: add `--compile` (`train` only).
    """
    g.add_argument(
        "--precision",
        choices=PRECISION_CHOICES,
        default="fp32",
        help="fp32: float32, TF32 off; tf32: TF32 matmuls/convolutions (CUDA); bf16: bfloat16 "
        "autocast; fp16: float16 autocast + loss scaling (default: fp32)",
    )
    if compile:
        g.add_argument(
            "--compile",
            action="store_true",
            help="torch.compile the image tower (first steps are slower while it compiles)",
        )


def probability(text: str) -> float:
    """An `argparse` type: a number in [0, 1] (NaN refused, which would compare false with
    every score and label every image real).

    Raises:
        argparse.ArgumentTypeError: `text` is not such a number.
    """
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:  # false for NaN too
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return value


def add_scoring_options(p: argparse.ArgumentParser, threshold_group: Any) -> None:
    """Options shared by `eval` and `predict`: the decision threshold (in
    `threshold_group`), the model options of a trained checkpoint, and a preprocessing
    override."""
    threshold_group.add_argument(
        "--threshold",
        type=probability,
        default=0.5,
        metavar="T",
        help="fake iff score > threshold (default: 0.5)",
    )
    g = p.add_argument_group("model")
    add_model_options(g, train=False)
    add_precision_options(g, compile=False)
    g.add_argument(
        "--transform",
        choices=("model", "patch-selection"),
        default=None,
        help="override the preprocessing recorded with the checkpoint",
    )


# --------------------------------------------------------------------------------------------
# DGS options, derived from the DGSConfig fields
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DgsFlag:
    """How one `DGSConfig` field appears on the command line.

    `help`/`metavar`: the help text and value name (default: generic ones naming the
    field). `flag`: the option name without `--` (default: the field name with dashes;
    `no-` is prefixed for a bool field whose default is `True`). `hidden`: the field has
    no option (it stays reachable through the `"dgs"` object of a `--config` file).
    """

    help: str | None = None
    metavar: str | None = None
    flag: str | None = None
    hidden: bool = False


DGS_FLAGS: dict[str, DgsFlag] = {
    # binary real/fake detection is what train/eval/predict are built for
    "num_classes": DgsFlag(hidden=True),
    "loss": DgsFlag(hidden=True),
    # numerical guards and exact speed-ups (docs/performance.md): --config "dgs" only
    "eps": DgsFlag(hidden=True),
    "nonfinite": DgsFlag(hidden=True),
    "text_cache_size": DgsFlag(hidden=True),
    "teacher_cache": DgsFlag(hidden=True),
    "shared_trunk": DgsFlag(hidden=True),
    "closed_form_heads": DgsFlag(hidden=True),
    "extra": DgsFlag(hidden=True),
    "order": DgsFlag("alignment before the projection (reference code) or after (paper)"),
    "align_weight": DgsFlag("lambda (reference 0.2)", "W"),
    "align_scale": DgsFlag("reference: lambda/B as released; invariant: batch-size invariant"),
    "suppression": DgsFlag("ablation: switch Orthogonal Suppression off"),
    "alignment": DgsFlag("ablation: switch Prior Alignment off"),
    "conflict_only": DgsFlag("project only when the gradient conflicts with the harmful direction"),
    "lora_rank": DgsFlag("(reference 6)", "R"),
    "lora_alpha": DgsFlag("(reference 6)", "A"),
    "lora_dropout": DgsFlag("(reference 0.8)", "P"),
    "lora_targets": DgsFlag("module names, e.g. q_proj k_proj v_proj", "NAME"),
    "lora_layers": DgsFlag("block indices (negative from the end); default all", "I"),
    "teacher": DgsFlag("shared: adapters off (no copy, default); copy: a frozen deep copy"),
    "fused": DgsFlag("fused surgery kernel"),
    "normalize_features": DgsFlag("L2-normalise features before the heads"),
}
"""Adjustments to the options derived from the DGSConfig fields (their order is the order of the
help). A field not listed here gets an option with generic help, after these; a bool field
becomes `--<name>` (default `False`) or `--no-<name>` (default `True`), a `Literal` field a
choice, a list field a one-or-more option."""


def _without_none(tp: Any) -> Any:
    """`X` for `X | None` (`Optional[X]`), else `tp`."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if type(None) in typing.get_args(tp) and len(args) == 1:
        return args[0]
    return tp


def _argument(name: str, tp: Any, default: Any, spec: DgsFlag) -> tuple[str, dict[str, Any]]:
    """The option string and `add_argument` keywords of one field, or `("", {})` when
    its type has no command-line form (a dict, for example)."""
    tp = _without_none(tp)
    flag = "--" + (spec.flag or name.replace("_", "-"))
    kw: dict[str, Any] = {"dest": name, "default": None}
    if tp is bool:
        if spec.flag is None and default is True:
            flag = "--no-" + name.replace("_", "-")
        kw.update(action="store_const", const=not default)
        kw["help"] = spec.help or f"set DGSConfig.{name} to {not default}"
        return flag, kw
    origin = typing.get_origin(tp)
    if origin is Literal:
        kw["choices"] = typing.get_args(tp)
    elif origin in (list, tuple) and typing.get_args(tp)[0] in (int, float, str):
        kw.update(nargs="+", type=typing.get_args(tp)[0])
    elif tp in (int, float, str):
        kw["type"] = tp
    else:
        return "", {}
    if kw.get("type") is str:
        del kw["type"]
    if spec.metavar:
        kw["metavar"] = spec.metavar
    kw["help"] = spec.help or f"DGSConfig.{name} (default: {default!r})"
    return flag, kw


def dgs_flags() -> list[tuple[str, dict[str, Any]]]:
    """`(option string, add_argument keywords)` for each DGSConfig field that has an option:
    the fields listed in `DGS_FLAGS` in its order (the help's order), then the others in
    the order of the fields."""
    hints = typing.get_type_hints(DGSConfig)
    listed = list(DGS_FLAGS)
    fields = sorted(
        dataclasses.fields(DGSConfig),
        key=lambda f: listed.index(f.name) if f.name in listed else len(listed),
    )
    out = []
    for f in fields:
        spec = DGS_FLAGS.get(f.name, DgsFlag())
        if spec.hidden or not f.init:
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        flag, kw = _argument(f.name, hints[f.name], default, spec)
        if flag:
            out.append((flag, kw))
    return out


def add_dgs_options(g: argparse._ArgumentGroup) -> None:
    """One option per DGSConfig field (`dgs_flags`); each defaults to `None`, i.e.
    "what the preset and the config file say"."""
    for flag, kw in dgs_flags():
        g.add_argument(flag, **kw)


def dgs_config(args: argparse.Namespace) -> DGSConfig:
    """The run's DGSConfig: the preset's, then the `"dgs"` object of the config file, then
    the DGS flags given on the command line.

    Raises:
        UsageError: an unknown field in `"dgs"`, or a value DGSConfig rejects.
    """
    data = get_preset(args.preset).dgs_config().to_dict()
    overrides = args.dgs or {}
    unknown = sorted(set(overrides) - set(data))
    if unknown:
        raise UsageError(f'config "dgs": {unknown_key("DGSConfig field", unknown[0], list(data))}')
    data.update(overrides)
    for _, kw in dgs_flags():
        value = getattr(args, kw["dest"], None)
        if value is not None:
            data[kw["dest"]] = value
    try:
        return DGSConfig.from_dict(data)
    except (ValueError, TypeError) as exc:
        raise UsageError(str(exc)) from None


# --------------------------------------------------------------------------------------------
# preset < --config < flags
# --------------------------------------------------------------------------------------------

_CONFIG_SKIP = {"help", "config", "func", "_subparsers", "debug", "dgs"}


def parse_args(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse `argv`; for `train`, layer the option values: parser defaults < the preset's
    options < the `--config` file < command-line flags. The preset is the `--preset` flag,
    else the config file's `"preset"`, else `reference`; `args.preset` holds it."""
    args = parser.parse_args(argv)
    if args.command != "train":
        return args
    train_parser = args._subparsers["train"]
    from_file = read_config(args.config, train_parser) if args.config else {}
    name = args.preset or from_file.get("preset") or DEFAULT_PRESET
    layered = {**get_preset(name).options, **from_file, "preset": name}
    train_parser.set_defaults(**layered)
    return parser.parse_args(argv)


def _is_yaml(path: Path) -> bool:
    return path.suffix.lower() in (".yaml", ".yml")


def _load_config_object(path: Path) -> dict[str, Any]:
    """The mapping in a JSON (`.json`, or any other suffix) or YAML (`.yaml`, `.yml`) file."""
    kind = "YAML" if _is_yaml(path) else "JSON"
    try:
        text = path.read_text(encoding="utf-8")
        if kind == "YAML":
            import yaml

            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                mark = getattr(exc, "problem_mark", None)
                where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
                problem = getattr(exc, "problem", None) or str(exc)
                raise UsageError(
                    f"config file {path} is not valid YAML ({where}{problem})"
                ) from None
        else:
            data = json.loads(text)
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
        raise UsageError(f"config file {path} must hold a {kind} mapping of options")
    if isinstance(data.get("options"), dict) and data.get("format") == "dgsnet.run":
        raise UsageError(
            f"config file {path} is a run's record (run.json), not a config: pass the "
            "config.yaml beside it (dgsnet train --config RUN/config.yaml)"
        )
    return data


def unknown_key(what: str, key: str, known: list[str]) -> str:
    """The message for an unknown `key` among `known`: the nearest valid name, when one is
    close, else the whole list.

    Examples:
        >>> unknown_key("option", "batchsize", ["batch_size", "epochs"])
        "unknown option 'batchsize' (did you mean 'batch_size'?)"
    """
    import difflib

    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if close:
        return f"unknown {what} {key!r} (did you mean {close[0]!r}?)"
    return f"unknown {what} {key!r} (known: {', '.join(sorted(known))})"


def read_config(config: str, train_parser: argparse.ArgumentParser) -> dict[str, Any]:
    """The `--config` file's options as `{dest: value}`, checked against the parser's
    options (`check_option_values`). The file is JSON, or YAML for a `.yaml` / `.yml` name."""
    path = Path(config)
    return check_option_values(_load_config_object(path), train_parser, f"config file {path}")


def check_option_values(
    data: Mapping[str, Any], train_parser: argparse.ArgumentParser, source: str
) -> dict[str, Any]:
    """Options read from a file (any format), as `{dest: value}`, each value checked against
    the kind of its option, as the command line would check the flag.

    Keys are option names with `_` or `-` (`"batch_size"`, `"--batch-size"`); `"dgs"` is a
    mapping of `DGSConfig` fields (their names checked here, their values by `DGSConfig`
    later). A value must be of the option's kind: `true`/`false` for an on/off option, a
    number for a numeric one, a list for an option taking several values (`"captions":
    ["c.json"]`, not `"c.json"`), a string for a path or a name, one of the choices for a
    choice; `null` leaves the option unset. An unknown key is named with the nearest valid
    one (`unknown_key`).

    Args:
        data: the file's options.
        train_parser: the `train` parser whose options they set.
        source: how errors name the file (e.g. `"config file recipe.json"`).

    Raises:
        UsageError: an unknown option or DGSConfig field, or a value of the wrong kind (the
            message names the option, what it takes and what it got).
    """
    actions = {a.dest: a for a in train_parser._actions if a.dest not in _CONFIG_SKIP}
    defaults: dict[str, Any] = {}
    for key, value in data.items():
        dest = str(key).lstrip("-").replace("-", "_")
        if dest == "dgs":
            if not isinstance(value, dict):
                raise UsageError(f'{source}: "dgs" must be a mapping of DGSConfig fields')
            fields = [f.name for f in dataclasses.fields(DGSConfig)]
            for name in value:
                if name not in fields:
                    what = unknown_key("DGSConfig field", str(name), fields)
                    raise UsageError(f'{source}: "dgs": {what}')
            defaults["dgs"] = value
            continue
        if dest not in actions:
            raise UsageError(f"{source}: {unknown_key('option', dest, [*actions, 'dgs'])}")
        defaults[dest] = _option_value(source, str(key), value, actions[dest])
    return defaults


def _kind(value: Any) -> str:
    return "null" if value is None else f"{type(value).__name__} {json.dumps(value)}"


def _option_value(source: str, key: str, value: Any, action: argparse.Action) -> Any:
    """`value` of the file's option `key` if it fits `action` (a choice as its string)."""
    if value is None:
        return None
    if isinstance(action.const, bool) and action.nargs == 0:  # an on/off flag
        if not isinstance(value, bool):
            raise UsageError(f"{source}: {key} must be true or false, got {_kind(value)}")
        return value
    many = isinstance(action, argparse._AppendAction) or action.nargs in ("+", "*")
    if many:
        if not isinstance(value, list):
            example = json.dumps([value]) if isinstance(value, str) else "[...]"
            raise UsageError(
                f"{source}: {key} takes a list of values (e.g. {example}), got {_kind(value)}"
            )
        return [_one_value(source, key, v, action) for v in value]
    return _one_value(source, key, value, action)


def _one_value(source: str, key: str, value: Any, action: argparse.Action) -> Any:
    """One value of an option: a number for `type=int`/`float`, else a string; one of
    the choices when it has them."""
    if action.choices is not None:
        if value in action.choices or str(value) in action.choices:
            return value if value in action.choices else str(value)
        raise UsageError(f"{source}: {key} must be one of {list(action.choices)}, got {value!r}")
    if action.type is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UsageError(f"{source}: {key} must be an integer, got {_kind(value)}")
    elif action.type is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UsageError(f"{source}: {key} must be a number, got {_kind(value)}")
        value = float(value)
    elif not isinstance(value, str):
        raise UsageError(f"{source}: {key} must be a string, got {_kind(value)}")
    return value
