"""The two reference gradients of the DGS step, as functions on tensors.

The harm reference is the text head's input gradient (Orthogonal Suppression projects the
student's feature gradient off its positive part); the help reference is the negative part of
the frozen teacher head's input gradient (Prior Alignment adds it). Both follow the DGS-Net
paper (arXiv 2511.13108) and the training step of the authors' released code.

Nothing here knows the wrapper: each function takes the head, the features or logits, the
labels and a `HeadLoss`, so the references can be computed, tested and reused on their own.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from ..errors import NonFiniteInputError
from .heads import HeadLoss

__all__ = ["guard_help", "help_reference", "text_reference"]


def text_reference(
    text_head: nn.Module, t: Tensor, y: Tensor, head_loss: HeadLoss, per_sample: bool
) -> tuple[Tensor, Tensor]:
    """The text head's loss and its input gradient, the harm reference: `(loss, g_text)`.

    The text head trains on the (detached) text features through `loss`.

    Args:
        text_head: the text head.
        t: `(B, D)` text features.
        y: `(B,)` labels, checked.
        head_loss: the heads' loss.
        per_sample: per-sample gradients (no `1/B`), the `"invariant"` scale.

    Returns:
        `(loss_text, g_text)`.
    """
    z_text = text_head(t)
    loss_text = head_loss(z_text, y)
    g_text = head_loss.input_grad(text_head, t, z_text, y, per_sample)
    return loss_text, g_text


def help_reference(
    teacher_head: nn.Module,
    f_teacher: Tensor | None,
    z_teacher: Tensor,
    y: Tensor,
    head_loss: HeadLoss,
    per_sample: bool,
    dtype: torch.dtype,
) -> Tensor:
    """The help reference: the negative part of the teacher head's input gradient.

    Args:
        teacher_head: the frozen teacher head.
        f_teacher: `(B, D)` teacher features (`None` only where the closed form applies).
        z_teacher: `(B, C)` teacher logits.
        y: `(B,)` labels, checked.
        head_loss: the heads' loss.
        per_sample: per-sample gradients (no `1/B`), the `"invariant"` scale.
        dtype: the dtype of the student's features, which the reference takes.

    Returns:
        `(B, D)` `min(g_img, 0)`.
    """
    g_img = head_loss.input_grad(teacher_head, f_teacher, z_teacher, y, per_sample)
    return g_img.clamp_max(0).to(dtype)


def guard_help(
    g_help: Tensor,
    nonfinite: str,
    inputs_ok: Tensor | None,
    raise_for_inputs: Callable[[], None],
) -> tuple[Tensor, Tensor | None]:
    """The non-finite policy for the help reference `g_help`.

    `nonfinite="ignore"`: rows with NaN/Inf become zero (no alignment for them).
    `"raise"`: one device sync reads the inputs' flag and the reference's; NaN/Inf in
    the inputs (reported by `raise_for_inputs`), else in the reference, raise
    `NonFiniteInputError`.

    Args:
        g_help: `(B, D)` help reference.
        nonfinite: `"raise"` or `"ignore"` (`DGSConfig.nonfinite`).
        inputs_ok: the inputs' finiteness flag not read yet, or `None` (already read).
        raise_for_inputs: raises `NonFiniteInputError` naming the non-finite inputs, and
            returns when they are finite.

    Returns:
        The reference, and `inputs_ok` (`None` once the flag has been checked here).

    Raises:
        NonFiniteInputError: NaN/Inf in the inputs or the reference, with `"raise"`.
    """
    finite = torch.isfinite(g_help)
    if nonfinite == "ignore":
        return g_help.masked_fill(~finite.all(-1, keepdim=True), 0.0), inputs_ok
    ok = finite.all() if inputs_ok is None else finite.all() & inputs_ok
    if not bool(ok):
        raise_for_inputs()  # the inputs, if they are the cause
        raise NonFiniteInputError(
            "the teacher's reference gradient contains NaN or Inf (check the teacher head "
            "and the inputs), or set DGSConfig(nonfinite='ignore')"
        )
    return g_help, None
