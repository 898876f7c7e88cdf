"""The item and batch types of the image datasets, and `collate` to batch them.

A dataset item is a `Sample` `(image, caption, label, subset, index, path)`; `collate`
turns a list of them into a `Batch` for a `DataLoader`, keeping the dataset `index` (the key
of teacher feature caches) and the subset names.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch

__all__ = ["Sample", "Batch", "collate"]


class Sample(NamedTuple):
    """One item of a dataset (a named tuple: unpacks positionally, fields by name)."""

    image: Any
    """the transformed image (a PIL image when the dataset has no transform)"""
    caption: str | None
    """the caption, or `None` when the dataset has no captions"""
    label: int
    """0 real, 1 fake"""
    subset: str
    """The subset (generator folder) the image belongs to."""
    index: int  # type: ignore[assignment]  # the field shadows tuple.index on purpose
    """position in the dataset it came from (stable across runs: a cache key)"""
    path: str
    """The image file."""


class Batch(NamedTuple):
    """What `collate` returns."""

    images: Any
    """`(B, C, H, W)` tensor when the images are equally sized tensors, else a list"""
    captions: list[str | None]
    """One caption per image, `None` where the dataset has none."""
    labels: torch.Tensor
    """`(B,)` int64, 0 real / 1 fake (`labels.float()` for a BCE loss)"""
    indices: torch.Tensor
    """`(B,)` int64 dataset indices"""
    subsets: list[str]
    """The subset of every image."""


def collate(batch: Sequence[Sample | tuple]) -> Batch:
    """Batch `Sample` items for a `DataLoader`.

    Returns `Batch` `(images, captions, labels, indices, subsets)`: images stacked
    into one tensor when they are tensors of one shape (a list otherwise, e.g. PIL images),
    captions and subsets as lists, labels and indices as int64 tensors.

    Args:
        batch: `Sample` items (or plain tuples of the same fields).

    Returns:
        The `Batch`.
    """
    if len(batch) == 0:
        raise ValueError("collate got an empty batch")
    samples = [b if isinstance(b, Sample) else Sample(*b) for b in batch]
    image_list = [s.image for s in samples]
    images: Any = image_list
    if all(isinstance(im, torch.Tensor) for im in image_list):
        shapes = {tuple(im.shape) for im in image_list}
        if len(shapes) > 1:
            raise ValueError(
                f"cannot stack images of different shapes {sorted(shapes)}: use a transform "
                "that outputs one size (e.g. the model's preprocess or PatchSelection)"
            )
        images = torch.stack(image_list)
    return Batch(
        images=images,
        captions=[s.caption for s in samples],
        labels=torch.tensor([int(s.label) for s in samples], dtype=torch.long),
        indices=torch.tensor([int(s.index) for s in samples], dtype=torch.long),
        subsets=[s.subset for s in samples],
    )
