"""Figures: per-subset accuracy bars of evaluation tables, and the t-SNE feature map.

These need the ``viz`` extra (``pip install 'dgsnet[viz]'``: matplotlib, scikit-learn); a
missing package raises :class:`ImportError` naming the extra. Figures are drawn with the
non-interactive ``Agg`` backend and written as PNG.

>>> from dgsnet.metrics import MetricsTable
>>> t = MetricsTable.from_predictions({"a": ([0, 1], [0.2, 0.9])})
>>> accuracy_figure({"data/test": t}, "acc.png")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .metrics import MetricsTable

__all__ = ["accuracy_figure", "pyplot", "require_tsne", "tsne_embedding", "tsne_figure"]

_VIZ_HINT = "pip install 'dgsnet[viz]'"


def pyplot() -> Any:
    """``matplotlib.pyplot`` with the ``Agg`` backend.

    Raises:
        ImportError: matplotlib is not installed (the message names the ``viz`` extra).
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
        tables: ``{root: table}`` as :func:`dgsnet.training.evaluate` returns it.
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
        ImportError: a package is missing (the message names the ``viz`` extra).
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
    """2-D t-SNE of ``features`` (n x d), PCA-initialised, seeded.

    Raises:
        ImportError: scikit-learn is not installed (the message names the ``viz`` extra).
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
        embeddings: ``{"teacher": (n, 2), "student": (n, 2)}``.
        labels: ``(n,)`` labels, 0 real, 1 fake.
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
