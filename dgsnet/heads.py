r"""Classification losses of the three heads, and their input gradients in closed form.

For a linear head ``z = W x + b`` and a mean-reduced loss over ``B`` samples, the gradient of
the loss with respect to the head's input is ``dL/dx_b = dL/dz_b @ W`` with

* BCE with logits (one logit): ``dL/dz_b = (sigmoid(z_b) - y_b) / B``;
* cross-entropy (``C`` logits): ``dL/dz_b = (softmax(z_b) - onehot(y_b)) / B``.

So the DGS reference gradients need no backward pass: the text head's harmful direction is
fixed by the label and the head's weights, and the teacher contributes its logits (one scalar
per sample for binary detection). :func:`input_grad` falls back to autograd for any other
head or loss.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["LossFn", "classification_loss", "linear_input_grad", "autograd_input_grad", "input_grad"]

LossFn = Callable[[Tensor, Tensor], Tensor]


def classification_loss(logits: Tensor, labels: Tensor, kind: str) -> Tensor:
    """Mean-reduced BCE-with-logits (``kind="bce"``, one logit) or cross-entropy (``"ce"``)."""
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype).view_as(logits))
    return F.cross_entropy(logits, labels.long())


def linear_input_grad(
    head: nn.Linear, logits: Tensor, labels: Tensor, kind: str, per_sample: bool = False
) -> Tensor:
    """``d loss / d input`` of a linear head in closed form (see the module docstring).

    ``per_sample=True`` drops the ``1/B`` of the mean reduction: each row is then the
    gradient of that sample's own loss, independent of the batch size."""
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


def autograd_input_grad(head: nn.Module, features: Tensor, labels: Tensor, loss_fn: LossFn) -> Tensor:
    """``d loss_fn(head(x), labels) / d x`` by autograd on the head alone (``x`` detached)."""
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
    """The head's input gradient: closed form when the head is ``nn.Linear`` and the loss a
    built-in one (``kind`` set), autograd otherwise (which needs ``features``).
    ``per_sample=True`` removes the mean's ``1/B`` (autograd path: assumes a mean-reduced loss)."""
    if closed_form and kind is not None and type(head) is nn.Linear and logits is not None:
        return linear_input_grad(head, logits, labels, kind, per_sample)
    if features is None:
        raise ValueError("the input gradient of this head/loss needs the features (no closed form)")
    grad = autograd_input_grad(head, features, labels, loss_fn)
    return grad * features.shape[0] if per_sample else grad
