"""The shortcut-strength axis's report: per strength the levels of each measure, the paired
differences against plain LoRA with their 95% t-intervals over the seeds, the change of that
difference from the weakest to the strongest shortcut, what each projection removed (the
fixed-direction measurement), the text-only classifier, the tables and the figure.

Intervals: at each strength every method and plain LoRA share a seed's data, initialisation
and batch order, so the per-seed difference ``d = k(method) - k(plain LoRA)`` is paired; its
interval is ``mean ± t(0.975, n - 1) * sd / sqrt(n)`` over the ``n`` seeds. The *trend*
column pairs each seed's ``d`` at the strongest shortcut with its ``d`` at the weakest (the
same test sets; training sets from the same random draws, with other themes).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .gridreport import t_interval
from .methods import LABELS
from .semantic import random_abs_cos

#: the measures of the axis, with their titles
MEASURES = {
    "heldout_acc": "Held-out accuracy",
    "heldout_ap": "Held-out AP",
    "cka": "CKA (teacher, student) on held-out real images",
    "theme_effect": "Theme effect (predicted-fake rate, warm minus cool scenes)",
    "train_family_acc": "Training-family accuracy",
}
#: the measures compared with plain LoRA, with their names in the tables' titles
PAIRED = ("heldout_acc", "heldout_ap", "cka", "theme_effect")
SHORT = {
    "heldout_acc": "held-out accuracy",
    "heldout_ap": "held-out AP",
    "cka": "CKA",
    "theme_effect": "theme effect",
}
BASELINE = "lora"
#: the fixed-direction measurement (``row["surgery"]["dir_" + k]``), with column titles
DIRECTIONS = {
    "cos_same_label_same_step": "cos, same label, same step",
    "min_cos_same_label_same_step": "lowest of those",
    "cos_same_label_other_step": "cos, same label, other steps",
    "cos_other_label": "cos, other label",
    "grad_along_direction": "gradient along the direction",
    "grad_along_text": "gradient along own caption t",
    "grad_along_text_positive": "gradient along max(t, 0)",
    "cos_text_other_images": "cos(t, t') of two images",
}


def strengths_of(results: dict) -> list[str]:
    return list(results["shortcuts"])


def _values(results: dict, s: str, method: str, k: str) -> list[float]:
    seeds = results["runs"][s]["seeds"]
    return [float(seeds[x][method][k]) for x in seeds]


def _diffs(results: dict, s: str, method: str, k: str) -> np.ndarray:
    return np.subtract(_values(results, s, method, k), _values(results, s, BASELINE, k))


def summary(results: dict) -> dict:
    """Every number of the tables: ``levels[k][method][s]``, ``paired[k][method][s]`` (per-seed
    differences against plain LoRA with their t-interval and positive count),
    ``trend[k][method]`` (strongest minus weakest strength, per seed), ``directions[method]
    [s][k]`` and ``text_only[s]``."""
    ss, ms = strengths_of(results), list(results["methods"])
    out: dict = {"levels": {}, "paired": {}, "trend": {}, "directions": {}, "text_only": {}}
    for k in MEASURES:
        out["levels"][k] = {m: {s: t_interval(_values(results, s, m, k)) for s in ss} for m in ms}
    others = [m for m in ms if m != BASELINE] if BASELINE in ms else []
    for k in PAIRED:
        out["paired"][k], out["trend"][k] = {}, {}
        for m in others:
            per = {}
            for s in ss:
                d = _diffs(results, s, m, k)
                per[s] = {
                    "diffs": [float(x) for x in d],
                    **t_interval(d),
                    "positive": int((d > 0).sum()),
                }
            out["paired"][k][m] = per
            if len(ss) > 1:
                t = np.subtract(per[ss[-1]]["diffs"], per[ss[0]]["diffs"])
                out["trend"][k][m] = {**t_interval(t), "positive": int((t > 0).sum())}
    for m in ms:
        first = results["runs"][ss[0]]["seeds"]
        if not all("surgery" in first[x][m] for x in first):
            continue
        out["directions"][m] = {
            s: {
                k: t_interval(
                    [
                        r[m]["surgery"][f"dir_{k}"]
                        for r in results["runs"][s]["seeds"].values()
                        if f"dir_{k}" in r[m]["surgery"]
                    ]
                )
                for k in DIRECTIONS
                if all(f"dir_{k}" in r[m]["surgery"] for r in results["runs"][s]["seeds"].values())
            }
            for s in ss
        }
        for s in ss:
            out["directions"][m][s]["removed_fraction"] = t_interval(
                [r[m]["surgery"]["removed_fraction"] for r in results["runs"][s]["seeds"].values()]
            )
    for s in ss:
        txt = results["runs"][s]["text_only"]
        tests = [n for n in next(iter(txt.values())) if n != "training distribution"]
        out["text_only"][s] = {
            "training distribution": t_interval([v["training distribution"] for v in txt.values()]),
            "test sets": t_interval([np.mean([v[n] for n in tests]) for v in txt.values()]),
        }
    return out


def _cell(iv: dict, signed: bool = False, scale: float = 100.0) -> str:
    mean = iv["mean"] * scale
    txt = f"{mean:+.1f}" if signed else f"{mean:.1f}"
    return f"{txt} ± {iv['sd'] * scale:.1f}" if iv["n"] > 1 else txt


def _paired_cell(iv: dict) -> str:
    txt = f"{iv['mean'] * 100:+.1f}"
    if iv["n"] > 1:
        txt += f" [{iv['lo'] * 100:+.1f}, {iv['hi'] * 100:+.1f}]"
    return f"{txt} ({iv['positive']}/{iv['n']})"


def markdown(results: dict) -> str:
    """The axis's tables (Markdown)."""
    s = summary(results)
    ss, ms = strengths_of(results), list(results["methods"])
    seeds = list(results["protocol"]["seeds"])
    n = len(seeds)
    lines = [
        f"Shortcut-strength axis: training family `{results['train_family']}` (the other "
        f"{len(results['families']) - 1} held out), shortcut strength P(warm | fake) = "
        f"P(cool | real) in the training set {', '.join(ss)} (every test set 0.5); seeds "
        f"{', '.join(map(str, seeds))}; LoRA scaling `{results['lora_scaling']}`. Every cell "
        "is x100, mean ± sample std over the seeds.",
        "",
    ]
    head = "| Method | " + " | ".join(ss) + " |"
    rule = "|---|" + "---:|" * len(ss)
    for k, title in MEASURES.items():
        lines += [f"**{title}**, method x shortcut strength:", "", head, rule]
        for m in ms:
            cells = [_cell(s["levels"][k][m][x], signed=k == "theme_effect") for x in ss]
            lines.append(f"| {LABELS[m]} | " + " | ".join(cells) + " |")
        lines.append("")
    if s["paired"].get(PAIRED[0]):
        trend = f" | {ss[-1]} minus {ss[0]} |" if len(ss) > 1 else " |"
        for k in PAIRED:
            lines += [
                f"**Paired against plain LoRA, {SHORT[k]}**: per "
                f"strength the mean over the {n} seeds of the per-seed difference, its 95% "
                f"t-interval (t(0.975, {n - 1}) x sd / sqrt({n})) and the positive seeds"
                + (
                    "; last column: how that difference changes from the weakest to the "
                    "strongest shortcut, paired by seed"
                    if len(ss) > 1
                    else ""
                )
                + ":",
                "",
                "| Method | " + " | ".join(ss) + trend,
                "|---|" + "---:|" * (len(ss) + (len(ss) > 1)),
            ]
            for m in s["paired"][k]:
                cells = [_paired_cell(s["paired"][k][m][x]) for x in ss]
                if len(ss) > 1:
                    cells.append(_paired_cell(s["trend"][k][m]))
                lines.append(f"| {LABELS[m]} | " + " | ".join(cells) + " |")
            lines.append("")
    lines += _direction_lines(s, ss, results)
    lines += [
        "**Text-only classifier** (logistic regression on the captions' frozen text features, "
        "trained on the training captions): accuracy on a fresh draw of the training "
        "distribution and the mean over the shortcut-free test sets:",
        "",
        "| Caption-only classifier | " + " | ".join(ss) + " |",
        rule,
    ]
    for name in ("training distribution", "test sets"):
        cells = [_cell(s["text_only"][x][name]) for x in ss]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _direction_lines(s: dict, ss: list[str], results: dict) -> list[str]:
    if not s["directions"]:
        return []
    dim = results.get("feature_dim")
    chance = (
        f" (for a direction unrelated to the gradient, {random_abs_cos(dim):.3f})" if dim else ""
    )
    cols = ["removed_fraction", *DIRECTIONS]
    lines = [
        "**What each projection removed, and the fixed-direction property** (means over the "
        "training steps of each run, then mean ± std over the seeds; cosines and shares x100): "
        "the fraction of the feature gradient's norm removed; the cosine between the "
        "directions projected off two different images with the same label in the same step "
        "(and the lowest such cosine in the run), in different steps, and with different "
        "labels; the share `|cos(g_b, .)|` of each image's incoming gradient that lies along "
        f"the direction projected off it, along its own caption's text feature and along that "
        f"feature's positive part{chance}; the cosine between two images' text features:",
        "",
        "| Method | strength | removed | " + " | ".join(DIRECTIONS.values()) + " |",
        "|---|---:|" + "---:|" * len(cols),
    ]
    for m, per in s["directions"].items():
        for x in ss:
            cells = [
                _cell(per[x][k], signed=k.startswith("cos") or k.startswith("min"))
                if k in per[x]
                else "n/a"
                for k in cols
            ]
            lines.append(f"| {LABELS[m]} | {x} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def plots(results: dict, out: Path) -> list[Path]:
    """``strength_axis.png``: per measure, each method's paired difference against plain LoRA
    against the shortcut strength, with its 95% t-interval. Returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = summary(results)
    if not s["paired"].get(PAIRED[0]):
        return []
    ss = strengths_of(results)
    x = np.array([float(v) for v in ss])
    shown = list(s["paired"][PAIRED[0]])
    colours = plt.get_cmap("tab10")
    fig, axes = plt.subplots(1, len(PAIRED), figsize=(4.2 * len(PAIRED), 4.2))
    width = 0.012
    for ax, k in zip(axes, PAIRED, strict=True):
        for i, m in enumerate(shown):
            per = s["paired"][k][m]
            mean = np.array([per[v]["mean"] for v in ss]) * 100
            lo = mean - np.array([per[v]["lo"] for v in ss]) * 100
            hi = np.array([per[v]["hi"] for v in ss]) * 100 - mean
            off = (i - (len(shown) - 1) / 2) * width
            ax.errorbar(
                x + off, mean, yerr=[lo, hi], marker="o", ms=4, capsize=2, lw=1,
                color=colours(i), label=LABELS[m],
            )  # fmt: skip
        ax.axhline(0, color="grey", lw=0.8, ls=":")
        ax.set_xticks(x, ss)
        ax.set_xlabel("shortcut strength P(warm | fake) in training")
        ax.set_title(f"{SHORT[k][0].upper()}{SHORT[k][1:]}: minus plain LoRA", fontsize=10)
    axes[0].set_ylabel("points (x100), mean and 95% t-interval over seeds")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(shown), 6), fontsize=8)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    path = out / "strength_axis.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return [path]
