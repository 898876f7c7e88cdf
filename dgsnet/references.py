"""The pieces of the DGS step around the surgery: the teacher's outputs and the references.

`DGSWrapper.forward` calls these; they read the wrapper's configuration, heads and caches.
The harm reference is the text head's input gradient, the help reference the negative part
of the teacher head's input gradient (DGS-Net, arXiv 2511.13108).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import torch
from torch import Tensor

from .errors import NonFiniteInputError
from .heads import input_grad

if TYPE_CHECKING:
    from .wrapper import DGSWrapper

__all__ = ["guard_help", "help_reference", "student_and_teacher", "text_reference"]


def student_and_teacher(
    wrapper: DGSWrapper, images: Tensor, index: Tensor | None, closed: bool, distill: bool
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """The student's features, and the teacher's features and logits where the step
    needs them: `(f, f_teacher, z_teacher)`.

    The teacher's logits come from the teacher cache when the closed-form heads only need
    those, else from a forward without grad (feature distillation needs the teacher's
    features, which the cache does not hold); fresh logits fill the cache.

    Args:
        wrapper: the wrapper taking the step.
        images: `(B, 3, H, W)` pixels, checked.
        index: `(B,)` dataset indices, or `None`.
        closed: the heads' reference gradients are taken in closed form.
        distill: feature distillation is on.

    Returns:
        `(f, f_teacher, z_teacher)`; the teacher's parts are `None` where not needed.
    """
    cfg = wrapper.config
    z_teacher = None
    if cfg.alignment and closed and cfg.teacher_cache and index is not None and not distill:
        cached = wrapper.teacher_cache.lookup(index)
        # a fresh host tensor of our own: the copy need not block (no device sync)
        z_teacher = cached.to(wrapper.device, non_blocking=True) if cached is not None else None
    need_teacher = distill or (cfg.alignment and z_teacher is None)
    f, f_teacher = wrapper._features(images, need_teacher)
    if f_teacher is not None and cfg.alignment:
        with torch.no_grad():
            z_teacher = wrapper.teacher_head(f_teacher)
        if closed and cfg.teacher_cache and index is not None:
            wrapper.teacher_cache.store(index, z_teacher)
    return f, f_teacher, z_teacher


def text_reference(
    wrapper: DGSWrapper, t: Tensor, y: Tensor, closed: bool, per_sample: bool
) -> tuple[Tensor, Tensor]:
    """The text head's loss and its input gradient, the harm reference: `(loss, g_text)`.

    The text head trains on detached text features.

    Args:
        wrapper: the wrapper taking the step.
        t: `(B, D)` text features.
        y: `(B,)` labels, checked.
        closed: take the gradient in closed form.
        per_sample: per-sample gradients (no `1/B`), the `"invariant"` scale.

    Returns:
        `(loss_text, g_text)`.
    """
    z_text = wrapper.text_head(t)
    loss_text = wrapper._loss(z_text, y)
    kind = wrapper._loss_kind
    g_text = input_grad(wrapper.text_head, t, z_text, y, kind, wrapper._loss, closed, per_sample)
    return loss_text, g_text


def help_reference(
    wrapper: DGSWrapper,
    f_teacher: Tensor | None,
    z_teacher: Tensor,
    y: Tensor,
    closed: bool,
    per_sample: bool,
    dtype: torch.dtype,
    inputs_ok: Tensor | None,
    images: Tensor,
    t: Tensor,
) -> tuple[Tensor, Tensor | None]:
    """The help reference, the negative part of the teacher head's input gradient.

    Args:
        wrapper: the wrapper taking the step.
        f_teacher: `(B, D)` teacher features (`None` only with closed-form heads).
        z_teacher: `(B, C)` teacher logits.
        y: `(B,)` labels, checked.
        closed: take the gradient in closed form.
        per_sample: per-sample gradients (no `1/B`), the `"invariant"` scale.
        dtype: the dtype of the student's features, which the reference takes.
        inputs_ok: the inputs' finiteness flag not read yet, or `None`.
        images: the step's images (for the error message).
        t: the step's text features (for the error message).

    Returns:
        `(g_help, inputs_ok)` as `guard_help` returns them.
    """
    kind = wrapper._loss_kind
    g_img = input_grad(
        wrapper.teacher_head, f_teacher, z_teacher, y, kind, wrapper._loss, closed, per_sample
    )
    g_help = g_img.clamp_max(0).to(dtype)
    return guard_help(wrapper, g_help, inputs_ok, images, t)


def guard_help(
    wrapper: DGSWrapper, g_help: Tensor, inputs_ok: Tensor | None, images: Tensor, t: Tensor
) -> tuple[Tensor, Tensor | None]:
    """The non-finite policy for the help reference `g_help`.

    `nonfinite="ignore"`: rows with NaN/Inf become zero (no alignment for them).
    `"raise"`: one device sync reads the inputs' flag and the reference's; NaN/Inf in
    the inputs, else in the reference, raise `NonFiniteInputError`.

    Args:
        wrapper: the wrapper taking the step.
        g_help: `(B, D)` help reference.
        inputs_ok: the inputs' finiteness flag not read yet, or `None`.
        images: the step's images.
        t: the step's text features.

    Returns:
        The reference, and `inputs_ok` (`None` once the flag has been checked here).

    Raises:
        NonFiniteInputError: NaN/Inf in the inputs or the reference, with `"raise"`.
    """
    if wrapper.config.nonfinite == "ignore":
        return g_help.masked_fill(~torch.isfinite(g_help).all(-1, keepdim=True), 0.0), inputs_ok
    if not bool(torch.isfinite(g_help).all() & cast(Tensor, inputs_ok)):
        wrapper._raise_nonfinite_inputs(images, t)  # the inputs, if they are the cause
        raise NonFiniteInputError(
            "the teacher's reference gradient contains NaN or Inf (check the teacher head "
            "and the inputs), or set DGSConfig(nonfinite='ignore')"
        )
    return g_help, None
