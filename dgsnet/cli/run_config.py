"""`OUT/config.yaml`: a `dgsnet train` run's resolved options, as a config file that reruns it.

Every option of the run after layering (preset < `--config` < flags) is written under its
option name, with the whole resolved `DGSConfig` under `"dgs"` and paths made absolute, so
that `dgsnet train --config RUN/config.yaml --out NEW` trains the same run again (same data,
model, settings and seed: the same final weights, bit for bit) from any directory. `resume`
is left out (the default: resume when `--out` holds a checkpoint), so that rerunning the
file never deletes a run. `OUT/run.json` stays the run's record (with the preset overrides
and the data fingerprint); it is not a config file.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from ..io import atomic_write_text, json_safe

__all__ = ["RUN_CONFIG_NAME", "resolved_config", "write_run_config"]

RUN_CONFIG_NAME = "config.yaml"
"""The resolved config's file name inside the run folder."""

#: parser destinations that are not options of the run
_NOT_OPTIONS = {"func", "_subparsers", "command", "config", "debug", "quiet", "resume", "dgs"}
#: options that name files or folders
_PATHS = {"roots", "captions", "init_from", "val", "out", "cache_dir"}


def _absolute(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return [os.path.abspath(v) for v in value]
    return os.path.abspath(value)


def resolved_config(args: argparse.Namespace, config: Any) -> dict[str, Any]:
    """The run's options as a config mapping (see the module docstring).

    Args:
        args: the parsed `dgsnet train` options (after layering).
        config: the run's resolved `DGSConfig`.

    Returns:
        `{option: value, ..., "dgs": {field: value}}`, JSON- and YAML-safe.
    """
    from .options import dgs_flags

    dgs_dests = {kw["dest"] for _, kw in dgs_flags()}  # the whole config goes under "dgs"
    out: dict[str, Any] = {}
    for key, value in vars(args).items():
        if key in _NOT_OPTIONS or key in dgs_dests or key.startswith("_"):
            continue
        out[key] = _absolute(value) if key in _PATHS else value
    out["dgs"] = config.to_dict()
    return json_safe(out, default=str)  # type: ignore[no-any-return]


def write_run_config(out_dir: str | os.PathLike[str], data: dict[str, Any]) -> Path:
    """Write `data` as `out_dir/config.yaml` (atomically); returns the path."""
    import yaml

    path = Path(out_dir) / RUN_CONFIG_NAME
    header = (
        "# the resolved options of this dgsnet train run; rerun it with\n"
        "#   dgsnet train --config config.yaml --out NEW_FOLDER\n"
    )
    atomic_write_text(path, header + yaml.safe_dump(data, sort_keys=False))
    return path
