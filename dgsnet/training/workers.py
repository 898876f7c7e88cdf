"""The bound on DataLoader worker processes.

Each worker is a forked copy of the process (with a large model, hundreds of MB each once
touched), and a loader starts all of them at once. More workers than usable CPU cores, or
than there are batches to load, only cost memory; an unbounded count (`--workers 100000`)
can bring the machine down. `bounded_workers` caps the count at
`min(usable CPU cores, batches per pass)`, and warns when a count above the usable cores was
asked for; capping at the batches per pass is silent (a worker with no batch to load would
only sit idle). The data each step sees does not depend on the worker count (every sample's
augmentation is seeded by its index), so capping changes no result. `default_workers` is the
command line's default, which never exceeds the cores and so never warns.
"""

from __future__ import annotations

import math
import os
import warnings

__all__ = ["bounded_workers", "default_workers", "usable_cpus"]


def usable_cpus() -> int:
    """The CPU cores this process may run on (`os.sched_getaffinity`, else
    `os.cpu_count()`), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def default_workers(limit: int = 4) -> int:
    """The default number of loader processes: `limit`, or the usable CPU cores when there
    are fewer (2 on a 2-core machine).

    Examples:
        >>> 1 <= default_workers() <= 4
        True
    """
    return max(1, min(limit, usable_cpus()))


def bounded_workers(requested: int, n_items: int, batch_size: int) -> int:
    """`requested` worker processes, capped at the usable CPU cores and at the number of
    batches of `n_items` items (at least one worker when any was asked for).

    Args:
        requested: the worker count asked for (0: load in the main process).
        n_items: the items one pass of the loader reads.
        batch_size: items per batch.

    Returns:
        The worker count to use; a `UserWarning` says so when more than the usable CPU
        cores were asked for.

    Examples:
        >>> bounded_workers(0, 100, 4)
        0
        >>> import warnings
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore")
        ...     bounded_workers(100000, 4, 4)  # one batch: one worker
        1
    """
    if requested <= 0:
        return 0
    batches = max(1, math.ceil(max(0, n_items) / max(1, batch_size)))
    cpus = usable_cpus()
    bound = max(1, min(cpus, batches))
    if requested > cpus:
        warnings.warn(
            f"--workers/num_workers {requested} lowered to {bound} (at most one loader "
            f"process per usable CPU core ({cpus}) and per batch ({batches}))",
            UserWarning,
            stacklevel=3,
        )
    return min(requested, bound)
