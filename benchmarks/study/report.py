"""Tables (Markdown) and figures of the study, from its results.json."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .methods import ALL_METHODS, LABELS


def _stat(values: list[float], scale: float = 100.0, signed: bool = False) -> str:
    a = np.asarray(values, dtype=float) * scale
    mean = f"{a.mean():+.1f}" if signed else f"{a.mean():.1f}"
    return f"{mean} ± {a.std(ddof=1):.1f}" if len(a) > 1 else mean


def _collect(results: dict, method: str, getter) -> list[float]:
    return [getter(results["seeds"][s][method]) for s in results["seeds"]]


def methods_in(results: dict) -> list[str]:
    """The study's methods that ``results`` holds, in the study's order (a results.json of an
    earlier run may lack the methods added since)."""
    first = next(iter(results["seeds"].values()))
    return [m for m in ALL_METHODS if m in first]


def markdown(results: dict) -> str:
    proto = results["protocol"]
    fams = results["families"]
    train_fam = proto["train_family"]
    held = [f for f in fams if f != train_fam]
    seeds = list(results["seeds"])
    ms = methods_in(results)
    lines = [
        f"Seeds {', '.join(seeds)} (n = {len(seeds)}); every cell is mean ± standard deviation "
        "over the seeds (sample std), x100."
        + (" (One seed: means only.)" if len(seeds) == 1 else ""),
        "",
        f"**Accuracy (threshold 0.5)**: the training family ({train_fam}) on its own shortcut-free "
        "test set, each held-out family, their mean; then the held-out mean AP, the geometry "
        "kept (linear CKA between teacher and student features of held-out real images) and the "
        "theme effect (predicted-fake rate on warm minus cool scenes, over all test sets; "
        "0 = the shortcut is not used).",
        "",
        "| Method | "
        + f"{train_fam} (train) | "
        + " | ".join(held)
        + " | held-out acc | held-out AP | CKA | theme effect |",
        "|---|" + "---:|" * (len(held) + 5),
    ]
    for m in ms:
        cells = [_stat(_collect(results, m, lambda r: r["train_family_acc"]))]
        cells += [_stat(_collect(results, m, lambda r, f=f: r["families"][f]["acc"])) for f in held]
        cells += [
            _stat(_collect(results, m, lambda r: r["heldout_acc"])),
            _stat(_collect(results, m, lambda r: r["heldout_ap"])),
            _stat(_collect(results, m, lambda r: r["cka"])),
            _stat(_collect(results, m, lambda r: r["theme_effect"]), signed=True),
        ]
        lines.append(f"| {LABELS[m]} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "**Average precision** per family:",
        "",
        "| Method | " + " | ".join(fams) + " |",
        "|---|" + "---:|" * len(fams),
    ]
    for m in ms:
        cells = [_stat(_collect(results, m, lambda r, f=f: r["families"][f]["ap"])) for f in fams]
        lines.append(f"| {LABELS[m]} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "**Calibration on the held-out families** (means over the held-out families): accuracy "
        "on their real images (r_acc) and fake images (f_acc) at threshold 0.5, and the oracle "
        "accuracy at the best threshold per test set (as UnivFD reports it):",
        "",
        "| Method | held-out r_acc | held-out f_acc | held-out oracle acc |",
        "|---|---:|---:|---:|",
    ]
    for m in ms:
        cells = [
            _stat(_collect(results, m, lambda r, k=k: r[f"heldout_{k}"]))
            for k in ("r_acc", "f_acc", "best_acc")
        ]
        lines.append(f"| {LABELS[m]} | " + " | ".join(cells) + " |")
    if "lora" in ms and len(seeds) > 1:
        lines += [
            "",
            "**Paired against plain LoRA**: every method and plain LoRA see the same data, "
            "initialisation and batch order per seed, so their per-seed difference removes the "
            "seed-to-seed variation they share. Mean ± std of the difference over the seeds, x100, "
            "and on how many seeds it is positive:",
            "",
            "| Method | held-out acc | held-out AP | held-out f_acc | CKA | theme effect |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        keys = ("heldout_acc", "heldout_ap", "heldout_f_acc", "cka", "theme_effect")
        for m in ms:
            if m == "lora":
                continue
            cells = []
            for k in keys:
                d = np.subtract(
                    _collect(results, m, lambda r, k=k: r[k]),
                    _collect(results, "lora", lambda r, k=k: r[k]),
                )
                cells.append(f"{_stat(list(d), signed=True)} ({int((d > 0).sum())}/{len(d)})")
            lines.append(f"| {LABELS[m]} | " + " | ".join(cells) + " |")
    projecting = [m for m in ms if all("surgery" in results["seeds"][s][m] for s in seeds)]
    if projecting:
        lines += [
            "",
            "**What the projection removed**, averaged over the training steps: the fraction of "
            "the feature gradient's norm it took away, and the cosine between the task gradient "
            "and the (positive part of the) reference it projects off:",
            "",
            "| Method | removed fraction | cos(task gradient, reference) |",
            "|---|---:|---:|",
        ]
        for m in projecting:
            cells = [
                _stat(_collect(results, m, lambda r, k=k: r["surgery"][k]), signed=k == "cos_harm")
                for k in ("removed_fraction", "cos_harm")
            ]
            lines.append(f"| {LABELS[m]} | " + " | ".join(cells) + " |")
    txt = results["text_only"]
    first = next(iter(txt.values()))
    # results.json stores keys sorted: the training distribution first, then the families
    names = [n for n in ("training distribution", *fams) if n in first]
    names += [n for n in first if n not in names]
    lines += [
        "",
        "**Text-only classifier** (logistic regression on frozen text features of the captions, "
        "trained on the training captions): accuracy on a fresh draw of the training "
        "distribution (with the shortcut) and on each shortcut-free test set:",
        "",
        "| " + " | ".join(names) + " |",
        "|" + "---:|" * len(names),
        "| " + " | ".join(_stat([txt[s][n] for s in txt]) for n in names) + " |",
    ]
    return "\n".join(lines) + "\n"


def plots(results: dict, out: Path, tsne) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fams = results["families"]
    train_fam = results["protocol"]["train_family"]
    colours = plt.get_cmap("tab10")
    ms = methods_in(results)

    # per-family accuracy, grouped bars with the seed std as error bars
    fig, ax = plt.subplots(figsize=(11, 5.0))
    width = 0.8 / len(ms)
    x = np.arange(len(fams))
    for i, m in enumerate(ms):
        vals = (
            np.array([_collect(results, m, lambda r, f=f: r["families"][f]["acc"]) for f in fams])
            * 100
        )
        ax.bar(
            x + (i - (len(ms) - 1) / 2) * width,
            vals.mean(1),
            width,
            yerr=vals.std(1, ddof=1) if vals.shape[1] > 1 else None,
            capsize=2,
            label=LABELS[m],
            color=colours(i),
        )
    ax.set_xticks(x, [f"{f}\n(train)" if f == train_fam else f"{f}\n(held out)" for f in fams])
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(40, 100)
    ax.axhline(50, color="grey", lw=0.8, ls=":")
    ax.legend(ncol=4, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2))
    ax.set_title(f"Accuracy per generator family (mean ± std over {len(results['seeds'])} seeds)")
    fig.tight_layout()
    fig.savefig(out / "per_family_accuracy.png", dpi=110)
    plt.close(fig)

    # geometry kept
    fig, ax = plt.subplots(figsize=(7, 3.4))
    vals = np.array([_collect(results, m, lambda r: r["cka"]) for m in ms])
    ax.barh(
        np.arange(len(ms)),
        vals.mean(1),
        xerr=vals.std(1, ddof=1) if vals.shape[1] > 1 else None,
        capsize=3,
        color=[colours(i) for i in range(len(ms))],
    )
    ax.set_yticks(np.arange(len(ms)), [LABELS[m] for m in ms])
    ax.invert_yaxis()
    ax.set_xlim(0, 1.02)
    ax.set_xlabel("linear CKA(teacher, student) on held-out real images")
    fig.tight_layout()
    fig.savefig(out / "cka.png", dpi=110)
    plt.close(fig)

    if tsne is None:
        return
    from sklearn.manifold import TSNE

    feats, family = tsne
    family = family.numpy()
    shown = ["probe"] + [m for m in ms if m != "probe"]
    cols = (len(shown) + 1) // 2
    fig, axes = plt.subplots(2, cols, figsize=(3.75 * cols, 7.4))
    for ax, m in zip(axes.flat, shown, strict=False):
        f = feats[m].numpy()
        emb = TSNE(
            n_components=2, perplexity=min(30, len(f) // 4), init="pca", random_state=0
        ).fit_transform(f)
        real = family < 0
        ax.scatter(emb[real, 0], emb[real, 1], s=6, c="lightgrey", label="real")
        for k, fam in enumerate(fams):
            sel = family == k
            ax.scatter(
                emb[sel, 0],
                emb[sel, 1],
                s=6,
                color=colours(k),
                label=f"{fam} (train)" if fam == train_fam else fam,
            )
        title = "Frozen prior (teacher)" if m == "probe" else LABELS[m]
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(axes.flat)[len(shown) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7, markerscale=2, loc="best")
    fig.suptitle(
        f"t-SNE of image features (seed {next(iter(results['seeds']))}, held-out "
        "real images and fakes of every family)"
    )
    fig.tight_layout()
    fig.savefig(out / "tsne.png", dpi=110)
    plt.close(fig)


def world_figure(path: Path, seed: int = 3) -> None:
    """Eight scenes as the camera takes them and as each generator family makes them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from . import world

    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    scenes = world.sample_scenes(8, rng)
    hi = world.render_all(scenes)
    rows = [("real (camera)", world.camera(hi, gen))]
    rows += [(fam, world.generate(hi, fam, gen)) for fam in world.FAMILIES]
    fig, axes = plt.subplots(len(rows), 8, figsize=(10, 1.35 * len(rows)))
    for r, (name, imgs) in enumerate(rows):
        for c in range(8):
            ax = axes[r, c]
            ax.imshow(imgs[c].permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(name, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
