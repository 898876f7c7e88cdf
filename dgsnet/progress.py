"""One progress bar for every long loop in dgsnet (tqdm when available, else nothing)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

__all__ = ["progress_bar"]


class _NoBar:
    """Stands in for a tqdm bar when bars are off: iterates, ignores updates."""

    def __init__(self, iterable: Iterable[Any] | None) -> None:
        self._iterable = iterable

    def __iter__(self) -> Iterator[Any]:
        return iter(self._iterable if self._iterable is not None else ())

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass

    def set_description(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def progress_bar(
    iterable: Iterable[Any] | None = None,
    *,
    total: int | None = None,
    initial: int = 0,
    desc: str | None = None,
    unit: str = "it",
    leave: bool = True,
    enabled: bool = True,
) -> Any:
    """A tqdm bar over `iterable` (or a manual one when `iterable` is `None`).

    With `enabled=False`, or where tqdm is not installed, the result iterates `iterable`
    unchanged and accepts `update`/`set_postfix`/`close` as no-ops, so callers never
    branch on whether a bar exists.

    Args:
        iterable: what to iterate, or `None` for a bar updated by hand.
        total: the number of items (default: `len(iterable)` when it has one).
        initial: the count to start from (a resumed loop).
        desc: the label in front of the bar.
        unit: the name of one item.
        leave: keep the bar on screen when done.
        enabled: `False` gives the no-op bar.

    Returns:
        The tqdm bar, or the no-op stand-in.
    """
    if not enabled:
        return _NoBar(iterable)
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm comes with open_clip's dependencies
        return _NoBar(iterable)
    return tqdm(
        iterable,
        total=total,
        initial=initial,
        desc=desc,
        unit=unit,
        leave=leave,
        dynamic_ncols=True,
    )
