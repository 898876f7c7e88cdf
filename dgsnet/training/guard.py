"""Checks made before a checkpoint is committed: the weights must be finite.

The loss and the gradients are checked at every step (`.step`), but the weights after
the last optimiser step are not seen by any later step; an update that overflows (a huge
learning rate) would otherwise be committed as `last/` or `final/`. `check_finite_weights`
runs before every save and raises the same `NonFiniteError` as a
non-finite loss, so nothing non-finite is ever put in place.
"""

from __future__ import annotations

import torch

from ..errors import NonFiniteError
from ..wrapper import DGSWrapper
from ..wrapper.checkpoint import get_dgs_state_dict

__all__ = ["check_finite_weights"]


def check_finite_weights(wrapper: DGSWrapper, target: str, step: int | None = None) -> None:
    """Raise unless every tensor that a checkpoint of `wrapper` holds is finite.

    Args:
        wrapper: the wrapper about to be saved.
        target: what is being written (e.g. `"runs/x/final"`), for the message.
        step: the global stage-2 step the weights come from.

    Raises:
        NonFiniteError: naming the first non-finite tensor (and how many there are), the
            target and the step; nothing has been written.
    """
    bad = [
        name
        for name, t in get_dgs_state_dict(wrapper).items()
        if t.is_floating_point() and not bool(torch.isfinite(t).all())
    ]
    if not bad:
        return
    at = f" after stage-2 step {step}" if step else ""
    more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
    raise NonFiniteError(
        f"the weights are non-finite{at} ({bad[0]!r}{more} hold NaN/Inf); {target} was not "
        "written. The optimiser step diverged: lower the learning rate",
        step=step,
    )
