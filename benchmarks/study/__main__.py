"""The controlled CPU study: ``python -m benchmarks.study --out results/study``.

One training family (``upconv``) by default; ``--grid`` runs every generator family in turn as
the training family (``--families`` for a subset, ``--jobs`` worker processes);
``--strength-axis`` runs one training family at several shortcut strengths (``--shortcuts``).
See docs/study.md for the protocol, what each number means, and the results.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from dgsnet.io import atomic_write_json, load_tensors, save_tensors

from . import grid, gridreport, methods, prior, report, strength, strengthreport, world
from .runner import QUICK, QUICK_BUDGET, QUICK_PRIOR, Protocol, run_seed

__all__ = ["Protocol", "main", "run_seed"]


def _report_only(out: Path, plots: bool) -> int:
    path = out / "results.json"
    if not path.is_file():
        print(f"error: --report-only needs {path} (run the study first)", file=sys.stderr)
        return 2
    results = json.loads(path.read_text())
    if results.get("grid"):
        table = _write_grid_report(results, out, plots)
        print(table)
        return 0
    if results.get("strength_axis"):
        table = _write_strength_report(results, out, plots)
        print(table)
        return 0
    table = report.markdown(results)
    (out / "table.md").write_text(table)
    print(table)
    if plots:
        tsne = None
        found = sorted(out.glob("tsne_features_seed*.safetensors"))
        if found:
            t = load_tensors(found[0])
            feats = {k.split(".", 1)[1]: v for k, v in t.items() if k.startswith("features.")}
            tsne = (feats, t["family"])
        report.plots(results, out, tsne)
        report.world_figure(out / "world.png")
    return 0


def _write_grid_report(results: dict, out: Path, plots: bool) -> str:
    """tables.md, families.md (every training family's single-family tables), summary.json
    and (``plots``) the two grid figures, from a grid's results. Returns tables.md."""
    table = gridreport.markdown(results)
    (out / "tables.md").write_text(table)
    per_family = [
        f"## Training family `{f}`\n\n" + report.markdown(grid.family_results(results, f))
        for f in results["train_families"]
    ]
    (out / "families.md").write_text(
        "# Every training family of the grid, in the single-family tables' layout\n\n"
        + "\n".join(per_family)
    )
    atomic_write_json(out / "summary.json", gridreport.summary(results))
    if plots:
        gridreport.plots(results, out)
    return table


def _write_strength_report(results: dict, out: Path, plots: bool) -> str:
    """tables.md, strengths.md (every strength's single-family tables), summary.json and
    (``plots``) strength_axis.png, from a strength axis's results. Returns tables.md."""
    table = strengthreport.markdown(results)
    (out / "tables.md").write_text(table)
    per_strength = [
        f"## Shortcut strength {s}\n\n" + report.markdown(strength.strength_results(results, s))
        for s in results["shortcuts"]
    ]
    (out / "strengths.md").write_text(
        f"# Every shortcut strength of the axis (training family `{results['train_family']}`), "
        "in the single-family tables' layout\n\n" + "\n".join(per_strength)
    )
    atomic_write_json(out / "summary.json", strengthreport.summary(results))
    if plots:
        strengthreport.plots(results, out)
    return table


def _add_axis_options(ap: argparse.ArgumentParser) -> None:
    """The options of the shortcut-strength axis, and --methods."""
    ap.add_argument(
        "--strength-axis",
        action="store_true",
        help="one training family (--families, default upconv) at several shortcut strengths "
        "(--shortcuts), the methods of --methods",
    )
    ap.add_argument(
        "--shortcuts",
        default=None,
        help="with --strength-axis: the training set's shortcut strengths P(warm | fake), "
        "comma-separated (default: 0.5,0.7,0.9)",
    )
    ap.add_argument(
        "--methods",
        default=None,
        help="with --grid or --strength-axis: the methods, comma-separated (default: the grid's "
        "nine; the strength axis: " + ",".join(methods.STRENGTH_METHODS) + ")",
    )


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.study", description=__doc__.splitlines()[0]
    )
    ap.add_argument(
        "--out", default="results/study", help="results folder (default: results/study)"
    )
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="(default: 0 1 2 3 4)")
    ap.add_argument(
        "--quick",
        action="store_true",
        help="a tiny version of every step (seconds; for tests, not for results)",
    )
    ap.add_argument("--no-plots", action="store_true", help="skip the figures (and t-SNE)")
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default: torch's; with --grid or --strength-axis: per worker, "
        "default 1)",
    )
    ap.add_argument(
        "--report-only",
        action="store_true",
        help="rewrite the tables and figures from OUT/results.json (no training)",
    )
    ap.add_argument(
        "--lora-scaling",
        choices=methods.LORA_SCALINGS,
        default="rslora",
        help="LoRA scaling of every LoRA method: alpha/sqrt(r) as in the released DGS-Net code "
        "(rslora, default) or alpha/r (standard, the first table of docs/study.md)",
    )
    ap.add_argument(
        "--grid",
        action="store_true",
        help="every generator family in turn as the training family, the others held out",
    )
    ap.add_argument(
        "--families",
        default=None,
        help="with --grid: the training families, comma-separated (default: all five); with "
        "--strength-axis: the one training family (default upconv)",
    )
    ap.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="with --grid or --strength-axis: worker processes, one (family or strength, seed) "
        "each at a time (default 1); the numbers do not depend on it",
    )
    _add_axis_options(ap)
    ap.add_argument(
        "--prior",
        default=None,
        help="folder of the cached prior (default: OUT/prior); reused when it was made with "
        "the same settings and code",
    )
    return ap


def _check(ap: argparse.ArgumentParser, args: argparse.Namespace) -> dict:
    """The options' checks; returns the training families, shortcuts and methods to run."""
    many = args.grid or args.strength_axis
    if args.grid and args.strength_axis:
        ap.error("--grid and --strength-axis are two different runs; choose one")
    if not many and (args.families is not None or args.jobs != 1 or args.methods is not None):
        ap.error("--families, --jobs and --methods need --grid or --strength-axis")
    if args.shortcuts is not None and not args.strength_axis:
        ap.error("--shortcuts needs --strength-axis")
    if args.jobs < 1:
        ap.error(f"--jobs must be >= 1, got {args.jobs}")
    if args.threads is not None and args.threads < 1:
        ap.error(f"--threads must be >= 1, got {args.threads}")
    chosen: dict = {
        "families": world.FAMILIES if not args.strength_axis else (strength.FAMILY,),
        "shortcuts": strength.SHORTCUTS,
        "methods": methods.STRENGTH_METHODS if args.strength_axis else methods.METHODS,
    }
    try:
        if args.families is not None:
            chosen["families"] = grid.parse_families(args.families)
        if args.shortcuts is not None:
            chosen["shortcuts"] = strength.parse_shortcuts(args.shortcuts)
        if args.methods is not None:
            chosen["methods"] = strength.parse_methods(args.methods)
    except ValueError as exc:
        ap.error(str(exc))
    if args.strength_axis and len(chosen["families"]) != 1:
        ap.error(f"--strength-axis runs one training family, got {args.families!r}")
    return chosen


def main(argv: list[str] | None = None) -> int:
    ap = _parser()
    args = ap.parse_args(argv)
    if args.report_only:
        return _report_only(Path(args.out), plots=not args.no_plots)
    chosen = _check(ap, args)
    many = args.grid or args.strength_axis
    if args.threads and not many:
        torch.set_num_threads(args.threads)
    proto = Protocol(**QUICK) if args.quick else Protocol()
    if args.seeds:
        proto = replace(proto, seeds=tuple(args.seeds))
    run = _Run(args, proto, chosen)
    threads = (args.threads or 1) if many else torch.get_num_threads()
    if args.grid:
        mode = (
            f"grid over {', '.join(chosen['families'])}, {args.jobs} job(s) x {threads} thread(s)"
        )
    elif args.strength_axis:
        mode = (
            f"shortcut-strength axis on {chosen['families'][0]} at "
            f"{', '.join(map(strength.key, chosen['shortcuts']))}, {args.jobs} job(s) x "
            f"{threads} thread(s)"
        )
    else:
        mode = f"training family {proto.train_family}, {threads} threads"
    run.start(mode)
    if args.grid:
        return run.grid(threads)
    if args.strength_axis:
        return run.strength_axis(threads)
    return run.single()


class _Run:
    """One study run: its settings, its log and the prior (loaded or pre-trained by
    ``start``)."""

    def __init__(self, args: argparse.Namespace, proto: Protocol, chosen: dict) -> None:
        self.args, self.proto, self.chosen = args, proto, chosen
        self.spec = prior.PriorSpec(**QUICK_PRIOR) if args.quick else prior.PriorSpec()
        self.budget = methods.Budget(**QUICK_BUDGET) if args.quick else methods.Budget()
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.prior_dir = Path(args.prior) if args.prior else self.out / "prior"
        self.lines: list[str] = []
        self.t0 = time.time()

    def log(self, msg: str) -> None:
        print(msg, flush=True)
        self.lines.append(msg)

    def start(self, mode: str) -> None:
        args = self.args
        self.log(
            f"study: {'QUICK (not for results) ' if args.quick else ''}{mode}; "
            f"seeds {list(self.proto.seeds)}; LoRA scaling {args.lora_scaling}; "
            f"torch {torch.__version__}, {platform.processor() or platform.machine()}"
        )
        self.log(
            "prior: contrastive pre-training of a small open_clip model on the world's "
            "image-caption pairs"
        )
        self.model, prior_report = prior.load_or_pretrain(self.spec, self.prior_dir, self.log)
        self.model.requires_grad_(False)
        self.common = {
            "prior": {"spec": asdict(self.spec), "report": prior_report},
            "budget": asdict(self.budget),
            "families": list(world.FAMILIES),
            "strength": world.STRENGTH,
            "lora_scaling": args.lora_scaling,
            "methods": list(self.chosen["methods"]),
        }
        self.env = {
            "quick": args.quick,
            "python": sys.version.split()[0],
            "torch": torch.__version__,
        }

    def finish(self, done: str, table: str | None = None) -> int:
        """Log ``table`` (when given) and ``done``, write log.txt."""
        if table is not None:
            self.log("")
            self.log(table)
        self.log(done)
        (self.out / "log.txt").write_text("\n".join(self.lines) + "\n")
        return 0

    def _parallel_results(
        self,
        head: dict,
        varied: tuple[str, ...],
        extra: dict,
        runs: dict,
        task_seconds: dict,
        threads: int,
    ) -> dict:
        """The results record of a grid or an axis: ``head`` first, the protocol without the
        ``varied`` fields, the common record and ``extra``, then the runs and the timings."""
        elapsed = time.time() - self.t0
        record = asdict(self.proto)
        for name in varied:
            del record[name]
        return {
            **head,
            "protocol": record,
            **self.common,
            **extra,
            "runs": runs,
            "seconds": elapsed,
            "task_seconds": task_seconds,
            "jobs": self.args.jobs,
            "threads_per_job": threads,
            **self.env,
        }

    def grid(self, threads: int) -> int:
        args, out, families = self.args, self.out, self.chosen["families"]
        runs, task_seconds = grid.run_grid(
            self.model, self.prior_dir, self.spec, self.proto, self.budget, families,
            args.lora_scaling, args.jobs, threads, self.log, self.chosen["methods"],
        )  # fmt: skip
        head = {"grid": True, "train_families": list(families)}
        results = self._parallel_results(head, ("train_family",), {}, runs, task_seconds, threads)
        elapsed = results["seconds"]
        atomic_write_json(out / "results.json", results)
        table = _write_grid_report(results, out, plots=not args.no_plots)
        return self.finish(
            f"grid done in {elapsed / 60:.1f} min; results in {out}/results.json, "
            f"{out}/tables.md, {out}/families.md",
            table,
        )

    def strength_axis(self, threads: int) -> int:
        args, out = self.args, self.out
        family, shortcuts = self.chosen["families"][0], self.chosen["shortcuts"]
        runs, task_seconds = strength.run_axis(
            self.model, self.prior_dir, self.spec, self.proto, self.budget, family, shortcuts,
            args.lora_scaling, args.jobs, threads, self.log, self.chosen["methods"],
        )  # fmt: skip
        head = {
            "strength_axis": True,
            "train_family": family,
            "shortcuts": [strength.key(s) for s in shortcuts],
        }
        results = self._parallel_results(
            head,
            ("train_family", "shortcut"),
            {"feature_dim": int(self.spec.embed_dim)},
            runs,
            task_seconds,
            threads,
        )
        elapsed = results["seconds"]
        atomic_write_json(out / "results.json", results)
        table = _write_strength_report(results, out, plots=not args.no_plots)
        return self.finish(
            f"strength axis done in {elapsed / 60:.1f} min; results in {out}/results.json, "
            f"{out}/tables.md, {out}/strengths.md",
            table,
        )

    def single(self) -> int:
        args, out, proto = self.args, self.out, self.proto
        seeds, text_only, tsne = {}, {}, None
        for i, seed in enumerate(proto.seeds):
            res, txt, (feats, meta) = run_seed(
                seed, proto, self.model, self.budget, self.log,
                want_tsne=(i == 0 and not args.no_plots), lora_scaling=args.lora_scaling,
            )  # fmt: skip
            seeds[str(seed)], text_only[str(seed)] = res, txt
            if feats:
                tsne = (feats, meta)
                save_tensors(
                    out / f"tsne_features_seed{seed}.safetensors",
                    {**{f"features.{k}": v for k, v in feats.items()}, "family": meta},
                )
        elapsed = time.time() - self.t0
        results = {
            "protocol": asdict(proto),
            **self.common,
            "seeds": seeds,
            "text_only": text_only,
            "seconds": elapsed,
            **self.env,
        }
        atomic_write_json(out / "results.json", results)
        table = report.markdown(results)
        (out / "table.md").write_text(table)
        self.log("")
        self.log(table)
        if not args.no_plots:
            report.plots(results, out, tsne)
            report.world_figure(out / "world.png")
            names = ("per_family_accuracy", "cka", "tsne", "world")
            self.log("figures: " + ", ".join(f"{out}/{n}.png" for n in names))
        return self.finish(
            f"study done in {elapsed / 60:.1f} min; results in {out}/results.json and "
            f"{out}/table.md"
        )


if __name__ == "__main__":
    raise SystemExit(main())
