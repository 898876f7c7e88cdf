"""One training family, one seed: the study's data, its shared steps (text-only classifier,
linear probe, teacher features) and the evaluation of each method.

The single-family run (``python -m benchmarks.study``) and the grid (``--grid``) both go
through :func:`prepare` and :func:`evaluate`, so a grid cell is computed exactly as the same
cell of a single-family run. Every random draw of a cell is seeded from its seed alone (the
data from fixed offsets of the seed, the probe and each method from ``torch.manual_seed``),
so a method's numbers do not depend on which other methods ran before it, nor in which
process.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from dgsnet.metrics import compute_metrics

from . import methods, world

#: the per-family numbers kept for every method and test set
METRIC_KEYS = ("acc", "ap", "r_acc", "f_acc", "best_acc")


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


@dataclass
class SeedContext:
    """What every method of one (training family, seed) shares."""

    seed: int
    proto: Protocol
    train: world.Split
    tests: dict[str, world.Split]
    reals: world.Split
    probe_head: dict[str, torch.Tensor]
    text_only: dict[str, float]
    teacher_reals: torch.Tensor  # the prior's features of ``reals`` (for CKA)


def prepare(
    seed: int,
    proto: Protocol,
    model: torch.nn.Module,
    budget: methods.Budget,
    log: Callable[[str], None],
    lora_scaling: str = methods.DEFAULT_SCALING,
) -> SeedContext:
    """The data of ``seed`` for ``proto.train_family``, the text-only classifier, the linear
    probe (the teacher head of every DGS method) and the teacher features for CKA.

    The seeds of the data do not depend on the training family: every training family sees
    the same scenes and the same test sets, only the training fakes' generator differs.
    """
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
    probe_head = methods.fit_probe(model, train, budget, seed, lora_scaling)
    # the same prior for every method: its features once per seed
    probe = methods.train_method("probe", model, train, probe_head, budget, seed, lora_scaling)
    teacher_reals = probe.teacher_features(reals.images)
    return SeedContext(
        seed=seed,
        proto=proto,
        train=train,
        tests=tests,
        reals=reals,
        probe_head=probe_head,
        text_only=text_only,
        teacher_reals=teacher_reals,
    )


def evaluate(
    method: str,
    ctx: SeedContext,
    model: torch.nn.Module,
    budget: methods.Budget,
    log: Callable[[str], None],
    lora_scaling: str = methods.DEFAULT_SCALING,
    base: methods.Trained | None = None,
) -> tuple[dict, methods.Trained]:
    """Train ``method`` on the context's training split and measure it: accuracy, AP, r_acc,
    f_acc and oracle accuracy per test set and their held-out means, the theme effect, the
    linear CKA to the teacher, what the projection removed (projecting methods). ``base``:
    the plain-LoRA detector of this seed, which ``"wise"`` reuses. Returns the row (as
    results.json stores it) and the trained detector."""
    t1 = time.time()
    proto, seed = ctx.proto, ctx.seed
    trained = methods.train_method(
        method, model, ctx.train, ctx.probe_head, budget, seed, lora_scaling, base=base
    )
    held = [f for f in world.FAMILIES if f != proto.train_family]
    row: dict = {"families": {}}
    pred_warm, pred_cool = [], []
    for fam, split in ctx.tests.items():
        s = trained.score(split.images)
        m = compute_metrics(split.labels.numpy(), s.numpy())
        row["families"][fam] = {k: getattr(m, k) for k in METRIC_KEYS}
        flagged = (s > 0.5).float()
        pred_warm.append(flagged[split.warm])
        pred_cool.append(flagged[~split.warm])
    row["train_family_acc"] = row["families"][proto.train_family]["acc"]
    for key in METRIC_KEYS:
        row[f"heldout_{key}"] = float(np.mean([row["families"][f][key] for f in held]))
    # how much the scene theme (the shortcut) moves the decision on shortcut-free data
    row["theme_effect"] = float(torch.cat(pred_warm).mean() - torch.cat(pred_cool).mean())
    row["cka"] = methods.linear_cka(ctx.teacher_reals, trained.features(ctx.reals.images))
    if trained.surgery is not None:
        row["surgery"] = trained.surgery
    row["seconds"] = time.time() - t1
    log(
        f"  seed {seed} {methods.LABELS[method]:<30} "
        f"train-family acc {row['train_family_acc']:.3f} | "
        f"held-out acc {row['heldout_acc']:.3f} AP {row['heldout_ap']:.3f} | "
        f"CKA {row['cka']:.3f} | theme effect {row['theme_effect']:+.3f} "
        f"({row['seconds']:.0f} s)"
    )
    return row, trained


def run_seed(
    seed: int,
    proto: Protocol,
    model: torch.nn.Module,
    budget: methods.Budget,
    log: Callable[[str], None],
    want_tsne: bool,
    lora_scaling: str = methods.DEFAULT_SCALING,
    method_names: tuple[str, ...] = methods.METHODS,
):
    """Every method on one seed of one training family. Returns the rows per method, the
    text-only classifier's accuracies and (with ``want_tsne``) the t-SNE features per method
    with the family of each point (-1: real)."""
    ctx = prepare(seed, proto, model, budget, log, lora_scaling)
    tsne_x = tsne_meta = None
    if want_tsne:
        n = proto.tsne_per_family
        parts, fam_ids = [ctx.reals.images[: 2 * n]], [torch.full((2 * n,), -1)]
        for k, fam in enumerate(world.FAMILIES):
            fake = ctx.tests[fam].images[ctx.tests[fam].labels == 1][:n]
            parts.append(fake)
            fam_ids.append(torch.full((len(fake),), k))
        tsne_x, tsne_meta = torch.cat(parts), torch.cat(fam_ids)
    results, feats = {}, {}
    lora = None
    for method in method_names:
        row, trained = evaluate(method, ctx, model, budget, log, lora_scaling, base=lora)
        if method == "lora":
            lora = trained
        results[method] = row
        if tsne_x is not None:
            feats[method] = trained.features(tsne_x)
    return results, ctx.text_only, (feats, tsne_meta)
