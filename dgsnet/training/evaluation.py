"""Loading a trained detector and scoring / evaluating it on image folders.

* `resolve_checkpoint` (from `dgsnet.training.run_folder`): a checkpoint folder, or a
  training output folder's `final/` (else `last/`).
* `load_trained`: rebuild the base model from the spec stored beside the weights, then
  `DGSWrapper.from_pretrained`.
* `predict_scores` / `evaluate`: the student's probability of "fake" per image, and
  one `MetricsTable` per test root.
* `TrainedDetector`, what `load_trained` returns (it unpacks as `(wrapper, bundle)`), and
  its `predict_image`: one image in, a `Prediction` out, scored as `dgsnet predict`
  scores it; a model with more than one class is scored with `predict_probabilities` and
  `evaluate_classifier` (top-1 and per-class accuracy), never as a detector.
* `EvalItems` / `ImageFiles`: the items scored, from a dataset or from image files, with
  errors that keep their type across DataLoader workers (`dgsnet predict` scores these).

This module sits below the trainer in the training package (the trainer never needs it), and
`dgsnet.evaluation` re-exports its names.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ..data import Degrade, Sample, collate, default_transform, load_image, open_dataset
from ..errors import CheckpointError, CorruptImageError, DatasetError, TrainingConfigError
from ..metrics import ClassificationReport, MetricsTable, split_single_class
from ..models import ModelBundle, ModelSpec, build_model
from ..progress import progress_bar
from ..wrapper import DGSWrapper
from ..wrapper.checkpoint import MODEL_INFO_NAME
from .data import iterate_loader
from .detector import Prediction, TrainedDetector
from .lock import RunLock
from .monitor import class_probabilities
from .options import check_int_at_least
from .precision import Precision, parse_precision
from .run_folder import FINAL_DIR, recorded_model_info, resolve_checkpoint, stage1_result
from .workers import bounded_workers

__all__ = [
    "EvalItems",
    "ImageFiles",
    "Prediction",
    "TrainedDetector",
    "class_probabilities",
    "evaluate",
    "evaluate_classifier",
    "load_trained",
    "predict_probabilities",
    "predict_scores",
    "resolve_checkpoint",
    "stage1_result",
]


def load_trained(
    path: str | os.PathLike[str],
    *,
    model: str | ModelSpec | None = None,
    device: str | torch.device = "cpu",
    transform: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> TrainedDetector:
    """Rebuild a trained detector: the base model from the spec stored beside the weights
    (`dgsnet_model.json`; or `model=`), then `DGSWrapper.from_pretrained`. Returns a
    `TrainedDetector`: it unpacks as `(wrapper in eval mode, bundle)` and scores one image
    with `predict_image`; `bundle.eval_transform` preprocesses images.

    A stage-1 result (`stage1_result`) is scored with its teacher head. A checkpoint that a
    training run (one that holds the folder's run lock) replaced while it was read, as it
    replaces `last/` at every checkpoint, is read again once; when that fails too, the
    `CheckpointError` says the checkpoint is being written and by which process."""
    for attempt in (1, 2):
        ckpt = resolve_checkpoint(path)
        try:
            return TrainedDetector(*_load_trained(ckpt, model, device, transform, cache_dir))
        except (CheckpointError, OSError) as exc:
            writer = RunLock(ckpt.parent).holder()
            if writer is None:
                raise
            if attempt == 2:
                raise CheckpointError(
                    f"{ckpt} is being written: the training run in {ckpt.parent} ({writer}) "
                    "replaced it while it was read, twice. Read it again in a moment, or "
                    f"{ckpt.parent / FINAL_DIR} once the run has ended"
                ) from exc
            time.sleep(_REREAD_DELAY_S)
    raise AssertionError("unreachable")  # pragma: no cover


#: the pause before reading a checkpoint again that a running training replaced meanwhile
_REREAD_DELAY_S = 0.2


def _load_trained(
    ckpt: Path,
    model: str | ModelSpec | None,
    device: str | torch.device,
    transform: str | None,
    cache_dir: str | os.PathLike[str] | None,
) -> tuple[DGSWrapper, ModelBundle]:
    info = recorded_model_info(ckpt) or {}
    spec = model if model is not None else info.get("spec")
    if model is None and isinstance(spec, str) and spec.startswith("local-dir:"):
        # a folder recorded relative to the checkpoint (dgsnet.interop's run folders)
        spec = "local-dir:" + os.fspath(ckpt / spec[len("local-dir:") :])
    if spec is None:
        raise CheckpointError(
            f"{ckpt} does not record which base model it was trained from (no {MODEL_INFO_NAME}); "
            "pass the model spec (--model, e.g. ViT-L-14@openai)"
        )
    bundle = build_model(
        spec,
        transform=transform or info.get("transform", "model"),
        flip=False,
        device=device,
        cache_dir=cache_dir,
    )
    wrapper = DGSWrapper.from_pretrained(ckpt, bundle.model, bundle.tokenizer)
    reason = stage1_result(ckpt)
    if reason is not None:
        _score_with_teacher_head(wrapper, ckpt, reason)
    wrapper.eval()
    return wrapper, bundle


def _score_with_teacher_head(wrapper: DGSWrapper, ckpt: Path, reason: str) -> None:
    """Make `wrapper.predict` score with the teacher head, the one head stage 1 trains.

    With every LoRA `B` zero the student's features are the teacher's, so the teacher head
    copied into the image head's place scores exactly as it does on the teacher. LoRA
    factors that are not zero came from an earlier stage 2 (`--init-from`), which trained
    the image head with them: nothing changes then."""
    if any(
        bool(p.detach().count_nonzero())
        for n, p in wrapper.named_trainable_parameters()
        if ".lora_B." in n
    ):
        return
    image, teacher = wrapper.image_head, wrapper.teacher_head
    if type(image) is not nn.Linear or image.weight.shape != teacher.weight.shape:
        raise CheckpointError(
            f"{ckpt} is a stage-1 result ({reason}): only its teacher head was trained, and "
            f"the image head ({type(image).__name__}) cannot take its place to score with it"
        )
    with torch.no_grad():
        image.weight.copy_(teacher.weight)
        image.bias.copy_(teacher.bias)
    warnings.warn(
        f"{ckpt} is a stage-1 result ({reason}): scoring with its teacher head, the linear "
        "probe stage 1 trains on the frozen CLIP features (the image head is untrained)",
        UserWarning,
        stacklevel=3,
    )


def predict_probabilities(
    wrapper: DGSWrapper,
    dataset: Dataset,
    *,
    batch_size: int = 64,
    num_workers: int = 0,
    progress: bool = False,
    desc: str = "predicting",
    precision: str = "fp32",
) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """Per-class probabilities of every item of a `dgsnet.data.Sample` dataset with the
    student (`class_probabilities` of its logits); returns `(probabilities (N, C), labels,
    subsets, paths)` in dataset order. A binary head gives `C = 2` columns,
    `(P(real), P(fake))`.

    `precision`: `"fp32"` (default), `"tf32"`, `"bf16"` or `"fp16"` (see
    `dgsnet.training.precision`): the TF32 flags during the call (restored afterwards)
    and the autocast dtype of the forward passes; probabilities are computed from float32
    logits. On CUDA the loader pins memory and copies batches without blocking. The
    progress bar counts images (its rate is images per second)."""
    policy = Precision.parse(precision, wrapper.device)
    on_cuda = wrapper.device.type == "cuda"

    def collate_keep_paths(samples: Sequence[Any]) -> tuple[Any, list[str]]:
        return collate(samples), [s.path for s in samples]

    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=bounded_workers(num_workers, len(dataset), batch_size),  # type: ignore[arg-type]
        collate_fn=collate_keep_paths,
        pin_memory=on_cuda,
    )
    was_training = wrapper.training
    wrapper.eval()
    probs, labels, subsets, paths = [], [], [], []
    bar = progress_bar(total=len(dataset), desc=desc, unit="img", enabled=progress)  # type: ignore[arg-type]
    try:
        with torch.no_grad(), policy.activate():
            for batch, batch_paths in iterate_loader(loader):
                with policy.autocast():
                    logits = wrapper.predict(batch.images.to(wrapper.device, non_blocking=on_cuda))
                probs.append(class_probabilities(logits).cpu().numpy().astype(np.float64))
                labels.append(batch.labels.numpy())
                subsets.extend(batch.subsets)
                paths.extend(batch_paths)
                bar.update(len(batch_paths))
    finally:
        bar.close()
        wrapper.train(was_training)
    if not probs:
        k = max(2, wrapper.config.num_classes)
        return np.zeros((0, k)), np.zeros(0, dtype=np.int64), [], []
    return np.concatenate(probs), np.concatenate(labels), subsets, paths


def _require_binary(wrapper: DGSWrapper, what: str, instead: str) -> None:
    k = wrapper.config.num_classes
    if k > 1:
        raise TrainingConfigError(
            f"{what} is for a binary real/fake head (num_classes=1, the probability of fake); "
            f"this model has {k} classes, whose class-1 probability is no probability of "
            f"fake: use {instead}"
        )


def predict_scores(
    wrapper: DGSWrapper,
    dataset: Dataset,
    *,
    batch_size: int = 64,
    num_workers: int = 0,
    progress: bool = False,
    desc: str = "predicting",
    precision: str = "fp32",
) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """Scores (probability of fake) of every item of a `dgsnet.data.Sample` dataset
    with a binary student; returns `(scores, labels, subsets, paths)` in dataset order.
    Arguments as for `predict_probabilities`.

    Raises:
        TrainingConfigError: the head has more than one logit (use `predict_probabilities`).
    """
    _require_binary(wrapper, "predict_scores", "predict_probabilities")
    probs, labels, subsets, paths = predict_probabilities(
        wrapper,
        dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        progress=progress,
        desc=desc,
        precision=precision,
    )
    return probs[:, 1], labels, subsets, paths


def evaluate(
    wrapper: DGSWrapper,
    roots: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    transform: Callable[[Any], Tensor] | None = None,
    *,
    jpeg_quality: int | None = None,
    blur_sigma: float | None = None,
    resize_scale: float | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    subsets: Sequence[str] | None = None,
    split: str = "val",
    threshold: float = 0.5,
    progress: bool = False,
    precision: str = "fp32",
    single_class: dict[str, dict[str, Any]] | None = None,
) -> dict[str, MetricsTable]:
    """Evaluate the student on each test root; returns `{root: MetricsTable}` (one row per
    subset, plus the mean row when printed), in the order given.

    `transform`: the model's deterministic preprocessing (e.g. `bundle.preprocess` or
    `bundle.eval_transform`; default: CLIP preprocessing at the model's image size).
    `jpeg_quality` / `blur_sigma` / `resize_scale`: `dgsnet.data.Degrade` applied
    to every image before it (robustness tables). `precision`: as in
    `predict_scores` (checked before any image is read). Roots use the detection layout
    `<root>/<subset>[/<category>]/{0_real,1_fake}` or GenImage's (`split`).
    `single_class`: a dict to fill; when given, subsets with one class are allowed and get
    a `dgsnet.metrics.SingleClassRow` (r_acc or f_acc only) in
    `single_class[root][subset]` instead of a table row (a root left with no two-class
    subset has no table).

    Raises:
        TrainingConfigError: no root, a bad option, or a head with more than one logit (a
            classifier: use `evaluate_classifier`).
    """
    _require_binary(wrapper, "evaluate", "evaluate_classifier")
    roots, tf = _eval_setup(
        wrapper, roots, transform, batch_size, precision, jpeg_quality, blur_sigma, resize_scale
    )
    tables: dict[str, MetricsTable] = {}
    for root in roots:
        kwargs: dict[str, Any] = {"transform": tf}
        if subsets:
            kwargs["subsets"] = list(subsets)
        kwargs["split"] = split  # open_dataset checks it
        if single_class is not None:
            kwargs["allow_single_class"] = True
        ds = open_dataset(root, **kwargs)
        key = os.fspath(root)
        scores, labels, names, _ = predict_scores(
            wrapper,
            EvalItems(ds),
            batch_size=batch_size,
            num_workers=num_workers,
            progress=progress,
            desc=f"evaluating {Path(key).name}",
            precision=precision,
        )
        preds: dict[str, tuple[list[int], list[float]]] = {}
        for s, y, name in zip(scores.tolist(), labels.tolist(), names, strict=True):
            ys, ss = preds.setdefault(name, ([], []))
            ys.append(int(y))
            ss.append(float(s))
        if single_class is not None:
            preds, single = split_single_class(preds, threshold)  # type: ignore[assignment]
            if single:
                single_class[key] = dict(single)
            if not preds:
                continue
        tables[key] = MetricsTable.from_predictions(preds, threshold=threshold)
    return tables


def _eval_setup(
    wrapper: DGSWrapper,
    roots: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    transform: Callable[[Any], Tensor] | None,
    batch_size: int,
    precision: str,
    jpeg_quality: int | None,
    blur_sigma: float | None,
    resize_scale: float | None,
) -> tuple[list[str | os.PathLike[str]], Callable[[Any], Tensor]]:
    """The roots as a list and the evaluation transform, every option checked first."""
    roots = [roots] if isinstance(roots, (str, os.PathLike)) else list(roots)
    if not roots:
        raise TrainingConfigError("evaluation needs at least one test root")
    check_int_at_least("batch_size", batch_size)
    parse_precision(precision)
    degrade = Degrade(jpeg_quality=jpeg_quality, blur_sigma=blur_sigma, resize_scale=resize_scale)
    if transform is None:
        size = wrapper.encoder.image_size
        transform = default_transform(None, image_size=size[0] if size else 224)
    return roots, default_transform(transform, train=False, degrade=degrade)


def evaluate_classifier(
    wrapper: DGSWrapper,
    roots: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    transform: Callable[[Any], Tensor] | None = None,
    *,
    classes: Sequence[str] | None = None,
    jpeg_quality: int | None = None,
    blur_sigma: float | None = None,
    resize_scale: float | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    progress: bool = False,
    precision: str = "fp32",
) -> dict[str, ClassificationReport]:
    """Evaluate a student with `num_classes > 1` logits on class folders; returns
    `{root: ClassificationReport}` (top-1 and per-class accuracy), in the order given.

    Each root holds one folder per class (`dgsnet.data.ClassFolder`); the prediction of an
    image is its most probable class. The labels are the positions of the class names in
    `classes`, by default the root's class folders sorted by name, the order
    `ClassFolder` gives the training set: their number must equal the model's
    `num_classes`. Other arguments as for `evaluate`.

    Raises:
        TrainingConfigError: a binary head (use `evaluate`), no root, a bad option, or a
            root whose classes do not match the model's number of classes.
        DatasetError: a root that is not a class-folder layout.
    """
    from ..data import ClassFolder

    k = wrapper.config.num_classes
    if k < 2:
        raise TrainingConfigError(
            "evaluate_classifier is for heads with num_classes > 1; this model has one "
            "logit (a binary real/fake head): use evaluate"
        )
    roots, tf = _eval_setup(
        wrapper, roots, transform, batch_size, precision, jpeg_quality, blur_sigma, resize_scale
    )
    reports: dict[str, ClassificationReport] = {}
    for root in roots:
        ds = ClassFolder(root, transform=tf, classes=classes)
        if len(ds.classes) != k:
            raise TrainingConfigError(
                f"{os.fspath(root)} has {len(ds.classes)} classes ({', '.join(ds.classes)}), "
                f"the model {k}: give the training classes in label order (classes=, "
                "dgsnet eval --classes)"
            )
        probs, labels, _, _ = predict_probabilities(
            wrapper,
            EvalItems(ds),
            batch_size=batch_size,
            num_workers=num_workers,
            progress=progress,
            desc=f"evaluating {Path(os.fspath(root)).name}",
            precision=precision,
        )
        reports[os.fspath(root)] = ClassificationReport.from_predictions(
            labels, probs.argmax(axis=1), ds.classes
        )
    return reports


class EvalItems(Dataset):
    """The items of `dataset`, with a corrupt image raised as a one-argument `DatasetError`
    (naming the file), so that the error crosses DataLoader workers intact.

    Args:
        dataset: a dataset of `dgsnet.data.Sample` items.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        try:
            return self.dataset[index]
        except CorruptImageError as exc:
            raise DatasetError(str(exc)) from exc


class ImageFiles(Dataset):
    """Image files given by path as `dgsnet.data.Sample` items to score (label 0, no
    caption, no subset), in the order given. Wrap it in `EvalItems` for a loader with
    workers (`dgsnet predict` does).

    Args:
        paths: the image files.
        transform: the model's preprocessing of a PIL image (e.g. `bundle.eval_transform`).

    Raises:
        CorruptImageError: (on indexing) the file cannot be decoded.
    """

    def __init__(self, paths: Sequence[str], transform: Callable[[Any], Tensor]) -> None:
        self.paths, self.transform = list(paths), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Any:
        image = load_image(self.paths[index])
        return Sample(self.transform(image), None, 0, "", index, self.paths[index])
