"""The teacher branch of the DGS step: the pre-fine-tuning image encoder and its head.

The teacher is the same weights with the LoRA adapters off (no copy), or a deep copy of the
encoder (`DGSConfig(teacher="copy")`). `TeacherBranch` computes its features (sharing the
frozen trunk below the first adapted block with the student where it can) and its head's
logits, through the per-index logit cache. `DGSWrapper.features` and `encode_teacher` call it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ..encoders import DualEncoder
from .caches import TeacherCache
from .lora import adapters_disabled, check_no_merge

__all__ = ["TeacherBranch", "copy_teacher"]


class TeacherBranch:
    """The frozen teacher's features and logits.

    Args:
        encoder: the student's dual encoder (LoRA inside).
        copy: a separate teacher encoder (`teacher="copy"`), or `None` for adapters off.
        post: what features go through (identity, or L2 normalisation).
        head: the teacher head (trained in stage 1, frozen in stage 2).
        cache: teacher logits by dataset index.
        trunk_start: the first adapted block (0: no trunk to share).
    """

    def __init__(
        self,
        encoder: DualEncoder,
        copy: DualEncoder | None,
        post: Callable[[Tensor], Tensor],
        head: nn.Module,
        cache: TeacherCache,
        trunk_start: int,
    ) -> None:
        self.encoder, self.copy, self.post = encoder, copy, post
        self.head, self.cache, self.trunk_start = head, cache, trunk_start

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """Teacher image features (adapters off, or the copy), no grad."""
        if self.copy is not None:
            return self.post(self.copy.encode_image_pooled(images))
        check_no_merge(self.encoder.image_tower)
        with adapters_disabled(self.encoder.image_tower):
            return self.post(self.encoder.encode_image_pooled(images))

    def features(
        self, images: Tensor, need_teacher: bool, shared_trunk: bool
    ) -> tuple[Tensor, Tensor | None]:
        """Student features (grad) and, if asked, teacher features (no grad), sharing the
        frozen trunk below the first adapted block when `shared_trunk` allows."""
        start, enc = self.trunk_start, self.encoder
        if need_teacher and shared_trunk and start > 0 and self.copy is None:
            try:
                with torch.no_grad():
                    hidden, state = enc.encode_image_split(images, start)
            except NotImplementedError:
                pass
            else:
                with torch.no_grad(), adapters_disabled(enc.image_tower):
                    pooled = enc.encode_image_from(hidden, state, start, pooled_only=True)
                    teacher = self.post(pooled)
                student = self.post(enc.encode_image_from(hidden, state, start))
                return student, teacher
        f_teacher = self.encode(images) if need_teacher else None
        return self.post(enc.encode_image(images)), f_teacher

    def cached_logits(self, index: Tensor | None, device: torch.device) -> Tensor | None:
        """The cached logits of `index` on `device`, or `None` when any is missing."""
        if index is None:
            return None
        cached = self.cache.lookup(index)
        # a fresh host tensor of our own: the copy need not block (no device sync)
        return cached.to(device, non_blocking=True) if cached is not None else None

    def logits(self, f_teacher: Tensor, index: Tensor | None, store: bool) -> Tensor:
        """The teacher head's logits on `f_teacher` (no grad), kept in the cache under
        `index` when `store`."""
        with torch.no_grad():
            z_teacher = self.head(f_teacher)
        if store and index is not None:
            self.cache.store(index, z_teacher)
        return z_teacher

    def for_step(
        self,
        images: Tensor | None,
        index: Tensor | None,
        *,
        student: bool,
        alignment: bool,
        distill: bool,
        use_cache: bool,
        shared_trunk: bool,
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        """`(f, f_teacher, z_teacher)` as a step needs them.

        The teacher's logits come from the cache when only those are needed (alignment with
        `use_cache`, no distillation), else its features from `images`, with the student's
        features `f` when `student` (sharing the trunk); fresh logits fill the cache.

        Args:
            images: the step's images, or `None` (`apply_surgery` without images).
            index: dataset indices, or `None`.
            student: compute the student's features too.
            alignment: Prior Alignment is on (the teacher's logits are needed).
            distill: feature distillation is on (the teacher's features are needed).
            use_cache: read and fill the logit cache.
            shared_trunk: let the teacher share the student's frozen trunk.

        Returns:
            `(f, f_teacher, z_teacher)`, each `None` where not computed.

        Raises:
            ValueError: the teacher is needed and `images` is `None`.
        """
        z_teacher = None
        if use_cache and not distill:  # distillation needs the teacher's features
            z_teacher = self.cached_logits(index, self.device)
        need = distill or (alignment and z_teacher is None)
        if images is None:
            if need:
                raise ValueError(
                    "apply_surgery needs the teacher's output: pass images= (the images the "
                    "features came from), or index= with the teacher cache filled "
                    "(fit_teacher_head with indices; not with feature distillation)"
                )
            return None, None, z_teacher
        f: Tensor | None = None
        if student:
            f, f_teacher = self.features(images, need, shared_trunk)
        else:
            f_teacher = self.encode(images) if need else None
        if f_teacher is not None and alignment:
            z_teacher = self.logits(f_teacher, index, store=use_cache)
        return f, f_teacher, z_teacher

    @property
    def device(self) -> torch.device:
        """The teacher head's device (the model's)."""
        return next(self.head.parameters()).device


def copy_teacher(encoder: DualEncoder, tokenizer: Any) -> tuple[nn.Module, DualEncoder]:
    """A frozen copy of the encoder's model (`DGSConfig(teacher="copy")`), and its adapter.

    Args:
        encoder: the student's adapter, before LoRA is attached.
        tokenizer: the tokenizer the adapter was built with.

    Returns:
        `(teacher model, its adapter)`.
    """
    teacher = copy.deepcopy(encoder.model).requires_grad_(False)
    return teacher, type(encoder)(teacher, tokenizer)


def find_trunk_start(lora_modules: list[str], block_pattern: str) -> int:
    """The first adapted block when every adapted module sits in a block (0: no sharing).

    Args:
        lora_modules: the adapted module names (relative to the image tower).
        block_pattern: the name of the tower's block list (e.g. `"resblocks"`).

    Returns:
        The index of the first adapted block, or 0.
    """
    starts = []
    for name in lora_modules:
        parts = name.split(".")
        if block_pattern not in parts or parts.index(block_pattern) + 1 >= len(parts):
            return 0
        starts.append(int(parts[parts.index(block_pattern) + 1]))
    return min(starts) if starts else 0
