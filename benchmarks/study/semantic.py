"""A per-sample semantic suppression rule, and the record of which directions a projection
removes (the fixed-direction measurement of docs/study.md).

``SemanticSuppression`` is written with the public ``dgsnet.surgery.SurgeryRule`` API: it
projects each sample's feature gradient off a direction of that sample's own, by default its
caption's text feature. With a linear text head and BCE, DGS-Net's harmful direction
``relu(g_text_b) / ||relu(g_text_b)||`` is one of two fixed vectors (``relu(w_t)`` or
``relu(-w_t)``, chosen by the label), whatever the caption says; this rule instead sees what
each image shows, as its caption describes it.

``DirectionLog`` collects, step by step, the direction each projecting method removes, the
gradient arriving at the features and the image's own text feature, and summarises them: the
cosine between the directions of different images at the same step and at different steps,
within a label and across labels, and how much of the incoming gradient's norm lies along the
projected direction and along the image's own text feature.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from dgsnet.surgery import SurgeryRule

__all__ = ["SemanticSuppression", "DirectionLog", "unit", "random_abs_cos"]

Part = Literal["full", "positive"]


def unit(v: Tensor) -> Tensor:
    """``v / ||v||`` per sample over the last dimension, ``0`` where ``v`` is zero.

    The vector is first divided by its largest magnitude, so that its squared norm neither
    underflows nor overflows (a float32 reference of 1e-25 would otherwise give a zero norm).
    """
    if v.shape[-1] == 0:
        return v
    tiny = torch.finfo(v.dtype).tiny
    s = v * (1.0 / v.abs().amax(dim=-1, keepdim=True).clamp_min(tiny))
    return s * (1.0 / torch.linalg.vector_norm(s, dim=-1, keepdim=True).clamp_min(tiny))


class SemanticSuppression(SurgeryRule):
    r"""Project each sample's gradient off its own semantic direction.

    With ``r_b`` the sample's reference (by default ``refs["text"]``, the text feature of the
    sample's own caption in the joint image-text space), per sample:

    $$
    u_b = \frac{r_b}{\lVert r_b \rVert} \;(\texttt{part="full"}) \quad\text{or}\quad
    u_b = \frac{\max(r_b, 0)}{\lVert \max(r_b, 0) \rVert} \;(\texttt{part="positive"}), \qquad
    g'_b = g_b - \langle g_b, u_b \rangle\, u_b
    $$

    ``part="full"`` removes the component of the step that would move the image feature
    towards or away from its own caption: to first order the update leaves ``<f_b, t_b>``, the
    image's agreement with its caption, unchanged. It is equivariant to rotations of the
    feature space. ``part="positive"`` takes DGS-Net's sign split of the reference first,
    for a like-for-like comparison with Orthogonal Suppression. Normalisation is exact (no
    ``eps``): a zero reference (or, with ``"positive"``, one without a positive part) gives
    ``u = 0`` and leaves the gradient unchanged.

    Args:
        part: ``"full"`` (the whole reference vector) or ``"positive"`` (its positive part).
        ref: the name of the reference in ``refs``.

    Raises:
        ValueError: ``part`` unknown.
        TypeError: ``ref`` not a non-empty string.

    Examples:
        >>> rule = SemanticSuppression()
        >>> rule(torch.tensor([[3.0, 4.0]]), {"text": torch.tensor([[0.0, -2.0]])})
        tensor([[3., 0.]])
    """

    def __init__(self, part: Part = "full", ref: str = "text") -> None:
        if part not in ("full", "positive"):
            raise ValueError(
                f"SemanticSuppression: part must be 'full' or 'positive', got {part!r}"
            )
        if not isinstance(ref, str) or not ref:
            raise TypeError(f"SemanticSuppression: ref must be a non-empty string, got {ref!r}")
        self.part: Part = part
        self.ref = ref
        self.refs = (ref,)

    def _repr_args(self) -> dict[str, object]:
        return {"part": self.part, "ref": self.ref}

    def direction(self, ref: Tensor) -> Tensor:
        """The unit direction ``u`` the rule projects off, per sample (zero where none)."""
        return unit(ref.clamp_min(0) if self.part == "positive" else ref)

    def forward(self, grad: Tensor, refs: dict[str, Tensor]) -> Tensor:
        u = self.direction(refs[self.ref])
        return grad - (grad * u).sum(dim=-1, keepdim=True) * u


def random_abs_cos(dim: int) -> float:
    """``E|<g, u>|`` for a fixed unit ``g`` and ``u`` uniform on the unit sphere of ``R^dim``:
    ``Gamma(dim/2) / (sqrt(pi) Gamma((dim+1)/2))`` (0.100 for ``dim = 64``), the share of a
    gradient's norm that lies along a direction unrelated to it."""
    return math.exp(math.lgamma(dim / 2) - math.lgamma((dim + 1) / 2)) / math.sqrt(math.pi)


def _pair_sum(u: Tensor) -> float:
    """Sum of ``<u_i, u_j>`` over ordered pairs ``i != j`` of the rows of ``u`` (unit rows)."""
    s = u.sum(0)
    return float(s @ s - (u * u).sum())


def _abs_cos(g: Tensor, v: Tensor) -> Tensor:
    """``|cos(g_b, v_b)|`` per row (0 where either is zero)."""
    return (unit(g) * unit(v)).sum(-1).abs()


class DirectionLog:
    """The directions a projection removed over a training run, with the incoming gradients
    and the images' own text features (float64 copies on the CPU; a few MB per run)."""

    def __init__(self) -> None:
        self._steps: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []

    def add(self, direction: Tensor, labels: Tensor, grad: Tensor, text: Tensor) -> None:
        """One step: the projected direction per sample (any positive scale), the labels, the
        gradient arriving at the features (before the projection) and the text features."""
        d, y, g, t = (x.detach().double().cpu() for x in (direction, labels, grad, text))
        self._steps.append((d, y, g, t))

    def __len__(self) -> int:
        return len(self._steps)

    def summary(self) -> dict[str, float]:
        """Means over the run (cosines in [-1, 1], shares in [0, 1]):

        * ``cos_same_label_same_step`` / ``min_cos_same_label_same_step``: the mean (and the
          smallest) cosine between the directions of two different images with the same
          label in the same step;
        * ``cos_same_label_other_step``: the same over pairs from different steps;
        * ``cos_other_label``: between images of different labels (any steps);
        * ``grad_along_direction``: ``|cos(g_b, u_b)|``, the share of each incoming gradient's
          norm that lies along the direction projected off it;
        * ``grad_along_text`` / ``grad_along_text_positive``: the share along the image's own
          text feature ``t_b`` / along ``max(t_b, 0)``;
        * ``cos_text_other_images``: the mean cosine between the text features of two
          different images of a step (how different the per-image directions are).
        """
        if not self._steps:
            return {}
        return {**_shares(self._steps), **_direction_cosines(self._steps)}


Steps = list[tuple[Tensor, Tensor, Tensor, Tensor]]


def _shares(steps: Steps) -> dict[str, float]:
    """The shares of the incoming gradients along the directions and the text features, and
    the mean cosine between two images' text features."""
    text_pairs = text_n = 0.0
    along_dir, along_text, along_pos = [], [], []
    for direction, _labels, grad, text in steps:
        tu = unit(text)
        text_pairs += _pair_sum(tu)
        text_n += len(tu) * (len(tu) - 1)
        along_dir.append(_abs_cos(grad, direction))
        along_text.append(_abs_cos(grad, text))
        along_pos.append(_abs_cos(grad, text.clamp_min(0)))
    out = {
        "grad_along_direction": float(torch.cat(along_dir).mean()),
        "grad_along_text": float(torch.cat(along_text).mean()),
        "grad_along_text_positive": float(torch.cat(along_pos).mean()),
    }
    if text_n:
        out["cos_text_other_images"] = text_pairs / text_n
    return out


def _direction_cosines(steps: Steps) -> dict[str, float]:
    """The cosines between the directions of two images: same label and step (mean and
    lowest), same label and other steps, other label. Pairs that do not exist (one image per
    label, say) give no entry rather than NaN."""
    same = same_n = 0.0
    lowest = 1.0
    sums: dict[int, Tensor] = {}
    counts: dict[int, int] = {}
    norms: dict[int, float] = {}
    for direction, labels, _grad, _text in steps:
        u = unit(direction)
        keep = torch.linalg.vector_norm(u, dim=-1) > 0
        for lab in labels[keep].unique().tolist():
            ul = u[keep & (labels == lab)]
            n = len(ul)
            same += _pair_sum(ul)
            same_n += n * (n - 1)
            if n > 1:
                gram = ul @ ul.T
                lowest = min(lowest, float(gram[~torch.eye(n, dtype=torch.bool)].min()))
            key = int(lab)
            sums[key] = sums.get(key, torch.zeros(u.shape[1], dtype=u.dtype)) + ul.sum(0)
            counts[key] = counts.get(key, 0) + n
            norms[key] = norms.get(key, 0.0) + float((ul * ul).sum())
    all_pairs = sum(float(s @ s) - norms[k] for k, s in sums.items())
    all_n = sum(n * (n - 1) for n in counts.values())
    out: dict[str, float] = {}
    if same_n:
        out["cos_same_label_same_step"] = same / same_n
        out["min_cos_same_label_same_step"] = lowest
    if all_n > same_n:
        out["cos_same_label_other_step"] = (all_pairs - same) / (all_n - same_n)
    if len(sums) == 2:
        a, b = (sums[k] for k in sorted(sums))
        na, nb = (counts[k] for k in sorted(counts))
        out["cos_other_label"] = float(a @ b) / (na * nb)
    return out
