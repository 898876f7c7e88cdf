"""The shortcut-strength axis: one training family at several shortcut strengths
(``python -m benchmarks.study --strength-axis``).

The shortcut strength is ``P(warm | fake) = P(cool | real)`` in the training set (0.5: no
shortcut; the protocol's 0.7; 0.9: strong); every test set stays at 0.5. The unit of work is
one (strength, seed), run exactly as a grid cell (:func:`grid.run_tasks`, one torch thread per
cell), so the cells at 0.7 reproduce the grid's row of the same training family bit for bit.
The training data of one seed at two strengths share their random draws but not their scenes
(each scene's theme, and with it its colours, follows the strength); the test sets are the
same at every strength.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import torch

from . import grid, methods, prior, runner

#: the default strengths: no shortcut, the protocol's, a strong one
SHORTCUTS = (0.5, 0.7, 0.9)
#: the default training family: the one with the largest forgetting in the grid
FAMILY = "upconv"


def key(shortcut: float) -> str:
    """The results.json key of a strength: ``0.7 -> "0.7"``."""
    return f"{shortcut:g}"


def parse_shortcuts(text: str) -> tuple[float, ...]:
    """``"0.5,0.9"`` -> the strengths, sorted.

    Raises:
        ValueError: not a number, outside [0, 1], repeated, or none.
    """
    parts = [t.strip() for t in text.split(",") if t.strip()]
    if not parts:
        raise ValueError("--shortcuts needs at least one strength in [0, 1], e.g. 0.5,0.7,0.9")
    values = []
    for t in parts:
        try:
            v = float(t)
        except ValueError:
            raise ValueError(
                f"--shortcuts: {t!r} is not a number; expected e.g. 0.5,0.7,0.9"
            ) from None
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"--shortcuts: {v} is outside [0, 1] (P(warm | fake))")
        values.append(v)
    if len({key(v) for v in values}) != len(values):
        raise ValueError(f"--shortcuts names a strength twice: {text!r}")
    return tuple(sorted(values))


def parse_methods(text: str) -> tuple[str, ...]:
    """``"lora,sem"`` -> the methods, in the tables' order.

    Raises:
        ValueError: an unknown or repeated method, or none.
    """
    return grid.parse_subset(text, methods.ALL_METHODS, "--methods", "method", "method")


def run_axis(
    model: torch.nn.Module,
    prior_dir: Path,
    spec: prior.PriorSpec,
    proto: runner.Protocol,
    budget: methods.Budget,
    family: str,
    shortcuts: Sequence[float],
    lora_scaling: str,
    jobs: int,
    threads: int,
    log: Callable[[str], None],
    method_names: tuple[str, ...] = methods.STRENGTH_METHODS,
) -> tuple[dict, dict]:
    """Every (strength, seed) of the axis. Returns ``runs`` (per strength key: ``seeds`` ->
    method -> row, and ``text_only``) and the seconds per (strength, seed), keyed
    ``"strength/seed"``."""
    base = asdict(proto)
    tasks = [
        (key(s), family, seed, {**base, "shortcut": s, "train_family": family})
        for s in shortcuts
        for seed in proto.seeds
    ]
    done = grid.run_tasks(
        model, prior_dir, spec, tasks, budget, lora_scaling, jobs, threads, log, method_names
    )
    runs = {
        key(s): {
            "seeds": {str(seed): done[(key(s), seed)]["rows"] for seed in proto.seeds},
            "text_only": {str(seed): done[(key(s), seed)]["text_only"] for seed in proto.seeds},
        }
        for s in shortcuts
    }
    seconds = {f"{name}/{seed}": done[(name, seed)]["seconds"] for name, _, seed, _p in tasks}
    return runs, seconds


def strength_results(results: dict, shortcut: str) -> dict:
    """One strength of an axis's results in the layout of a single-family results.json (what
    :func:`report.markdown` reads)."""
    run = results["runs"][shortcut]
    return {
        "protocol": {
            **results["protocol"],
            "train_family": results["train_family"],
            "shortcut": float(shortcut),
        },
        "families": results["families"],
        "seeds": run["seeds"],
        "text_only": run["text_only"],
    }
