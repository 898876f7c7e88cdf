"""Stage 1 of DGS-Net: the teacher head as a linear probe on frozen teacher features.

`DGSWrapper.fit_teacher_head` calls `fit_teacher_head` here; the stage is described in the
DGS-Net paper (arXiv 2511.13108). The function is typed against `Stage1Model`, the few
public members of the wrapper it uses, so it runs on anything that offers them.

The loader is taken as it is: see `Stage1Batch.read` for the batch forms it understands.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from ..progress import progress_bar
from .caches import TeacherCache
from .config import DGSConfig
from .heads import HeadLoss
from .validation import BatchChecker

__all__ = ["Stage1Batch", "Stage1Model", "fit_teacher_head"]

#: `batch_fn(batch) -> (images, labels)` or `(images, labels, index)`
BatchFn = Callable[[Any], Sequence[Any]]

_IMAGE_KEYS = ("images", "image", "img", "pixel_values", "x")
_LABEL_KEYS = ("labels", "label", "y", "target", "targets")
_INDEX_KEYS = ("index", "indices", "idx")


class Stage1Model(Protocol):
    """The members of a wrapper that stage 1 uses (`DGSWrapper` has them all)."""

    @property
    def config(self) -> DGSConfig: ...
    @property
    def teacher_head(self) -> nn.Module: ...
    @property
    def teacher_cache(self) -> TeacherCache: ...
    @property
    def head_loss(self) -> HeadLoss: ...
    @property
    def checker(self) -> BatchChecker: ...

    @property
    def device(self) -> torch.device: ...

    def encode_teacher(self, images: Tensor) -> Tensor: ...


@dataclass(frozen=True)
class Stage1Batch:
    """How stage 1 reads the batches of a user's loader.

    Forms understood by `read`, in this order:

    * with `batch_fn`: whatever it returns, `(images, labels)` or `(images, labels, index)`;
    * a mapping (a dict batch): images, labels and (optionally) index under `image_key`,
      `label_key`, `index_key`, or, when those are not given, under the first common name
      present (`images`/`image`/`img`/`pixel_values`/`x`, `labels`/`label`/`y`/`target`,
      `index`/`indices`/`idx`);
    * a named tuple with `images` and `labels` fields (dgsnet's own `Batch`, whose
      `indices` are used);
    * dgsnet's positional form `(images, captions, labels[, index, ...])`, recognised by its
      second entry being a list of caption strings;
    * any other tuple or list: `(images, labels, ...)`, extra entries ignored (e.g. the
      `(img, label)` or `(img, label, path)` batches of most detection codebases).

    Args:
        batch_fn: turns one batch into `(images, labels[, index])`.
        image_key: the key of the images in dict batches.
        label_key: the key of the labels in dict batches.
        index_key: the key of the dataset indices in dict batches.
    """

    batch_fn: BatchFn | None = None
    image_key: str | None = None
    label_key: str | None = None
    index_key: str | None = None

    def read(self, batch: Any) -> tuple[Any, Any, Any]:
        """`(images, labels, index or None)` from one batch (see the class docstring).

        Raises:
            ValueError: a form that is none of the above, or a dict without the keys.
        """
        if self.batch_fn is not None:
            return self._from_fn(batch)
        if isinstance(batch, Mapping):
            return self._from_mapping(batch)
        fields = getattr(batch, "_fields", None)
        if isinstance(batch, tuple) and fields and "images" in fields and "labels" in fields:
            index = next((getattr(batch, k) for k in _INDEX_KEYS if k in fields), None)
            return batch.images, batch.labels, index  # type: ignore[attr-defined]
        if isinstance(batch, (tuple, list)) and len(batch) >= 2:
            if len(batch) >= 3 and _is_caption_list(batch[1]):  # (images, captions, labels, ...)
                index = batch[3] if len(batch) >= 4 and isinstance(batch[3], Tensor) else None
                return batch[0], batch[2], index
            return batch[0], batch[1], None
        raise ValueError(
            "stage 1 expects batches (images, labels, ...), a dict with image and label keys, "
            f"or a batch_fn that turns a batch into (images, labels); got {type(batch).__name__}"
            + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else "")
        )

    def _from_fn(self, batch: Any) -> tuple[Any, Any, Any]:
        assert self.batch_fn is not None
        out = self.batch_fn(batch)
        if not isinstance(out, (tuple, list)) or len(out) not in (2, 3):
            raise ValueError(
                "batch_fn must return (images, labels) or (images, labels, index), got "
                f"{type(out).__name__}"
                + (f" of length {len(out)}" if hasattr(out, "__len__") else "")
            )
        return out[0], out[1], out[2] if len(out) == 3 else None

    def _from_mapping(self, batch: Mapping[Any, Any]) -> tuple[Any, Any, Any]:
        def pick(key: str | None, names: tuple[str, ...], what: str, required: bool) -> Any:
            if key is not None:
                if key not in batch:
                    raise ValueError(
                        f"the stage-1 batch has no {what} key {key!r}; its keys: {sorted(batch)}"
                    )
                return batch[key]
            for name in names:
                if name in batch:
                    return batch[name]
            if required:
                arg = {"images": "image_key", "labels": "label_key"}[what]
                raise ValueError(
                    f"the stage-1 batch dict has no {what} under a common name {list(names)}; "
                    f"its keys: {sorted(batch)}. Name the key: fit_teacher_head(..., {arg}=...)"
                )
            return None

        images = pick(self.image_key, _IMAGE_KEYS, "images", True)
        labels = pick(self.label_key, _LABEL_KEYS, "labels", True)
        return images, labels, pick(self.index_key, _INDEX_KEYS, "index", False)


def _is_caption_list(value: Any) -> bool:
    """A list of captions (strings, or `None` for an image without one): never labels."""
    return (
        isinstance(value, (list, tuple))
        and len(value) > 0
        and all(isinstance(c, str) or c is None for c in value)
    )


def _check_loader(loader: Iterable[Any], epochs: int) -> None:
    if not isinstance(loader, Iterable):
        raise TypeError(f"loader must be an iterable of batches, got {type(loader).__name__}")
    if epochs > 1 and iter(loader) is loader:
        raise ValueError(
            f"stage 1 runs {epochs} epochs, but the loader is a one-shot iterator "
            f"({type(loader).__name__}) that would be empty after the first: pass a re-iterable "
            "loader (a DataLoader, a list, or an object whose __iter__ starts a new pass), "
            "or epochs=1"
        )


def fit_teacher_head(
    model: Stage1Model,
    loader: Iterable[Any],
    epochs: int = 3,
    lr: float = 1e-4,
    *,
    betas: tuple[float, float] = (0.9, 0.999),
    progress: bool = False,
    cache_features: bool = True,
    reader: Stage1Batch | None = None,
) -> list[float]:
    """Stage 1: train `model.teacher_head` as a linear probe on frozen teacher features.

    The work of `DGSWrapper.fit_teacher_head`, which documents the arguments. Images and
    labels are moved to the model's device; with dataset indices the first epoch's teacher
    features are kept (on the CPU) for the later epochs, and the final head's logits fill the
    teacher cache that stage 2 reads.

    Args:
        model: the wrapper (anything with `Stage1Model`'s members).
        loader: the batches, re-iterable when `epochs > 1`.
        epochs: passes over `loader`.
        lr: the Adam learning rate.
        betas: the Adam betas.
        progress: show a progress bar.
        cache_features: keep the first epoch's teacher features for the later ones.
        reader: how batches are read (`Stage1Batch()` when `None`).

    Returns:
        The mean loss of each epoch.

    Raises:
        ValueError: `epochs` or `lr` out of range, a one-shot iterator with `epochs > 1`, a
            batch of an unknown form, or a loader with no batches.
    """
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
        raise ValueError(f"epochs must be an int >= 1, got {epochs!r}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    _check_loader(loader, epochs)
    reader = reader if reader is not None else Stage1Batch()
    head = model.teacher_head
    head.requires_grad_(True)
    model.teacher_cache.clear()
    opt = torch.optim.Adam(head.parameters(), lr=lr, betas=betas)
    feature_cache = TeacherCache()
    history: list[float] = []
    seen: list[Tensor] = []
    try:
        for epoch in range(epochs):
            total, count = 0.0, 0
            batches = progress_bar(
                loader, desc=f"stage 1 epoch {epoch + 1}/{epochs}", leave=False, enabled=progress
            )
            for batch in batches:
                loss, n, index = _probe_step(model, reader, batch, feature_cache, cache_features)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if epoch == 0 and index is not None:
                    seen.append(index.cpu())
                total += float(loss.detach()) * n
                count += n
            if count == 0:
                raise ValueError(
                    f"fit_teacher_head: the loader yielded no batches in epoch {epoch + 1}"
                )
            history.append(total / count)
    finally:
        head.requires_grad_(False)
    fill = seen and cache_features and model.config.teacher_cache
    if fill and not model.head_loss.custom:
        _fill_teacher_cache(model, feature_cache, torch.unique(torch.cat(seen)))
    return history


def _probe_step(
    model: Stage1Model,
    reader: Stage1Batch,
    batch: Any,
    feature_cache: TeacherCache,
    cache_features: bool,
) -> tuple[Tensor, int, Tensor | None]:
    """The probe's loss on one batch: `(loss, batch size, index or None)`."""
    images, labels, index = reader.read(batch)
    if isinstance(images, Tensor) and images.device != model.device:
        images = images.to(model.device, non_blocking=True)
    n = model.checker.images(images)
    y = model.checker.labels(labels, n)
    index = model.checker.index(index, n)
    keep = index if cache_features else None  # the key of the feature cache
    feats = feature_cache.lookup(keep) if keep is not None else None
    if feats is None:
        feats = model.encode_teacher(images)
        if keep is not None:
            feature_cache.store(keep, feats)
    else:
        feats = feats.to(model.device)
    return model.head_loss(model.teacher_head(feats), y), n, index


def _fill_teacher_cache(model: Stage1Model, feature_cache: TeacherCache, idx: Tensor) -> None:
    """The final teacher head's logits for the indices `idx` into `model.teacher_cache`,
    from the teacher features kept in `feature_cache` (in chunks of 4096, no grad)."""
    head = model.teacher_head
    with torch.no_grad():
        for chunk in idx.split(4096):
            rows = feature_cache.lookup(chunk)
            if rows is not None:
                model.teacher_cache.store(chunk, head(rows.to(model.device)))
