"""The controlled CPU study: ``python -m benchmarks.study --out results/study``.

One training family (``upconv``) by default; ``--grid`` runs every generator family in turn as
the training family (``--families`` for a subset, ``--jobs`` worker processes). See
docs/study.md for the protocol, what each number means, and the results.
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

from . import grid, gridreport, methods, prior, report, world
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
        help="torch threads (default: torch's; with --grid: per worker, default 1)",
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
        help="with --grid: the training families, comma-separated (default: all five)",
    )
    ap.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="with --grid: worker processes, one (family, seed) each at a time (default 1); "
        "the numbers do not depend on it",
    )
    ap.add_argument(
        "--prior",
        default=None,
        help="folder of the cached prior (default: OUT/prior); reused when it was made with "
        "the same settings and code",
    )
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = _parser()
    args = ap.parse_args(argv)
    if args.report_only:
        return _report_only(Path(args.out), plots=not args.no_plots)
    if not args.grid and (args.families is not None or args.jobs != 1):
        ap.error("--families and --jobs need --grid")
    if args.jobs < 1:
        ap.error(f"--jobs must be >= 1, got {args.jobs}")
    if args.threads is not None and args.threads < 1:
        ap.error(f"--threads must be >= 1, got {args.threads}")
    families = world.FAMILIES
    if args.families is not None:
        try:
            families = grid.parse_families(args.families)
        except ValueError as exc:
            ap.error(str(exc))
    if args.threads and not args.grid:
        torch.set_num_threads(args.threads)
    proto = Protocol(**QUICK) if args.quick else Protocol()
    if args.seeds:
        proto = replace(proto, seeds=tuple(args.seeds))
    spec = prior.PriorSpec(**QUICK_PRIOR) if args.quick else prior.PriorSpec()
    budget = methods.Budget(**QUICK_BUDGET) if args.quick else methods.Budget()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    prior_dir = Path(args.prior) if args.prior else out / "prior"
    lines: list[str] = []

    def log(msg: str) -> None:
        print(msg, flush=True)
        lines.append(msg)

    t0 = time.time()
    threads = (args.threads or 1) if args.grid else torch.get_num_threads()
    mode = (
        f"grid over {', '.join(families)}, {args.jobs} job(s) x {threads} thread(s)"
        if args.grid
        else f"training family {proto.train_family}, {threads} threads"
    )
    log(
        f"study: {'QUICK (not for results) ' if args.quick else ''}{mode}; "
        f"seeds {list(proto.seeds)}; LoRA scaling {args.lora_scaling}; "
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}"
    )
    log(
        "prior: contrastive pre-training of a small open_clip model on the world's "
        "image-caption pairs"
    )
    model, prior_report = prior.load_or_pretrain(spec, prior_dir, log)
    model.requires_grad_(False)
    common = {
        "prior": {"spec": asdict(spec), "report": prior_report},
        "budget": asdict(budget),
        "families": list(world.FAMILIES),
        "strength": world.STRENGTH,
        "lora_scaling": args.lora_scaling,
        "methods": list(methods.METHODS),
    }
    env = {"quick": args.quick, "python": sys.version.split()[0], "torch": torch.__version__}

    if args.grid:
        runs, task_seconds = grid.run_grid(
            model,
            prior_dir,
            spec,
            proto,
            budget,
            families,
            args.lora_scaling,
            args.jobs,
            threads,
            log,
        )
        elapsed = time.time() - t0
        record = asdict(proto)
        del record["train_family"]
        results = {
            "grid": True,
            "train_families": list(families),
            "protocol": record,
            **common,
            "runs": runs,
            "seconds": elapsed,
            "task_seconds": task_seconds,
            "jobs": args.jobs,
            "threads_per_job": threads,
            **env,
        }
        atomic_write_json(out / "results.json", results)
        table = _write_grid_report(results, out, plots=not args.no_plots)
        log("")
        log(table)
        log(
            f"grid done in {elapsed / 60:.1f} min; results in {out}/results.json, "
            f"{out}/tables.md, {out}/families.md"
        )
        (out / "log.txt").write_text("\n".join(lines) + "\n")
        return 0

    seeds, text_only, tsne = {}, {}, None
    for i, seed in enumerate(proto.seeds):
        res, txt, (feats, meta) = run_seed(
            seed,
            proto,
            model,
            budget,
            log,
            want_tsne=(i == 0 and not args.no_plots),
            lora_scaling=args.lora_scaling,
        )
        seeds[str(seed)], text_only[str(seed)] = res, txt
        if feats:
            tsne = (feats, meta)
            save_tensors(
                out / f"tsne_features_seed{seed}.safetensors",
                {**{f"features.{k}": v for k, v in feats.items()}, "family": meta},
            )
    elapsed = time.time() - t0
    results = {
        "protocol": asdict(proto),
        **common,
        "seeds": seeds,
        "text_only": text_only,
        "seconds": elapsed,
        **env,
    }
    atomic_write_json(out / "results.json", results)
    table = report.markdown(results)
    (out / "table.md").write_text(table)
    log("")
    log(table)
    if not args.no_plots:
        report.plots(results, out, tsne)
        report.world_figure(out / "world.png")
        names = ("per_family_accuracy", "cka", "tsne", "world")
        log("figures: " + ", ".join(f"{out}/{n}.png" for n in names))
    log(f"study done in {elapsed / 60:.1f} min; results in {out}/results.json and {out}/table.md")
    (out / "log.txt").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
