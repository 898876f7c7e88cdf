"""The grid's report: the method x training-family matrices, the paired differences against
plain LoRA, the pooled differences with their 95% intervals, the tables and the figures.

How the pooled interval is computed: for a method ``m`` and a measure ``k`` (held-out
accuracy, held-out AP), every (training family, seed) run gives one paired difference
``d = k(m) - k(plain LoRA)`` (same data, initialisation and batch order). Over the ``n`` runs
(25 in the full grid) the pooled figure is their mean with the t-interval
``mean ± t(0.975, n - 1) * sd / sqrt(n)`` (sample std). That interval treats the runs as
independent; runs of one training family share a world, so it is also given with the
family as the unit: the mean of the per-family mean differences with
``± t(0.975, F - 1) * sd(family means) / sqrt(F)`` over the ``F`` training families (a
cluster-level t-interval; with 5 families it has 4 degrees of freedom and is the wider, more
honest one when the families differ).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from .methods import LABELS

#: the measures of the matrices, with their titles
MATRIX = {
    "heldout_acc": "Held-out accuracy",
    "heldout_ap": "Held-out AP",
    "train_family_acc": "Training-family accuracy",
    "cka": "CKA (teacher, student) on held-out real images",
    "theme_effect": "Theme effect",
}
#: the measures of the paired and pooled differences against plain LoRA
PAIRED = ("heldout_acc", "heldout_ap")
BASELINE = "lora"
#: further pairs compared run by run: (method, its reference)
VERSUS = (("dgs_fd", "lora_fd"), ("dgs", "dgs_no_pa"))


def _t_pdf(x: float, df: int) -> float:
    c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    return math.exp(c - (df + 1) / 2 * math.log1p(x * x / df))


def _t_cdf(x: float, df: int, steps: int = 4000) -> float:
    """P(T <= x) for Student's t with ``df`` degrees of freedom (Simpson's rule on [0, |x|])."""
    a = abs(x)
    if a == 0:
        return 0.5
    h = a / steps
    total = _t_pdf(0.0, df) + _t_pdf(a, df)
    for i in range(1, steps):
        total += (4 if i % 2 else 2) * _t_pdf(i * h, df)
    half = total * h / 3
    return 0.5 + half if x > 0 else 0.5 - half


@lru_cache(maxsize=64)
def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (``0.5 < p < 1``),
    to about 1e-9 (bisection on the CDF).

    Raises:
        ValueError: ``p`` outside (0.5, 1) or ``df < 1``.
    """
    if not 0.5 < p < 1:
        raise ValueError(f"p must be in (0.5, 1), got {p}")
    if df < 1:
        raise ValueError(f"df must be >= 1, got {df}")
    lo, hi = 0.0, 1.0
    while _t_cdf(hi, df) < p:
        lo, hi = hi, 2 * hi
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if _t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def t_interval(values: Sequence[float] | np.ndarray, level: float = 0.95) -> dict:
    """Mean, sample std, count and the t-interval ``mean ± t * sd / sqrt(n)`` of ``values``
    (``lo == hi == mean`` when ``n < 2``)."""
    a = np.asarray(values, dtype=float)
    n = len(a)
    mean = float(a.mean())
    sd = float(a.std(ddof=1)) if n > 1 else 0.0
    half = t_quantile(0.5 + level / 2, n - 1) * sd / math.sqrt(n) if n > 1 else 0.0
    return {"mean": mean, "sd": sd, "n": n, "lo": mean - half, "hi": mean + half}


def _values(results: dict, family: str, method: str, key: str) -> list[float]:
    seeds = results["runs"][family]["seeds"]
    return [float(seeds[s][method][key]) for s in seeds]


def methods_of(results: dict) -> list[str]:
    return list(results["methods"])


def summary(results: dict) -> dict:
    """Every number of the grid's tables, from its results: ``matrix[key][method][family]``
    (mean, sd over the seeds), ``paired[key][method][family]`` (the per-seed differences
    against plain LoRA, their mean, sd and positive count) and ``pooled[key][method]`` (over
    all runs: mean, the runs' t-interval, the families' t-interval, positive counts)."""
    fams = list(results["train_families"])
    ms = methods_of(results)
    out: dict = {"matrix": {}, "paired": {}, "pooled": {}}
    for key in MATRIX:
        out["matrix"][key] = {
            m: {
                **{f: t_interval(_values(results, f, m, key)) for f in fams},
                "all": t_interval([v for f in fams for v in _values(results, f, m, key)]),
            }
            for m in ms
        }
    if BASELINE not in ms:
        return out
    for key in PAIRED:
        out["paired"][key], out["pooled"][key] = {}, {}
        for m in ms:
            if m != BASELINE:
                out["paired"][key][m], out["pooled"][key][m] = _paired(
                    results, fams, m, BASELINE, key
                )
    out["versus"] = {}
    for m, ref in VERSUS:
        if m in ms and ref in ms:
            out["versus"][f"{m}-{ref}"] = {
                key: dict(
                    zip(("paired", "pooled"), _paired(results, fams, m, ref, key), strict=True)
                )
                for key in PAIRED
            }
    return out


def _paired(results: dict, fams: list[str], m: str, ref: str, key: str) -> tuple[dict, dict]:
    """Per training family and pooled: the per-seed differences ``key(m) - key(ref)``."""
    per_fam = {}
    for f in fams:
        d = np.subtract(_values(results, f, m, key), _values(results, f, ref, key))
        per_fam[f] = {
            "diffs": [float(x) for x in d],
            **t_interval(d),
            "positive": int((d > 0).sum()),
        }
    runs = [x for f in fams for x in per_fam[f]["diffs"]]
    fam_means = [per_fam[f]["mean"] for f in fams]
    pooled = {
        "runs": {**t_interval(runs), "positive": int(sum(x > 0 for x in runs))},
        "families": {**t_interval(fam_means), "positive": int(sum(x > 0 for x in fam_means))},
    }
    return per_fam, pooled


def _cell(iv: dict, signed: bool = False) -> str:
    """``mean ± sd`` x100 (the mean alone for one value)."""
    mean = iv["mean"] * 100
    txt = f"{mean:+.1f}" if signed else f"{mean:.1f}"
    return f"{txt} ± {iv['sd'] * 100:.1f}" if iv["n"] > 1 else txt


def _ci(iv: dict) -> str:
    if iv["n"] < 2:
        return "n/a"
    return f"[{iv['lo'] * 100:+.1f}, {iv['hi'] * 100:+.1f}]"


def markdown(results: dict) -> str:
    """The grid's tables (Markdown)."""
    s = summary(results)
    fams = list(results["train_families"])
    ms = methods_of(results)
    seeds = list(results["protocol"]["seeds"])
    n_runs = len(fams) * len(seeds)
    lines = [
        f"Grid: training families {', '.join(fams)} (each trained on, the other "
        f"{len(results['families']) - 1} held out); seeds {', '.join(map(str, seeds))}; "
        f"LoRA scaling `{results['lora_scaling']}`; {n_runs} (family, seed) runs per method. "
        "Every cell is x100; matrix cells are mean ± sample std over the seeds, the *all runs* "
        f"column over all {n_runs} runs.",
        "",
    ]
    for key, title in MATRIX.items():
        signed = key == "theme_effect"
        note = {
            "heldout_acc": " (threshold 0.5, mean over the held-out families)",
            "heldout_ap": " (mean over the held-out families)",
            "train_family_acc": " (the training family's own shortcut-free test set)",
            "cka": " (linear CKA; 100 = the teacher's geometry)",
            "theme_effect": " (predicted-fake rate on warm minus cool scenes, all test sets)",
        }[key]
        lines += [
            f"**{title}**{note}, method x training family:",
            "",
            "| Method | " + " | ".join(fams) + " | all runs |",
            "|---|" + "---:|" * (len(fams) + 1),
        ]
        for m in ms:
            row = s["matrix"][key][m]
            cells = [_cell(row[f], signed) for f in fams] + [_cell(row["all"], signed)]
            lines.append(f"| {LABELS[m]} | " + " | ".join(cells) + " |")
        lines.append("")
    if not s["paired"]:
        return "\n".join(lines)
    for key in PAIRED:
        name = {"heldout_acc": "held-out accuracy", "heldout_ap": "held-out AP"}[key]
        lines += [
            f"**Paired against plain LoRA, {name}**: per training family the mean ± std over "
            "the seeds of the per-seed difference (same data, initialisation and batch order), "
            "and on how many seeds it is positive; last column: the mean over all runs with its "
            "95% t-interval (runs as the unit) and the positive runs:",
            "",
            "| Method | " + " | ".join(fams) + " | all runs |",
            "|---|" + "---:|" * (len(fams) + 1),
        ]
        for m in ms:
            if m == BASELINE:
                continue
            per = s["paired"][key][m]
            cells = [f"{_cell(per[f], True)} ({per[f]['positive']}/{per[f]['n']})" for f in fams]
            pr = s["pooled"][key][m]["runs"]
            cells.append(f"{pr['mean'] * 100:+.1f} {_ci(pr)} ({pr['positive']}/{pr['n']})")
            lines.append(f"| {LABELS[m]} | " + " | ".join(cells) + " |")
        lines.append("")
    by_family = (
        f"its 95% t-interval with the training family as the unit (t(0.975, {len(fams) - 1}) "
        f"x sd of the {len(fams)} family means / sqrt({len(fams)}))"
        if len(fams) > 1
        else "no interval with the training family as the unit (one family)"
    )
    lines += [
        f"**Pooled paired difference against plain LoRA** over all {n_runs} (family, seed) "
        "runs, x100: the mean; its 95% t-interval with the run as the unit "
        f"(t(0.975, {n_runs - 1}) x sd / sqrt({n_runs})); {by_family}; the positive runs and "
        "families:",
        "",
        "| Method | held-out acc | 95% CI (runs) | 95% CI (families) | runs > 0 | families > 0 "
        "| held-out AP | 95% CI (runs) | 95% CI (families) | runs > 0 | families > 0 |",
        "|---|" + "---:|" * 10,
    ]
    for m in ms:
        if m == BASELINE:
            continue
        cells = []
        for key in PAIRED:
            p = s["pooled"][key][m]
            r, f = p["runs"], p["families"]
            cells += [
                f"{r['mean'] * 100:+.1f}",
                _ci(r),
                _ci(f),
                f"{r['positive']}/{r['n']}",
                f"{f['positive']}/{f['n']}",
            ]
        lines.append(f"| {LABELS[m]} | " + " | ".join(cells) + " |")
    if s.get("versus"):
        lines += [
            "",
            "**Other pairs, run by run** (the first method minus the second; per training family "
            "mean ± std over the seeds and positive seeds; last column the pooled mean, its 95% "
            "t-intervals with runs and with families as the unit, and the positive runs):",
            "",
            "| Pair | measure | " + " | ".join(fams) + " | all runs |",
            "|---|---|" + "---:|" * (len(fams) + 1),
        ]
        for pair, by_key in s["versus"].items():
            m, ref = pair.split("-")
            for key in PAIRED:
                per, pr = by_key[key]["paired"], by_key[key]["pooled"]
                cells = [
                    f"{_cell(per[f], True)} ({per[f]['positive']}/{per[f]['n']})" for f in fams
                ]
                r, fam_ci = pr["runs"], _ci(pr["families"])
                cells.append(
                    f"{r['mean'] * 100:+.1f} {_ci(r)} / {fam_ci} ({r['positive']}/{r['n']})"
                )
                name = {"heldout_acc": "held-out acc", "heldout_ap": "held-out AP"}[key]
                lines.append(
                    f"| {LABELS[m]} - {LABELS[ref]} | {name} | " + " | ".join(cells) + " |"
                )
    return "\n".join(lines) + "\n"


def plots(results: dict, out: Path) -> list[Path]:
    """The heat map of the matrix (``grid_heatmap.png``) and the dot-and-interval plot of the
    pooled differences (``grid_pooled.png``). Returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = summary(results)
    fams = list(results["train_families"])
    ms = methods_of(results)
    written = []

    fig, axes = plt.subplots(1, 2, figsize=(13, 0.55 * len(ms) + 1.8))
    for ax, key in zip(axes, ("heldout_acc", "heldout_ap"), strict=True):
        vals = np.array([[s["matrix"][key][m][f]["mean"] * 100 for f in fams] for m in ms])
        sds = np.array([[s["matrix"][key][m][f]["sd"] * 100 for f in fams] for m in ms])
        im = ax.imshow(vals, cmap="viridis", aspect="auto")
        mid = (np.nanmin(vals) + np.nanmax(vals)) / 2
        for i in range(len(ms)):
            for j in range(len(fams)):
                ax.text(
                    j,
                    i,
                    f"{vals[i, j]:.1f}\n±{sds[i, j]:.1f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if vals[i, j] < mid else "black",
                )
        ax.set_xticks(np.arange(len(fams)), fams)
        ax.set_xlabel("training family (the other families held out)")
        ax.set_yticks(np.arange(len(ms)), [LABELS[m] for m in ms] if ax is axes[0] else [])
        ax.set_title(f"{MATRIX[key]} (%), mean ± std over seeds")
        fig.colorbar(im, ax=ax, fraction=0.04)
    fig.tight_layout()
    path = out / "grid_heatmap.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    written.append(path)

    if not s["pooled"]:
        return written
    shown = [m for m in ms if m != BASELINE]
    colours = plt.get_cmap("tab10")
    fig, axes = plt.subplots(1, 2, figsize=(13, 0.5 * len(shown) + 1.8), sharey=True)
    y = np.arange(len(shown))
    for ax, key in zip(axes, PAIRED, strict=True):
        for j, f in enumerate(fams):
            fm = [s["paired"][key][m][f]["mean"] * 100 for m in shown]
            ax.scatter(
                fm,
                y + 0.22,
                s=14,
                color=colours(j),
                marker="o",
                alpha=0.8,
                label=f"mean for {f}" if ax is axes[0] else None,
                zorder=2,
            )
        for i, m in enumerate(shown):
            r = s["pooled"][key][m]["runs"]
            c = s["pooled"][key][m]["families"]
            ax.plot(
                [c["lo"] * 100, c["hi"] * 100],
                [i - 0.18] * 2,
                color="grey",
                lw=1.2,
                label="95% CI, families as unit" if (i == 0 and ax is axes[0]) else None,
            )
            ax.plot(
                [r["lo"] * 100, r["hi"] * 100],
                [i, i],
                color="black",
                lw=3,
                label="95% CI, runs as unit" if (i == 0 and ax is axes[0]) else None,
            )
            ax.scatter(
                [r["mean"] * 100],
                [i],
                color="crimson",
                s=40,
                zorder=3,
                label="pooled mean" if (i == 0 and ax is axes[0]) else None,
            )
        ax.axvline(0, color="grey", lw=0.8, ls=":")
        ax.set_yticks(y, [LABELS[m] for m in shown])
        ax.set_xlabel(f"{MATRIX[key]}: method minus plain LoRA (points, x100)")
    axes[0].invert_yaxis()  # shared: the first method on top
    n = len(fams) * len(results["protocol"]["seeds"])
    fig.suptitle(f"Paired difference against plain LoRA, pooled over {n} (family, seed) runs")
    axes[0].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path = out / "grid_pooled.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    written.append(path)
    return written
