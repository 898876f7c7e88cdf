"""The controlled CPU study: ``python -m benchmarks.study --out results/study``.

See docs/study.md for the protocol, what each number means, and the results.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from dgsnet.io import atomic_write_json, load_tensors, save_tensors
from dgsnet.metrics import compute_metrics

from . import methods, prior, report, world


@dataclass(frozen=True)
class Protocol:
    """Everything the numbers depend on (recorded in results.json)."""

    train_family: str = "upconv"
    shortcut: float = 0.7  # P(warm | fake) = P(cool | real) in the training set
    train_per_class: int = 800
    test_per_class: int = 200  # per generator family (each test set also has its own reals)
    cka_reals: int = 500
    tsne_per_family: int = 80
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)


QUICK = dict(train_per_class=48, test_per_class=24, cka_reals=40, tsne_per_family=12, seeds=(0, 1))
QUICK_PRIOR = dict(pairs=384, epochs=1, batch_size=64, warmup=2)
QUICK_BUDGET = dict(epochs=1, batch_size=16, probe_epochs=2)


def run_seed(seed: int, proto: Protocol, model, budget: methods.Budget, log, want_tsne: bool):
    t0 = time.time()
    train = world.detection_split(
        proto.train_per_class,
        proto.train_per_class,
        proto.train_family,
        proto.shortcut,
        seed=1000 + seed,
    )
    tests = {
        fam: world.detection_split(
            proto.test_per_class, proto.test_per_class, fam, 0.5, seed=2000 + 10 * seed + k
        )
        for k, fam in enumerate(world.FAMILIES)
    }
    same_dist = world.detection_split(
        proto.test_per_class,
        proto.test_per_class,
        proto.train_family,
        proto.shortcut,
        seed=3000 + seed,
    )
    reals = world.real_only(proto.cka_reals, seed=4000 + seed)
    log(f"  seed {seed}: data made ({time.time() - t0:.1f} s)")

    text_only = methods.text_only_classifier(
        model, train, {"training distribution": same_dist, **tests}, seed
    )
    log(
        "  seed {}: text-only classifier accuracy: {}".format(
            seed, ", ".join(f"{k} {v:.3f}" for k, v in text_only.items())
        )
    )
    probe_head = methods.fit_probe(model, train, budget, seed)

    tsne_x = tsne_meta = None
    if want_tsne:
        n = proto.tsne_per_family
        parts, fam_ids = [reals.images[: 2 * n]], [torch.full((2 * n,), -1)]
        for k, fam in enumerate(world.FAMILIES):
            fake = tests[fam].images[tests[fam].labels == 1][:n]
            parts.append(fake)
            fam_ids.append(torch.full((len(fake),), k))
        tsne_x, tsne_meta = torch.cat(parts), torch.cat(fam_ids)

    held = [f for f in world.FAMILIES if f != proto.train_family]
    teacher_reals = None  # the same prior for every method: its features once per seed
    results, feats = {}, {}
    for method in methods.METHODS:
        t1 = time.time()
        trained = methods.train_method(method, model, train, probe_head, budget, seed)
        row: dict = {"families": {}}
        pred_warm, pred_cool = [], []
        for fam, split in tests.items():
            s = trained.score(split.images)
            m = compute_metrics(split.labels.numpy(), s.numpy())
            row["families"][fam] = {
                k: getattr(m, k) for k in ("acc", "ap", "r_acc", "f_acc", "best_acc")
            }
            flagged = (s > 0.5).float()
            pred_warm.append(flagged[split.warm])
            pred_cool.append(flagged[~split.warm])
        row["train_family_acc"] = row["families"][proto.train_family]["acc"]
        for key in ("acc", "ap", "r_acc", "f_acc", "best_acc"):
            row[f"heldout_{key}"] = float(np.mean([row["families"][f][key] for f in held]))
        # how much the scene theme (the shortcut) moves the decision on shortcut-free data
        row["theme_effect"] = float(torch.cat(pred_warm).mean() - torch.cat(pred_cool).mean())
        if teacher_reals is None:
            teacher_reals = trained.teacher_features(reals.images)
        row["cka"] = methods.linear_cka(teacher_reals, trained.features(reals.images))
        if trained.surgery is not None:
            row["surgery"] = trained.surgery
        row["seconds"] = time.time() - t1
        results[method] = row
        log(
            f"  seed {seed} {methods.LABELS[method]:<30} "
            f"train-family acc {row['train_family_acc']:.3f} | "
            f"held-out acc {row['heldout_acc']:.3f} AP {row['heldout_ap']:.3f} | "
            f"CKA {row['cka']:.3f} | theme effect {row['theme_effect']:+.3f} "
            f"({row['seconds']:.0f} s)"
        )
        if want_tsne:
            feats[method] = trained.features(tsne_x)
    return results, text_only, (feats, tsne_meta)


def _report_only(out: Path, plots: bool) -> int:
    path = out / "results.json"
    if not path.is_file():
        print(f"error: --report-only needs {path} (run the study first)", file=sys.stderr)
        return 2
    results = json.loads(path.read_text())
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


def main(argv: list[str] | None = None) -> int:
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
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument(
        "--report-only",
        action="store_true",
        help="rewrite table.md and the figures from OUT/results.json (no training)",
    )
    args = ap.parse_args(argv)
    if args.report_only:
        return _report_only(Path(args.out), plots=not args.no_plots)
    if args.threads:
        torch.set_num_threads(args.threads)
    proto = Protocol(**QUICK) if args.quick else Protocol()
    if args.seeds:
        proto = replace(proto, seeds=tuple(args.seeds))
    spec = prior.PriorSpec(**QUICK_PRIOR) if args.quick else prior.PriorSpec()
    budget = methods.Budget(**QUICK_BUDGET) if args.quick else methods.Budget()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []

    def log(msg: str) -> None:
        print(msg, flush=True)
        lines.append(msg)

    t0 = time.time()
    log(
        f"study: {'QUICK (not for results) ' if args.quick else ''}seeds {list(proto.seeds)}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{platform.processor() or platform.machine()}"
    )
    log(
        "prior: contrastive pre-training of a small open_clip model on the world's "
        "image-caption pairs"
    )
    model, prior_report = prior.load_or_pretrain(spec, out / "prior", log)
    model.requires_grad_(False)

    seeds, text_only, tsne = {}, {}, None
    for i, seed in enumerate(proto.seeds):
        res, txt, (feats, meta) = run_seed(
            seed, proto, model, budget, log, want_tsne=(i == 0 and not args.no_plots)
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
        "prior": {"spec": asdict(spec), "report": prior_report},
        "budget": asdict(budget),
        "families": list(world.FAMILIES),
        "strength": world.STRENGTH,
        "seeds": seeds,
        "text_only": text_only,
        "seconds": elapsed,
        "quick": args.quick,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
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
