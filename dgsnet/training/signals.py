"""SIGINT/SIGTERM during training: finish the step, checkpoint, stop."""

from __future__ import annotations

import signal
import sys
from typing import Any

__all__ = ["StopFlag"]


class StopFlag:
    """SIGINT/SIGTERM -> finish the current step, checkpoint, stop. A second signal
    interrupts at once."""

    def __init__(self, enabled: bool) -> None:
        self.requested = False
        self.enabled = enabled and _in_main_thread()
        self._old: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested:
            self.restore()
            raise KeyboardInterrupt
        self.requested = True
        print(
            f"\ndgsnet: {signal.Signals(signum).name} received: stopping after this step "
            "(checkpoint first); send it again to stop at once",
            file=sys.stderr,
        )

    def __enter__(self) -> StopFlag:
        if self.enabled:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handler)
        return self

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}

    def __exit__(self, *exc: Any) -> None:
        self.restore()


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
