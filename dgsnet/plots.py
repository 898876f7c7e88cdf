"""Figures: per-subset accuracy bars of evaluation tables, the t-SNE feature map, and the
training curves of a run (`run_figures`, `dgsnet plot`).

These need the `viz` extra (`pip install 'dgsnet[viz]'`: matplotlib, scikit-learn); a
missing package raises `ImportError` naming the extra. Figures are drawn with the
non-interactive `Agg` backend and written as PNG.

Examples:
    >>> from dgsnet.metrics import MetricsTable
    >>> t = MetricsTable.from_predictions({"a": ([0, 1], [0.2, 0.9])})
    >>> accuracy_figure({"data/test": t}, "acc.png")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .metrics import MetricsTable

__all__ = [
    "RUN_FIGURES",
    "accuracy_figure",
    "pyplot",
    "read_run_log",
    "require_tsne",
    "run_curves",
    "run_figures",
    "tsne_embedding",
    "tsne_figure",
]

_VIZ_HINT = "pip install 'dgsnet[viz]'"


def pyplot() -> Any:
    """`matplotlib.pyplot` with the `Agg` backend.

    Raises:
        ImportError: matplotlib is not installed (the message names the `viz` extra).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError(f"plots need matplotlib, which is not installed: {_VIZ_HINT}") from None
    return plt


def _save(plt: Any, fig: Any, path: str | os.PathLike[str], dpi: int) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def accuracy_figure(
    tables: Mapping[str, MetricsTable], path: str | os.PathLike[str], degradation: str = "clean"
) -> None:
    """One bar chart per table (stacked vertically): acc, r_acc and f_acc in percent for each
    subset and the mean row, a dashed line at chance (50 %).

    Args:
        tables: `{root: table}` as `dgsnet.training.evaluate` returns it.
        path: the PNG file (its folder is created).
        degradation: the degradation's name, shown in each title.
    """
    plt = pyplot()
    widest = max(len(t) + 1 for t in tables.values())
    fig, axes = plt.subplots(
        len(tables), 1, figsize=(max(6.0, 0.9 * widest + 2), 3.2 * len(tables)), squeeze=False
    )
    cols = ("acc", "r_acc", "f_acc")
    width = 0.8 / len(cols)
    for ax, (root, table) in zip(axes[:, 0], tables.items(), strict=True):
        names = [*table.subsets, "mean"]
        mean = table.mean()
        x = np.arange(len(names))
        for j, col in enumerate(cols):
            vals = [100 * getattr(table[n], col) for n in table.subsets] + [100 * mean[col]]
            ax.bar(x + (j - 1) * width, vals, width, label=col)
        ax.set_xticks(x)
        ax.set_xticklabels(names, rotation=30, ha="right")
        ax.set_ylim(0, 105)
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"{Path(root).name} ({degradation})")
        ax.axhline(50, color="grey", lw=0.6, ls="--")
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")
    fig.tight_layout()
    _save(plt, fig, path, dpi=120)


def require_tsne() -> None:
    """Check that the t-SNE figure can be made (matplotlib and scikit-learn installed).

    Raises:
        ImportError: a package is missing (the message names the `viz` extra).
    """
    pyplot()
    _tsne_class()


def _tsne_class() -> Any:
    try:
        from sklearn.manifold import TSNE
    except ImportError:
        raise ImportError(
            f"t-SNE needs scikit-learn, which is not installed: {_VIZ_HINT}"
        ) from None
    return TSNE


def tsne_embedding(features: np.ndarray, perplexity: float, seed: int = 0) -> np.ndarray:
    """2-D t-SNE of `features` (n x d), PCA-initialised, seeded.

    Raises:
        ImportError: scikit-learn is not installed (the message names the `viz` extra).
    """
    tsne = _tsne_class()(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
    return np.asarray(tsne.fit_transform(features))


_TSNE_TITLES = {
    "teacher": "teacher: pre-trained CLIP (adapters off)",
    "student": "student: DGS fine-tuned",
}


def tsne_figure(
    embeddings: Mapping[str, np.ndarray],
    labels: np.ndarray,
    path: str | os.PathLike[str],
    title: str,
) -> None:
    """The two-panel feature map of the paper's Figure 1: the teacher's and the student's
    2-D embeddings, real images in blue and fake in red, with counts in the legend.

    Args:
        embeddings: `{"teacher": (n, 2), "student": (n, 2)}`.
        labels: `(n,)` labels, 0 real, 1 fake.
        path: the PNG file (its folder is created).
        title: the figure's title.
    """
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6))
    for ax, name in zip(axes, ("teacher", "student"), strict=True):
        e = embeddings[name]
        for lab, colour, text in ((0, "tab:blue", "real"), (1, "tab:red", "fake")):
            m = labels == lab
            ax.scatter(e[m, 0], e[m, 1], s=8, c=colour, alpha=0.7, label=f"{text} ({int(m.sum())})")
        ax.set_title(_TSNE_TITLES[name])
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(loc="best", fontsize="small")
    fig.suptitle(title)
    fig.tight_layout()
    _save(plt, fig, path, dpi=130)


# ------------------------------------------------------------------------------------------
# training curves from OUT/train_log.jsonl
# ------------------------------------------------------------------------------------------

Curve = tuple[list[int], list[float]]
"""`{x values, y values}` of one curve: the global stage-2 step and the logged value."""

RUN_FIGURES: dict[str, tuple[str, str]] = {
    "losses": ("stage-2 loss and its parts", "loss"),
    "removed_fraction": ("gradient norm removed by the surgery", "removed fraction"),
    "cosines": ("cosine of the task gradient with the references", "cosine"),
    "lr": ("learning rate", "lr"),
}
"""The figures of `run_figures`: file stem -> (title, y label)."""


def read_run_log(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of a run log (`train_log.jsonl`), or of `RUN_DIR/train_log.jsonl`
    when `path` is a folder. A last line cut short by a killed run is left out.

    Raises:
        FileNotFoundError: no log there.
        ValueError: a line before the last is not a JSON object (the message names the file
            and the line).
    """
    return [rec for _, rec in _numbered_records(path)]


def _log_file(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    return p / "train_log.jsonl" if p.is_dir() else p


def _numbered_records(path: str | os.PathLike[str]) -> list[tuple[str, dict[str, Any]]]:
    """`("<file>, line <n>", record)` for each record of the log (see `read_run_log`)."""
    p = _log_file(path)
    if not p.is_file():
        raise FileNotFoundError(f"no run log at {p} (expected a run folder or a train_log.jsonl)")
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise ValueError(f"{p} is not UTF-8 text ({exc})") from None
    records: list[tuple[str, dict[str, Any]]] = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break  # the last line of a run killed while writing it
            raise ValueError(f"{p}, line {i + 1}: not a JSON record") from None
        if not isinstance(rec, dict):
            raise ValueError(f"{p}, line {i + 1}: expected a JSON object, got {type(rec).__name__}")
        records.append((f"{p}, line {i + 1}", rec))
    return records


def _value(v: Any) -> float | None:
    """A finite float from a logged number (the log writes NaN/Inf as strings); else None."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    try:
        f = float(v)
    except OverflowError:  # an integer beyond float range
        return None
    return f if math.isfinite(f) else None


def run_curves(records: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Curve]]:
    """The curves of `run_figures` from run-log records: `{figure: {curve: (steps,
    values)}}` over the stage-2 `"step"` records, skipping values that are missing or not
    finite (a skipped step logs a NaN loss and no parts).

    * `losses`: `total` (the `loss` key) and each part of `losses` (`image`,
      `text`, `align`, `teacher`, `distill`: what the run logged);
    * `removed_fraction`: `stats.removed_fraction`;
    * `cosines`: `stats.cos_harm` and `stats.cos_help` (cosine of the task gradient
      with the harmful and the helpful text references);
    * `lr`: the learning rate.

    Figures without any point are left out (a run without surgery logs no statistics).

    Raises:
        ValueError: a step record whose `step` is not a whole number, or whose `losses`
            or `stats` is not an object (the message names the record).

    Examples:
        >>> run_curves([{"event": "step", "step": 1, "loss": 0.7, "losses": {"image": 0.6},
        ...              "stats": {"removed_fraction": 0.1}, "lr": 1e-3}])["losses"]
        {'total': ([1], [0.7]), 'image': ([1], [0.6])}
    """
    return _curves((f"record {i + 1}", rec) for i, rec in enumerate(records))


def _step_fields(where: str, rec: Mapping[str, Any]) -> tuple[int, Mapping[str, Any], Any]:
    """`(step, stats, losses)` of a step record, checked (`ValueError` naming `where`)."""
    step = rec.get("step")
    if isinstance(step, float) and math.isfinite(step) and step.is_integer():
        step = int(step)
    if isinstance(step, int) and not 0 <= step < 2**63:
        raise ValueError(
            f"{where}: a step record's 'step' must be a whole number >= 0, got {step!r:.40}"
        )
    if isinstance(step, bool) or not isinstance(step, int):
        raise ValueError(f"{where}: a step record's 'step' must be a whole number, got {step!r}")
    parts = {}
    for key in ("losses", "stats"):
        value = rec.get(key)
        if value is not None and not isinstance(value, Mapping):
            raise ValueError(
                f"{where}: a step record's {key!r} must be an object of numbers, got "
                f"{type(value).__name__} {value!r:.60}"
            )
        parts[key] = value or {}
    return step, parts["stats"], parts["losses"]


def _curves(records: Iterable[tuple[str, Mapping[str, Any]]]) -> dict[str, dict[str, Curve]]:
    curves: dict[str, dict[str, Curve]] = {name: {} for name in RUN_FIGURES}

    def add(figure: str, name: str, step: int, value: Any) -> None:
        v = _value(value)
        if v is not None:
            xs, ys = curves[figure].setdefault(name, ([], []))
            xs.append(step)
            ys.append(v)

    for where, rec in records:
        if rec.get("event") != "step":
            continue
        step, stats, losses = _step_fields(where, rec)
        add("losses", "total", step, rec.get("loss"))
        for part, v in losses.items():
            add("losses", str(part), step, v)
        add("removed_fraction", "removed_fraction", step, stats.get("removed_fraction"))
        for name in ("cos_harm", "cos_help"):
            add("cosines", name, step, stats.get(name))
        add("lr", "lr", step, rec.get("lr"))
    return {k: v for k, v in curves.items() if v}


_LABELS = {
    "total": "total",
    "align": "align (before align_weight)",
    "teacher": "teacher probe (not in the total)",
    "cos_harm": "cos(task, harm)",
    "cos_help": "cos(task, help)",
    "removed_fraction": "1 - ||g_out|| / ||g_in||",
}


def _draw(ax: Any, figure: str, series: Mapping[str, Curve]) -> None:
    title, ylabel = RUN_FIGURES[figure]
    for name, (xs, ys) in series.items():
        style = {"lw": 2.0, "color": "black"} if name == "total" else {"lw": 1.2}
        ax.plot(xs, ys, label=_LABELS.get(name, name), **style)
    if figure in ("cosines", "removed_fraction") or any(
        min(ys) < 0 < max(ys) for _, ys in series.values()
    ):
        ax.axhline(0, color="grey", lw=0.6, ls="--")
    ax.set_title(title)
    ax.set_xlabel("stage-2 step")
    ax.set_ylabel(ylabel)
    if figure == "lr":
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    if len(series) > 1:  # under the axes: the curves stay visible
        ax.legend(
            loc="upper center",
            bbox_to_anchor=(0.5, -0.2),
            ncol=3,
            fontsize="small",
            frameon=False,
        )
    ax.grid(alpha=0.3)


def run_figures(
    run: str | os.PathLike[str], out_dir: str | os.PathLike[str] | None = None
) -> dict[str, dict[str, Curve]]:
    """PNG training curves of a run from its `train_log.jsonl`: `losses.png`,
    `removed_fraction.png`, `cosines.png`, `lr.png` (those with data, see
    `run_curves`) and `run.png` with all of them as panels.

    Args:
        run: the run folder, or its `train_log.jsonl`.
        out_dir: where the PNGs go (created); default `<run folder>/plots`.

    Returns:
        The plotted data, `{file stem: {curve: (steps, values)}}` (`run_curves`),
        without `run` (its panels are the others).

    Raises:
        FileNotFoundError: no run log.
        ValueError: the log is damaged (a line that is no JSON object, a step record with
            a bad `step`, `losses` or `stats`: the message names the file and the line),
            or holds no stage-2 step (e.g. a stage-1 run).
        ImportError: matplotlib is missing (the message names the `viz` extra).

    Examples:
        >>> run_figures("runs/tiny")  # doctest: +SKIP
    """
    src = Path(run)
    curves = _curves(_numbered_records(src))
    log_name = _log_file(src)
    if not curves:
        raise ValueError(f"{log_name} holds no stage-2 step records to plot")
    out = Path(out_dir) if out_dir is not None else (src.parent if src.is_file() else src) / "plots"
    plt = pyplot()
    for figure, series in curves.items():
        fig, ax = plt.subplots(figsize=(6.4, 3.6))
        _draw(ax, figure, series)
        fig.tight_layout()
        _save(plt, fig, out / f"{figure}.png", dpi=110)
    n = len(curves)
    cols = 2 if n > 1 else 1
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.4 * cols, 3.3 * rows), squeeze=False)
    for ax, (figure, series) in zip(axes.flat, curves.items(), strict=False):
        _draw(ax, figure, series)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    fig.suptitle(f"{log_name.parent.name}: {log_name.name}")
    fig.tight_layout()
    _save(plt, fig, out / "run.png", dpi=100)
    return curves
