"""The grid: every generator family in turn as the training family, the other four held out,
every method, every seed (``python -m benchmarks.study --grid``).

The unit of parallel work is one (training family, seed): its data, text-only classifier and
linear probe are shared by the methods, which then run one after the other in that worker.
Every cell (family, method, seed) is seeded from its seed alone and the workers run with one
torch thread each, so the numbers do not depend on ``jobs`` (tests/test_study.py checks
``jobs=1`` against ``jobs=2`` bit for bit).
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from . import methods, prior, runner, world

# -- the worker's state (one per process; set by _init) ---------------------------------------
_STATE: dict[str, Any] = {}


def _init(
    prior_dir: str,
    spec: dict,
    threads: int,
    model: torch.nn.Module | None = None,
) -> None:
    """Set the worker up: ``threads`` torch threads and the prior, loaded from ``prior_dir``
    (where the parent saved it) unless ``model`` is given (in-process runs)."""
    torch.set_num_threads(threads)
    if model is None:
        model, _ = prior.load_or_pretrain(prior.PriorSpec(**spec), Path(prior_dir), lambda _: None)
    model.requires_grad_(False)
    _STATE["model"] = model


def _task(
    family: str,
    seed: int,
    proto: dict,
    budget: dict,
    lora_scaling: str,
    method_names: tuple[str, ...],
) -> dict:
    """One (training family, seed) of the protocol ``proto`` (its ``shortcut`` included):
    every method in ``method_names``. Returns the rows, the text-only classifier's accuracies,
    the log lines and the seconds it took."""
    t0 = time.time()
    lines: list[str] = []
    model = _STATE["model"]
    p = runner.Protocol(**{**proto, "seeds": tuple(proto["seeds"]), "train_family": family})
    b = methods.Budget(**budget)
    ctx = runner.prepare(seed, p, model, b, lines.append, lora_scaling)
    rows = {}
    lora = None  # the plain-LoRA detector, which WiSE-FT ("wise") reuses
    for m in method_names:
        rows[m], trained = runner.evaluate(m, ctx, model, b, lines.append, lora_scaling, lora)
        if m == "lora":
            lora = trained
    return {
        "family": family,
        "seed": seed,
        "shortcut": p.shortcut,
        "rows": rows,
        "text_only": ctx.text_only,
        "log": lines,
        "seconds": time.time() - t0,
    }


def parse_subset(
    text: str, choices: Sequence[str], option: str, kind: str, unknown_kind: str
) -> tuple[str, ...]:
    """A comma-separated subset of `choices` given to `option`, in the order of `choices`.

    `kind` names one item in the messages (``"family"``), `unknown_kind` an unknown one
    (``"generator family"``).

    Raises:
        ValueError: an unknown or repeated item, or none.
    """
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise ValueError(f"{option} needs at least one of {', '.join(choices)}")
    unknown = [n for n in names if n not in choices]
    if unknown:
        raise ValueError(
            f"unknown {unknown_kind} {unknown[0]!r} in {option}; expected a comma-separated "
            f"subset of {', '.join(choices)}"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"{option} names a {kind} twice: {text!r}")
    return tuple(c for c in choices if c in names)


def parse_families(text: str) -> tuple[str, ...]:
    """``"upconv,spectral"`` -> the training families, in the study's order.

    Raises:
        ValueError: an unknown or repeated family, or none.
    """
    return parse_subset(text, world.FAMILIES, "--families", "family", "generator family")


def run_grid(
    model: torch.nn.Module,
    prior_dir: Path,
    spec: prior.PriorSpec,
    proto: runner.Protocol,
    budget: methods.Budget,
    families: Sequence[str],
    lora_scaling: str,
    jobs: int,
    threads: int,
    log: Callable[[str], None],
    method_names: tuple[str, ...] = methods.METHODS,
) -> tuple[dict, dict]:
    """Run every (family, seed) of the grid. Returns ``runs`` (per training family: ``seeds``
    -> method -> row, and ``text_only``, as a single-family results.json holds them) and the
    seconds per (family, seed), keyed ``"family/seed"``.

    ``jobs == 1`` runs in this process (with ``threads`` torch threads, restored afterwards);
    more run in that many spawned worker processes, each loading the prior from ``prior_dir``.
    """
    tasks = [(f, f, s, asdict(proto)) for f in families for s in proto.seeds]
    done = run_tasks(
        model, prior_dir, spec, tasks, budget, lora_scaling, jobs, threads, log, method_names
    )
    runs: dict[str, dict] = {}
    for fam in families:
        runs[fam] = {
            "seeds": {str(s): done[(fam, s)]["rows"] for s in proto.seeds},
            "text_only": {str(s): done[(fam, s)]["text_only"] for s in proto.seeds},
        }
    seconds = {f"{fam}/{s}": done[(fam, s)]["seconds"] for fam, _, s, _p in tasks}
    return runs, seconds


Task = tuple[str, str, int, dict]


def run_tasks(
    model: torch.nn.Module,
    prior_dir: Path,
    spec: prior.PriorSpec,
    tasks: Sequence[Task],
    budget: methods.Budget,
    lora_scaling: str,
    jobs: int,
    threads: int,
    log: Callable[[str], None],
    method_names: tuple[str, ...],
) -> dict[tuple[str, int], dict]:
    """Run ``tasks``, each ``(name, training family, seed, protocol as a dict)``, every method
    of ``method_names`` in each. Returns the results of :func:`_task` keyed ``(name, seed)``;
    the log names each task by ``name`` (the grid: the family; the strength axis: the
    shortcut).

    Raises:
        ValueError: ``jobs`` or ``threads`` below 1.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    common = (asdict(budget), lora_scaling, tuple(method_names))
    names = {(fam, seed, p["shortcut"]): name for name, fam, seed, p in tasks}
    done: dict[tuple[str, int], dict] = {}
    t0 = time.time()

    def finished(res: dict) -> None:
        name = names[(res["family"], res["seed"], res["shortcut"])]
        done[(name, res["seed"])] = res
        for line in res["log"]:
            log(f"[{name}]{line}")
        rate = (time.time() - t0) / len(done)
        log(
            f"grid: {name} seed {res['seed']} done in {res['seconds'] / 60:.1f} min; "
            f"{len(done)}/{len(tasks)} done, {(time.time() - t0) / 60:.1f} min elapsed, "
            f"about {rate * (len(tasks) - len(done)) / 60:.0f} min left"
        )

    if jobs == 1:
        before = torch.get_num_threads()
        try:
            _init(str(prior_dir), asdict(spec), threads, model)
            for _, fam, seed, p in tasks:
                finished(_task(fam, seed, p, *common))
        finally:
            torch.set_num_threads(before)
            _STATE.clear()
    else:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(
            max_workers=jobs,
            mp_context=ctx,
            initializer=_init,
            initargs=(str(prior_dir), asdict(spec), threads),
        ) as ex:
            futures = [ex.submit(_task, fam, seed, p, *common) for _, fam, seed, p in tasks]
            for fut in as_completed(futures):
                finished(fut.result())
    return done


def family_results(results: dict, family: str) -> dict:
    """One training family of a grid's results in the layout of a single-family
    results.json (what :func:`report.markdown` reads)."""
    run = results["runs"][family]
    return {
        "protocol": {**results["protocol"], "train_family": family},
        "families": results["families"],
        "seeds": run["seeds"],
        "text_only": run["text_only"],
    }
