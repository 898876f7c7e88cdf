"""What the wrapper returns: `DGSOutput` (the step) and `SurgeryResult` (the surgery alone).

`DGSOutput` is registered as a torch pytree node. Both are re-exported by `dgsnet.wrapper`
and `dgsnet`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from ..surgery import SurgeryStats

__all__ = ["DGSOutput", "SurgeryResult"]


@dataclass
class DGSOutput:
    """What `DGSWrapper.forward` returns.

    `loss` is ready for `.backward()`; `logits` are the student's; `losses` holds the
    detached parts (`image`, `text`, `teacher`, `align`, and `distill`, the
    unweighted `MSE(f, f_T)`, when `feature_distill > 0`); `stats` the surgery
    diagnostics as floats, available after `loss.backward()` (empty before).
    """

    loss: Tensor
    logits: Tensor
    losses: dict[str, Tensor] = field(default_factory=dict)
    surgery: SurgeryStats | None = None

    @property
    def stats(self) -> dict[str, float]:
        """The surgery diagnostics as floats (empty before `backward()`)."""
        return self.surgery.summary() if self.surgery is not None else {}


@dataclass
class SurgeryResult:
    """What `DGSWrapper.apply_surgery` returns.

    `features` are the features it was given, the same values, with the gradient surgery
    attached: feed them to your own head. `loss` holds the DGS terms to add to your task
    loss: the text head's loss, the weighted alignment term, and the weighted feature
    distillation when configured (a zero tensor when none is on). `losses` holds the
    detached parts (`text`, `teacher`, `align`, `distill`); `stats` the surgery diagnostics,
    available after `backward()`.
    """

    features: Tensor
    loss: Tensor
    losses: dict[str, Tensor] = field(default_factory=dict)
    surgery: SurgeryStats | None = None

    @property
    def stats(self) -> dict[str, float]:
        """The surgery diagnostics as floats (empty before `backward()`)."""
        return self.surgery.summary() if self.surgery is not None else {}


def _register_output_pytree() -> None:
    """Make `DGSOutput` a pytree node, so that `DistributedDataParallel` finds its
    tensors. DDP routes the forward output through its `_DDPSink` with `tree_flatten`
    (`static_graph=True`, `find_unused_parameters=True`); an unregistered dataclass is an
    opaque leaf there, and with `static_graph=True` the first step's gradients were then never
    all-reduced (each rank kept its local gradient). `tests/wrapper/test_distributed.py`
    checks this."""
    try:
        from torch.utils import _pytree as pytree
    except ImportError:  # pragma: no cover - very old torch
        return
    register = getattr(pytree, "register_pytree_node", None) or getattr(
        pytree, "_register_pytree_node", None
    )
    if register is None:  # pragma: no cover
        return
    try:
        register(
            DGSOutput,
            lambda o: ([o.loss, o.logits, o.losses, o.surgery], None),
            lambda values, _ctx: DGSOutput(*values),
        )
    except ValueError:  # already registered (module reloaded)
        pass


_register_output_pytree()
