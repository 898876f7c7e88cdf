r"""Classification losses of the three heads, and their input gradients in closed form.

For a linear head $z = W x + b$ and a mean-reduced loss over $B$ samples, the gradient of
the loss with respect to the head's input is $\partial L / \partial x_b =
(\partial L / \partial z_b)\, W$ with

* BCE with logits (one logit): $\partial L / \partial z_b = (\sigma(z_b) - y_b) / B$;
* cross-entropy ($C$ logits): $\partial L / \partial z_b =
  (\mathrm{softmax}(z_b) - \mathrm{onehot}(y_b)) / B$.

So the DGS reference gradients need no backward pass: the text head's harmful direction is
fixed by the label and the head's weights, and the teacher contributes its logits (one scalar
per sample for binary detection). `input_grad` falls back to autograd for any other head or
loss.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import EncoderError

__all__ = [
    "HeadLoss",
    "LossFn",
    "classification_loss",
    "linear_input_grad",
    "autograd_input_grad",
    "check_image_head",
    "input_grad",
]

#: A loss `loss_fn(logits, labels) -> scalar tensor`.
LossFn = Callable[[Tensor, Tensor], Tensor]


def classification_loss(logits: Tensor, labels: Tensor, kind: str) -> Tensor:
    """Mean-reduced BCE with logits (one logit) or cross-entropy (`C` logits).

    Args:
        logits: `(B, 1)` or `(B,)` logits for `"bce"`, `(B, C)` for `"ce"`.
        labels: `(B,)` labels, 0/1 for `"bce"`, class indices for `"ce"`.
        kind: `"bce"` or `"ce"`.

    Returns:
        The scalar loss.
    """
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype).view_as(logits))
    return F.cross_entropy(logits, labels.long())


def linear_input_grad(
    head: nn.Linear, logits: Tensor, labels: Tensor, kind: str, per_sample: bool = False
) -> Tensor:
    """The gradient of the loss with respect to a linear head's input, in closed form.

    See the module docstring for the formulas.

    Args:
        head: the linear head.
        logits: the head's output on the batch (detached here).
        labels: `(B,)` labels.
        kind: `"bce"` or `"ce"`.
        per_sample: drop the `1/B` of the mean reduction, so that each row is the gradient
            of that sample's own loss, independent of the batch size.

    Returns:
        A `(B, D)` tensor, `D` the head's input size.
    """
    logits = logits.detach()
    if kind == "bce":
        dz = torch.sigmoid(logits) - labels.to(logits.dtype).view_as(logits)
        if not per_sample:
            dz = dz / logits.numel()
    else:
        onehot = F.one_hot(labels.long(), logits.shape[-1]).to(logits.dtype)
        dz = torch.softmax(logits, dim=-1) - onehot
        if not per_sample:
            dz = dz / logits.shape[0]
    return dz @ head.weight.detach().to(dz.dtype)


def autograd_input_grad(
    head: nn.Module, features: Tensor, labels: Tensor, loss_fn: LossFn
) -> Tensor:
    """The gradient of `loss_fn(head(x), labels)` with respect to `x`, by autograd.

    Only the head is differentiated: `x` is detached from whatever produced it.

    Args:
        head: any head module.
        features: its input `x`.
        labels: the labels `loss_fn` takes.
        loss_fn: a mean- or sum-reduced loss `loss_fn(logits, labels)`.

    Returns:
        A tensor shaped like `features`.
    """
    x = features.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = loss_fn(head(x), labels)
        (grad,) = torch.autograd.grad(loss, x)
    return grad


def input_grad(
    head: nn.Module,
    features: Tensor | None,
    logits: Tensor | None,
    labels: Tensor,
    kind: str | None,
    loss_fn: LossFn,
    closed_form: bool = True,
    per_sample: bool = False,
) -> Tensor:
    """The head's input gradient: in closed form where possible, by autograd otherwise.

    The closed form is used when `closed_form` is true, the head is exactly `nn.Linear`, the
    loss is a built-in one (`kind` set) and `logits` are given.

    Args:
        head: the head.
        features: the head's input; needed by the autograd path.
        logits: the head's output; needed by the closed form.
        labels: `(B,)` labels.
        kind: `"bce"`, `"ce"`, or `None` for a custom `loss_fn`.
        loss_fn: the loss, used by the autograd path.
        closed_form: allow the closed form.
        per_sample: remove the mean's `1/B` (the autograd path assumes a mean-reduced loss).

    Returns:
        A `(B, D)` tensor.

    Raises:
        ValueError: the autograd path is needed and `features` is `None`.
    """
    if closed_form and kind is not None and type(head) is nn.Linear and logits is not None:
        return linear_input_grad(head, logits, labels, kind, per_sample)
    if features is None:
        raise ValueError("the input gradient of this head/loss needs the features (no closed form)")
    grad = autograd_input_grad(head, features, labels, loss_fn)
    return grad * features.shape[0] if per_sample else grad


@dataclass(frozen=True)
class HeadLoss:
    """The loss of the wrapper's heads, and their input gradients.

    One object answers both questions the DGS step asks of a head: its loss on a batch
    (`head_loss(logits, labels)`), and the gradient of that loss with respect to the head's
    input (`input_grad`), in closed form where the head is an `nn.Linear` and the loss a
    built-in one, by autograd on the head otherwise.

    Args:
        kind: `"bce"` or `"ce"` for the built-in losses, `None` for a custom `loss_fn`.
        loss_fn: a custom loss `loss_fn(logits, labels) -> scalar` (with `kind=None`).
        closed_form: allow the closed form for linear heads.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> head, loss = nn.Linear(4, 1), HeadLoss("bce")
        >>> x, y = torch.randn(3, 4), torch.tensor([0, 1, 1])
        >>> loss.input_grad(head, x, head(x), y).shape
        torch.Size([3, 4])
    """

    kind: Literal["bce", "ce"] | None
    loss_fn: LossFn | None = None
    closed_form: bool = True

    def __post_init__(self) -> None:
        if (self.kind is None) == (self.loss_fn is None):
            raise ValueError("HeadLoss needs exactly one of kind ('bce'/'ce') and loss_fn")

    @property
    def custom(self) -> bool:
        """True for a user's `loss_fn` (labels are then passed to it as they are)."""
        return self.loss_fn is not None

    def __call__(self, logits: Tensor, labels: Tensor) -> Tensor:
        """The scalar loss of `logits` against `labels`."""
        if self.loss_fn is not None:
            return self.loss_fn(logits, labels)
        assert self.kind is not None
        return classification_loss(logits, labels, self.kind)

    def has_closed_form(self, head: nn.Module) -> bool:
        """Whether `input_grad` takes the closed form for `head` (an exact `nn.Linear`
        under a built-in loss, with `closed_form` allowed)."""
        return self.closed_form and self.kind is not None and type(head) is nn.Linear

    def input_grad(
        self,
        head: nn.Module,
        features: Tensor | None,
        logits: Tensor | None,
        labels: Tensor,
        per_sample: bool = False,
    ) -> Tensor:
        """The gradient of this loss with respect to `head`'s input (see `input_grad`).

        Args:
            head: the head.
            features: its input (needed by the autograd path).
            logits: its output (needed by the closed form).
            labels: `(B,)` labels.
            per_sample: remove the mean's `1/B`.

        Returns:
            A `(B, D)` tensor.
        """
        return input_grad(
            head, features, logits, labels, self.kind, self, self.closed_form, per_sample
        )


def check_image_head(
    head: Any, feature_dim: int, num_classes: int, device: torch.device, dtype: torch.dtype
) -> None:
    """A user's image head must map `(B, feature_dim)` features to `num_classes` logits.

    An `nn.Linear` is read from its shape; any other module is tried once on two zero feature
    rows (in eval mode, under `no_grad`, with the random number generators restored).

    Args:
        head: the module handed to `DGSWrapper(image_head=...)`.
        feature_dim: `D`, the width of the joint image-text embedding.
        num_classes: `DGSConfig.num_classes`.
        device: where the model's weights live.
        dtype: the image tower's weight dtype, used when the head has no parameters.

    Raises:
        TypeError: `head` is not an `nn.Module`.
        EncoderError: another input width, another number of logits, or the head fails.
    """
    if not isinstance(head, nn.Module):
        raise TypeError(f"image_head must be an nn.Module, got {type(head).__name__}")
    name = type(head).__name__
    why = (
        f"the surgery works on the {feature_dim}-wide image features that the text features "
        "share (open_clip/OpenAI CLIP encode_image, Hugging Face get_image_features), so the "
        "head must read those, not e.g. a vision tower's pooler_output or hidden states"
    )
    if isinstance(head, nn.Linear):
        if head.in_features != feature_dim:
            raise EncoderError(f"image_head {name} takes {head.in_features} inputs; {why}")
        logits = head.out_features
    else:
        p = next((q for q in head.parameters() if q.is_floating_point()), None)
        probe = torch.zeros(
            2, feature_dim, device=device, dtype=p.dtype if p is not None else dtype
        )
        was = head.training
        head.eval()
        devices = [device.index or 0] if device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices), torch.no_grad():
                out = head(probe)
        except Exception as exc:
            raise EncoderError(
                f"image_head {name} failed on features of shape (2, {feature_dim}) "
                f"({type(exc).__name__}: {exc}); {why}"
            ) from exc
        finally:
            head.train(was)
        if not isinstance(out, Tensor) or out.dim() not in (1, 2) or out.shape[0] != 2:
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise EncoderError(
                f"image_head {name} must return logits (B, {num_classes}), got {shape} for B = 2"
            )
        logits = 1 if out.dim() == 1 else int(out.shape[1])
    if logits != num_classes:
        fix = (
            "DGSConfig(num_classes=1) (one logit, BCE)"
            if logits == 1
            else (f"DGSConfig(num_classes={logits}) (cross-entropy over {logits} logits)")
        )
        raise EncoderError(
            f"image_head {name} gives {logits} logit(s) per image but DGSConfig.num_classes is "
            f"{num_classes}: use {fix}"
        )
