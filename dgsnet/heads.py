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

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "LossFn",
    "classification_loss",
    "linear_input_grad",
    "autograd_input_grad",
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
