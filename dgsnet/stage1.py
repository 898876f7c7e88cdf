"""Stage 1 of DGS-Net: the teacher head as a linear probe on frozen teacher features.

`DGSWrapper.fit_teacher_head` calls `fit_teacher_head` here; the stage is described in the
DGS-Net paper (arXiv 2511.13108).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .caches import TeacherCache
from .progress import progress_bar
from .validation import unpack_stage1_batch

if TYPE_CHECKING:
    from .wrapper import DGSWrapper

__all__ = ["fit_teacher_head"]


def fit_teacher_head(
    wrapper: DGSWrapper,
    loader: Iterable[Any],
    epochs: int = 3,
    lr: float = 1e-4,
    *,
    betas: tuple[float, float] = (0.9, 0.999),
    progress: bool = False,
    cache_features: bool = True,
) -> list[float]:
    """Stage 1: train `wrapper.teacher_head` as a linear probe on frozen teacher features.

    The work of `DGSWrapper.fit_teacher_head`, which documents the arguments.

    Args:
        wrapper: the wrapper whose teacher head is trained.
        loader: the batches.
        epochs: passes over `loader`.
        lr: the Adam learning rate.
        betas: the Adam betas.
        progress: show a progress bar.
        cache_features: keep the first epoch's teacher features for the later ones.

    Returns:
        The mean loss of each epoch.

    Raises:
        ValueError: `epochs` or `lr` out of range, or a loader with no batches.
    """
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an int >= 1, got {epochs!r}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    head = wrapper.teacher_head
    head.requires_grad_(True)
    wrapper.teacher_cache.clear()
    opt = torch.optim.Adam(head.parameters(), lr=lr, betas=betas)
    feature_cache = TeacherCache()
    history: list[float] = []
    seen: list[Tensor] = []
    try:
        for epoch in range(epochs):
            total, count = 0.0, 0
            batches = progress_bar(
                loader,
                desc=f"stage 1 epoch {epoch + 1}/{epochs}",
                leave=False,
                enabled=progress,
            )
            for batch in batches:
                images, labels, index = unpack_stage1_batch(batch)
                n = wrapper._check_images(images)
                y = wrapper._check_labels(labels, n)
                index = wrapper._check_index(index, n)
                keep = index if cache_features else None  # the key of the feature cache
                feats = feature_cache.lookup(keep) if keep is not None else None
                if feats is None:
                    feats = wrapper.encode_teacher(images)
                    if keep is not None:
                        feature_cache.store(keep, feats)
                else:
                    feats = feats.to(wrapper.device)
                if epoch == 0 and index is not None:
                    seen.append(index.cpu())
                loss = wrapper._loss(head(feats), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * n
                count += n
            if count == 0:
                raise ValueError("fit_teacher_head: the loader yielded no batches")
            history.append(total / count)
    finally:
        head.requires_grad_(False)
    if seen and cache_features and wrapper.config.teacher_cache and wrapper._loss_kind is not None:
        _fill_teacher_cache(wrapper, feature_cache, torch.unique(torch.cat(seen)))
    return history


def _fill_teacher_cache(wrapper: DGSWrapper, feature_cache: TeacherCache, idx: Tensor) -> None:
    """The final teacher head's logits for the indices `idx` into `wrapper.teacher_cache`,
    from the teacher features kept in `feature_cache` (in chunks of 4096, no grad)."""
    head = wrapper.teacher_head
    with torch.no_grad():
        for chunk in idx.split(4096):
            rows = feature_cache.lookup(chunk)
            if rows is not None:
                wrapper.teacher_cache.store(chunk, head(rows.to(wrapper.device)))
