"""Loading a trained detector and scoring / evaluating it on image folders.

* `resolve_checkpoint`: a checkpoint folder, or a training output folder's `final/`
  (else `last/`).
* `load_trained`: rebuild the base model from the spec stored beside the weights, then
  `DGSWrapper.from_pretrained`.
* `predict_scores` / `evaluate`: the student's probability of "fake" per image, and
  one `MetricsTable` per test root.
* `TrainedDetector`, what `load_trained` returns (it unpacks as `(wrapper, bundle)`), and
  its `predict_image`: one image in, a `Prediction` out, scored as `dgsnet predict`
  scores it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from .errors import CheckpointError, TrainingConfigError
from .metrics import ClassificationReport, MetricsTable
from .models import ModelBundle, ModelSpec, build_model
from .progress import progress_bar
from .training.data import iterate_loader
from .training.monitor import class_probabilities
from .training.options import check_int_at_least
from .training.precision import parse_precision
from .training.state import FINAL_DIR, LAST_DIR, MODEL_INFO_NAME, RUN_NAME
from .wrapper import CONFIG_NAME, DGSWrapper

__all__ = [
    "Prediction",
    "TrainedDetector",
    "class_probabilities",
    "evaluate",
    "load_trained",
    "evaluate_classifier",
    "predict_probabilities",
    "predict_scores",
    "resolve_checkpoint",
]


def resolve_checkpoint(path: str | os.PathLike[str]) -> Path:
    """A checkpoint folder (`dgs_config.json` inside), or a training output folder (its
    `final/`, else its `last/`); a `hf-hub:org/name[@revision]` id is first resolved to
    its local snapshot through huggingface_hub (`dgsnet.hub.resolve_checkpoint`)."""
    if os.fspath(path).startswith("hf-hub:"):
        from .wrapper.locate import resolve_checkpoint as resolve_hub

        path = resolve_hub(path)
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint {p} does not exist")
    if (p / CONFIG_NAME).is_file():
        return p
    for name in (FINAL_DIR, LAST_DIR, LAST_DIR + ".prev"):
        if (p / name / CONFIG_NAME).is_file():
            return p / name
    raise CheckpointError(
        f"{p} is neither a dgsnet checkpoint (no {CONFIG_NAME}) nor a training folder with "
        f"{FINAL_DIR}/ or {LAST_DIR}/"
    )


def _model_info(ckpt: Path) -> dict[str, Any] | None:
    for candidate in (ckpt / MODEL_INFO_NAME, ckpt.parent / RUN_NAME):
        if candidate.is_file():
            try:
                data = json.loads(candidate.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise CheckpointError(f"{candidate} is not valid JSON ({exc})") from exc
            info = data.get("model", data) if candidate.name == RUN_NAME else data
            if isinstance(info, dict) and info.get("spec"):
                return info
    return None


class Prediction(NamedTuple):
    """The prediction for one image (`TrainedDetector.predict_image`)."""

    score: float
    """Binary head: the probability of fake, `sigmoid(logit)`, the `score` column of `dgsnet
    predict`. Multi-class head: the probability of `label`."""
    label: int
    """Binary head: 1 (fake) when `score > threshold`, else 0 (real). Multi-class head: the
    most probable class."""
    probabilities: tuple[float, ...]
    """One probability per class: `(P(real), P(fake))` for a binary head, the softmax of the
    logits otherwise."""


class TrainedDetector(NamedTuple):
    """A trained detector, as `load_trained` returns it. It unpacks as `(wrapper, bundle)`
    and scores single images with `predict_image`.

    Examples:
        ```python
        from dgsnet.training import load_trained

        detector = load_trained("runs/dgs")
        print(detector.predict_image("photo.jpg").score)   # P(fake), as dgsnet predict
        wrapper, bundle = detector                          # the parts
        ```
    """

    wrapper: DGSWrapper
    """The trained wrapper, in eval mode."""
    bundle: ModelBundle
    """The base model's bundle; `bundle.eval_transform` preprocesses images."""

    def predict_image(
        self, image: Any, *, threshold: float = 0.5, precision: str = "fp32"
    ) -> Prediction:
        """Score one image with the student, as `dgsnet predict` scores it.

        A path is read as the command line reads it (`dgsnet.data.load_image`: every pixel
        format mapped to 8-bit RGB, a damaged file refused naming it); a PIL image is
        converted to RGB. Then the checkpoint's evaluation transform, the student's
        forward in eval mode under `precision`, and `class_probabilities`.

        Args:
            image: an image file path or a `PIL.Image.Image`.
            threshold: a binary head predicts fake iff `score > threshold`.
            precision: `"fp32"`, `"tf32"`, `"bf16"` or `"fp16"` (see `predict_scores`).

        Returns:
            The `Prediction`.

        Raises:
            CorruptImageError: the file cannot be read as an image.
            TypeError: `image` is neither a path nor a PIL image.
        """
        from PIL import Image

        from .data import load_image
        from .metrics import check_threshold
        from .training.precision import Precision

        t = check_threshold(threshold)
        if isinstance(image, Image.Image):
            img = image.convert("RGB")
        elif isinstance(image, (str, os.PathLike)):
            img = load_image(image)
        else:
            raise TypeError(
                f"predict_image expects an image path or a PIL image, got {type(image).__name__}"
            )
        wrapper = self.wrapper
        policy = Precision.parse(precision, wrapper.device)
        pixels = self.bundle.eval_transform(img).unsqueeze(0).to(wrapper.device)
        was_training = wrapper.training
        wrapper.eval()
        try:
            with torch.no_grad(), policy.activate(), policy.autocast():
                logits = wrapper.predict(pixels)
        finally:
            wrapper.train(was_training)
        probs = class_probabilities(logits)[0].tolist()
        if wrapper.config.num_classes > 1:
            label = max(range(len(probs)), key=probs.__getitem__)
            return Prediction(probs[label], label, tuple(probs))
        return Prediction(probs[1], int(probs[1] > t), tuple(probs))


def load_trained(
    path: str | os.PathLike[str],
    *,
    model: str | ModelSpec | None = None,
    device: str | torch.device = "cpu",
    transform: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> TrainedDetector:
    """Rebuild a trained detector: the base model from the spec stored beside the weights
    (`dgsnet_model.json`; or `model=`), then `DGSWrapper.from_pretrained`.

    Args:
        path: a run folder (its `final/`, else `last/`) or a checkpoint folder.
        model: the base model spec, for a checkpoint that does not record it.
        device: where to load the model.
        transform: `"model"` or `"patch-selection"` (default: what the checkpoint records).
        cache_dir: the weights cache of open_clip / Hugging Face.

    Returns:
        A `TrainedDetector`: unpacks as `(wrapper in eval mode, bundle)`, scores one image
        with `predict_image`; `bundle.eval_transform` preprocesses images.

    Raises:
        CheckpointError: the folder holds no checkpoint, or it records no base model and
            none is given.
    """
    ckpt = resolve_checkpoint(path)
    info = _model_info(ckpt) or {}
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
    wrapper.eval()
    return TrainedDetector(wrapper, bundle)


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
    progress bar counts images."""
    from .data import collate
    from .training.precision import Precision
    from .training.workers import bounded_workers

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
    # counted in images, so that the bar's rate reads as images per second
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
    from .data import open_dataset

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
            _EvalItems(ds),
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
            from .metrics import split_single_class

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
    from .data import Degrade, default_transform

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
    from .data import ClassFolder

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
            _EvalItems(ds),
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


class _EvalItems(Dataset):
    """A dataset whose corrupt images raise a one-argument `DatasetError` (so the
    error crosses DataLoader workers intact)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        from .errors import CorruptImageError, DatasetError

        try:
            return self.dataset[index]
        except CorruptImageError as exc:
            raise DatasetError(str(exc)) from exc
