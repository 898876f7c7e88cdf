"""Validation during training: `ValidationMonitor`.

After every stage-2 epoch (or every `val_every` steps) the student is scored on a
validation set: a separate dataset (`dgsnet train --val DIR`, `train(..., val_data=...)`)
or a held-out fraction of the training data (`val_fraction`, split by a seeded, per-label
draw). The metrics are

* a binary real/fake head: `acc`, `r_acc`, `f_acc`, `ap` and `best_acc` over the whole
  validation set (`dgsnet.metrics.compute_metrics`, threshold 0.5);
* a head with `C > 1` classes: `top1` and `mean_class_accuracy`
  (`dgsnet.metrics.ClassificationReport`).

Each validation is a `"validation"` record of the run log (so TensorBoard shows
`validation/<metric>` at its step), a row of `OUT/validation.csv`, and, when `val_metric`
(higher is better) improves, the weights in `OUT/best/` (a checkpoint folder that
`load_trained` and `dgsnet eval` read). With `patience > 0` the run stops after that many
validations without improvement; `final/` then holds the weights at the stop.

The monitor's state (every validation so far, the best value and step, the count without
improvement, whether it stopped) is saved in every checkpoint (`last/validation.json`) and
restored on resume. A validation runs under a forked RNG seeded from the run's seed, so it
neither consumes nor depends on the training's random state: a run with validation that is
killed and resumed ends with bitwise the same weights, `best/` and `validation.csv` as one
that ran through.
"""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from ..data import collate
from ..errors import TrainingConfigError
from ..io import atomic_write_json, atomic_write_text
from ..metrics import ClassificationReport, compute_metrics
from ..wrapper import DGSWrapper
from .data import iterate_loader
from .options import BINARY_METRICS, CLASS_METRICS, TrainOptions
from .precision import Precision
from .run_folder import commit_dir, save_model_dir, staging_dir
from .seeding import derive_seed

__all__ = [
    "BEST_DIR",
    "BINARY_METRICS",
    "CLASS_METRICS",
    "VALIDATION_CSV",
    "VALIDATION_STATE_NAME",
    "HeldOut",
    "ValidationMonitor",
    "class_probabilities",
    "held_out_split",
    "validation_metrics",
]

BEST_DIR = "best"
"""The folder of the best weights inside the run folder."""
VALIDATION_CSV = "validation.csv"
"""One row per validation: step, epoch, every metric, the best value so far."""
VALIDATION_STATE_NAME = "validation.json"
"""The monitor's state inside a checkpoint folder."""


def class_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Per-class probabilities `(N, C)` in float32 from student logits.

    A binary head (one logit per image, `(N,)` or `(N, 1)`) gives `(1 - p, p)` with
    `p = sigmoid(logit)`, the probability of fake; `C > 1` logits give their softmax.

    Args:
        logits: `(N,)`, `(N, 1)` or `(N, C)`.

    Returns:
        `(N, C)` probabilities, `C = 2` for a binary head.

    Examples:
        >>> class_probabilities(torch.zeros(2, 1))
        tensor([[0.5000, 0.5000],
                [0.5000, 0.5000]])
    """
    if logits.dim() == 1 or logits.shape[-1] == 1:
        p = torch.sigmoid(logits.reshape(-1).float())
        return torch.stack([1 - p, p], dim=1)
    return torch.softmax(logits.float(), dim=-1)


class HeldOut(Dataset):
    """The items of `dataset` at `indices`, in that order, with the dataset's `root`,
    `paths`, `labels` and `caption(i)` narrowed to them (so that the run's data fingerprint
    covers exactly the items trained on).

    Args:
        dataset: a dataset of `dgsnet.data.Sample` items.
        indices: the positions to keep.
    """

    def __init__(self, dataset: Any, indices: Sequence[int]) -> None:
        self.dataset = dataset
        """The dataset viewed."""
        self.indices = [int(i) for i in indices]
        """The positions in `dataset`, in view order."""
        self.root = getattr(dataset, "root", None)
        """The viewed dataset's root, when it has one."""
        paths, labels = getattr(dataset, "paths", None), getattr(dataset, "labels", None)
        self.paths = None if paths is None else [paths[i] for i in self.indices]
        """The image paths of the view (`None` when the dataset lists none)."""
        self.labels = None if labels is None else [labels[i] for i in self.indices]
        """The labels of the view (`None` when the dataset lists none)."""

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Any:
        return self.dataset[self.indices[i]]

    def caption(self, i: int) -> str | None:
        """The caption of item `i` of the view (`None` without captions)."""
        cap = getattr(self.dataset, "caption", None)
        return cap(self.indices[i]) if callable(cap) else None


def _labels_of(ds: Any) -> list[int]:
    labels = getattr(ds, "labels", None)
    return [int(y) for y in labels] if labels is not None else [int(s[2]) for s in ds]


def held_out_split(
    data: Dataset | Sequence[Dataset], fraction: float, seed: int
) -> tuple[list[HeldOut], list[HeldOut]]:
    """Split the training data into `(train views, validation views)`: in every dataset,
    `round(fraction * n)` of the `n` images of each label (at least one of a label with
    two or more images) go to validation, drawn with a generator seeded from `seed`.

    Args:
        data: a dataset or a list of datasets.
        fraction: the share held out, in (0, 1).
        seed: the run's seed.

    Returns:
        The training views and the validation views, one of each per dataset.

    Raises:
        TrainingConfigError: nothing would be held out, or nothing would be left to train.
    """
    datasets = [data] if isinstance(data, Dataset) else list(data)
    train, val = [], []
    for k, ds in enumerate(datasets):
        by_label: dict[int, list[int]] = {}
        for i, y in enumerate(_labels_of(ds)):
            by_label.setdefault(y, []).append(i)
        g = torch.Generator().manual_seed(derive_seed(seed, "val_split", k))
        held: list[int] = []
        for y in sorted(by_label):
            idx = by_label[y]
            n = min(len(idx) - 1, max(1, round(fraction * len(idx)))) if len(idx) > 1 else 0
            order = torch.randperm(len(idx), generator=g).tolist()
            held.extend(idx[j] for j in order[:n])
        keep = sorted(set(range(len(ds))) - set(held))  # type: ignore[arg-type]
        train.append(HeldOut(ds, keep))
        val.append(HeldOut(ds, sorted(held)))
    if not sum(len(v) for v in val):
        raise TrainingConfigError(f"val_fraction {fraction} holds out no image of the data")
    return train, val


def _probabilities(
    wrapper: DGSWrapper, data: Dataset, batch_size: int, num_workers: int, precision: Precision
) -> tuple[np.ndarray, np.ndarray]:
    loader = DataLoader(
        data, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate
    )
    probs, labels = [], []
    was_training = wrapper.training
    wrapper.eval()
    try:
        with torch.no_grad():
            for batch in iterate_loader(loader):
                with precision.autocast():
                    logits = wrapper.predict(batch.images.to(wrapper.device))
                probs.append(class_probabilities(logits).cpu().numpy().astype(np.float64))
                labels.append(batch.labels.numpy())
    finally:
        wrapper.train(was_training)
    return np.concatenate(probs), np.concatenate(labels)


def validation_metrics(
    wrapper: DGSWrapper,
    data: Dataset,
    *,
    batch_size: int = 64,
    num_workers: int = 0,
    precision: Precision | None = None,
) -> dict[str, float]:
    """The validation metrics of the student on `data` (see the module docstring).

    Args:
        wrapper: the model, scored in eval mode (its mode is restored).
        data: a dataset of `dgsnet.data.Sample` items.
        batch_size: images per forward pass.
        num_workers: DataLoader worker processes.
        precision: the autocast policy of the forward passes (default: float32).

    Returns:
        `{metric: value}`: `BINARY_METRICS` or `CLASS_METRICS`.

    Raises:
        TrainingConfigError: a binary head's validation set lacks real or fake images.
    """
    policy = precision or Precision.parse("fp32", wrapper.device)
    probs, labels = _probabilities(wrapper, data, batch_size, num_workers, policy)
    k = wrapper.config.num_classes
    if k > 1:
        report = ClassificationReport.from_predictions(
            labels, probs.argmax(axis=1), [str(c) for c in range(k)]
        )
        return {"top1": report.top1, "mean_class_accuracy": report.mean_class_accuracy}
    if len(set(labels.tolist())) < 2:
        raise TrainingConfigError(
            "the validation set needs real and fake images (its AP and accuracies compare "
            f"them); it holds {len(labels)} images of label {sorted(set(labels.tolist()))}"
        )
    m = compute_metrics(labels, probs[:, 1])
    return {name: float(getattr(m, name)) for name in BINARY_METRICS}


class ValidationMonitor:
    """Validates during a run, keeps `best/`, decides the early stop (see the module
    docstring); the `Trainer` calls it.

    Args:
        options: the run's options (`val_fraction`, `val_every`, `val_metric`, `patience`,
            `batch_size`, `num_workers`, `seed`).
        data: the validation dataset(s), or `None` (then `val_fraction` may hold out some
            of the training data in `split`).
        num_classes: the model's `num_classes` (which metrics exist).

    Raises:
        TrainingConfigError: a metric the head does not have, both `data` and
            `val_fraction`, or `val_every` / `patience` without validation data.
    """

    def __init__(
        self, options: TrainOptions, data: Dataset | Sequence[Dataset] | None, num_classes: int
    ) -> None:
        names = CLASS_METRICS if num_classes > 1 else BINARY_METRICS
        metric = names[0] if options.val_metric == "auto" else options.val_metric
        if metric not in names:
            head = f"{num_classes} classes" if num_classes > 1 else "a binary head"
            raise TrainingConfigError(
                f"val_metric {metric!r} is not a metric of {head}; choose one of "
                f"{', '.join(names)} (or 'auto': {names[0]})"
            )
        if data is not None and options.val_fraction:
            raise TrainingConfigError("give validation data or val_fraction, not both")
        if data is None and not options.val_fraction and (options.val_every or options.patience):
            raise TrainingConfigError(
                "val_every and patience need validation data: val_data (--val) or val_fraction"
            )
        self.options = options
        """The run's options."""
        self.data: Dataset | None = _one_dataset(data)
        """The validation set (after `split` for a held-out fraction)."""
        self.metric = metric
        """The metric that decides `best/` and the early stop (higher is better)."""
        self.history: list[dict[str, Any]] = []
        """Every validation so far: step, epoch, the metrics, the best value."""
        self.best: float | None = None
        """The best value of `metric` so far."""
        self.best_step: int | None = None
        """The global step of the best value."""
        self.bad = 0
        """Validations since the last improvement."""
        self.stopped = False
        """Whether the run stopped early (it stays stopped when resumed)."""
        self._log: Any = None
        self._main = True
        self._precision: Precision | None = None

    @property
    def enabled(self) -> bool:
        """Whether the run validates at all."""
        return self.data is not None or bool(self.options.val_fraction)

    @property
    def per_epoch(self) -> bool:
        """Whether validation runs at every epoch end (`val_every == 0`)."""
        return self.enabled and not self.options.val_every

    def due(self, step: int) -> bool:
        """Whether validation runs after stage-2 step `step` (every `val_every` steps)."""
        every = self.options.val_every
        return self.enabled and bool(every) and step % every == 0

    def split(self, data: Dataset | Sequence[Dataset]) -> Dataset | Sequence[Dataset]:
        """The training data, less the held-out validation images (`val_fraction`)."""
        if not self.options.val_fraction:
            return data
        train, val = held_out_split(data, self.options.val_fraction, self.options.seed)
        self.data = _one_dataset(val)
        return train

    def settings(self) -> dict[str, Any]:
        """What a resumed run must share with its checkpoint."""
        o = self.options
        return {
            "metric": self.metric,
            "every": o.val_every,
            "patience": o.patience,
            "fraction": o.val_fraction,
            "num_images": len(self.data) if self.data is not None else 0,  # type: ignore[arg-type]
        }

    def restore(self, ckpt: Path | None, log: Any, main: bool, precision: Precision) -> None:
        """Take the state of the checkpoint `ckpt`; on a fresh run (`ckpt` None) remove an
        earlier run's `best/` and `validation.csv`. `log` (the run log), `main` (whether
        this process writes files) and `precision` (the run's policy) serve `run`.

        Raises:
            TrainingConfigError: the checkpoint was written with other validation settings,
                or with validation on where it is off now (or the reverse).
        """
        self._log, self._main, self._precision = log, main, precision
        out = Path(self.options.out_dir)
        if ckpt is None:
            if main:
                shutil.rmtree(out / BEST_DIR, ignore_errors=True)
                (out / VALIDATION_CSV).unlink(missing_ok=True)
            return
        path = ckpt / VALIDATION_STATE_NAME
        if path.is_file() != self.enabled:
            was = "with" if path.is_file() else "without"
            raise TrainingConfigError(
                f"cannot resume from {ckpt}: it was written {was} validation during training; "
                "use the same validation options, or start over with --no-resume (resume=False)"
            )
        if not self.enabled:
            return
        state = json.loads(path.read_text(encoding="utf-8"))
        if state.get("settings") != self.settings():
            raise TrainingConfigError(
                f"cannot resume from {ckpt}: its validation settings {state.get('settings')} "
                f"differ from this run's {self.settings()}; start over with --no-resume"
            )
        self.history = list(state["history"])
        self.best, self.best_step = state["best"], state["best_step"]
        self.bad, self.stopped = int(state["bad"]), bool(state["stopped"])

    def save(self, folder: Path) -> None:
        """Write the state into the checkpoint folder being staged."""
        if self.enabled:
            state = {
                "format": "dgsnet.validation_state",
                "version": 1,
                "settings": self.settings(),
                "history": self.history,
                "best": self.best,
                "best_step": self.best_step,
                "bad": self.bad,
                "stopped": self.stopped,
            }
            atomic_write_json(folder / VALIDATION_STATE_NAME, state)

    def run(self, wrapper: DGSWrapper, step: int, epoch: int) -> dict[str, Any]:
        """Validate now (under a forked RNG, seeded from the run's seed); log the record,
        rewrite `validation.csv`, update `best/` on improvement, decide the early stop.
        Call `restore` first.

        Args:
            wrapper: the model being trained.
            step: the global stage-2 step.
            epoch: the epoch, counted from 1.

        Returns:
            The `"validation"` record written to the run log.
        """
        o, out = self.options, Path(self.options.out_dir)
        assert self.data is not None
        device = wrapper.device
        devices = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(derive_seed(o.seed, "validation"))
            metrics = validation_metrics(
                wrapper,
                self.data,
                batch_size=o.batch_size,
                num_workers=o.num_workers,
                precision=self._precision,
            )
        value = metrics[self.metric]
        improved = not math.isnan(value) and (self.best is None or value > self.best)
        if improved:
            self.best, self.best_step, self.bad = value, step, 0
        else:
            self.bad += 1
        self.stopped = bool(o.patience) and self.bad >= o.patience
        record = {"event": "validation", "step": step, "epoch": epoch, **metrics}
        record.update(metric=self.metric, best=self.best, improved=improved, stopped=self.stopped)
        self.history.append({k: v for k, v in record.items() if k != "event"})
        self._log.write(record)
        if self._main:
            if improved:
                tmp = staging_dir(out / BEST_DIR)
                save_model_dir(tmp, wrapper, o.model_info)
                atomic_write_json(tmp / "best.json", {k: v for k, v in record.items()})
                commit_dir(tmp, out / BEST_DIR)
            atomic_write_text(out / VALIDATION_CSV, self.csv_text())
        return record

    def csv_text(self) -> str:
        """`validation.csv`: one row per validation so far."""
        names = CLASS_METRICS if self.metric in CLASS_METRICS else BINARY_METRICS
        columns = ["step", "epoch", *names, "metric", "best", "improved", "stopped"]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, columns, lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        for row in self.history:
            writer.writerow(row)
        return buf.getvalue()


def _one_dataset(data: Dataset | Sequence[Dataset] | None) -> Dataset | None:
    if data is None or isinstance(data, Dataset):
        return data
    parts = list(data)
    return parts[0] if len(parts) == 1 else ConcatDataset(parts)
