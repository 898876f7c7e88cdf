"""The command line's error contract: one `dgsnet: error: ...` line, and the exit status.

* `0`: success; `2` (`EXIT_USAGE`): the input is wrong (a bad option, a missing
  folder, an unreadable image, missing captions, a damaged checkpoint, a model that cannot be
  loaded, an operating-system error on a named file such as a full disk: the line names the
  file and the errno); `1` (`EXIT_FAILURE`): a non-finite loss or non-finite
  weights; `130` (`EXIT_INTERRUPTED`): interrupted.
* The exit status is chosen by the exception's type (`exit_status`), never by its text.
* `--debug` shows the traceback instead (the exception propagates).
"""

from __future__ import annotations

import os
import sys
from types import TracebackType
from typing import Any

from ..errors import (  # UsageError re-exported: its earlier home
    CheckpointError,
    DatasetError,
    ModelLoadError,
    TrainingConfigError,
    UsageError,
)

__all__ = [
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "PROG",
    "UsageError",
    "error_message",
    "exit_status",
    "print_error",
    "show_warning",
]

PROG = "dgsnet"
EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
_MAX_LINES = 8  # lines of a multi-line message printed under the error line


def _input_errors() -> tuple[type[BaseException], ...]:
    return (UsageError, DatasetError, CheckpointError, ModelLoadError, TrainingConfigError)


def exit_status(exc: BaseException) -> int | None:
    """The exit status for `exc`, by its type; `None` for an unexpected error (a bug, whose
    traceback should be seen).

    A dataset error raised inside a DataLoader worker process keeps its type: torch re-raises
    it in the main process as the same class (`torch._utils.ExceptionWrapper.reraise`).
    """
    from ..errors import NonFiniteError

    if isinstance(exc, NonFiniteError):
        return EXIT_FAILURE
    if isinstance(exc, _input_errors()):
        return EXIT_USAGE
    if isinstance(exc, OSError) and exc.filename is not None:
        return EXIT_USAGE  # a named file cannot be read or written (disk full, permissions)
    return None


def _raised_by_torch_reraise(tb: TracebackType | None) -> bool:
    """Whether the innermost frame of `tb` is torch's `ExceptionWrapper.reraise` (the
    exception object is a copy made in the main process of one raised in a worker)."""
    try:
        from torch._utils import ExceptionWrapper
    except ImportError:  # pragma: no cover - torch is a dependency
        return False
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and tb.tb_frame.f_code is ExceptionWrapper.reraise.__code__


def error_message(exc: BaseException) -> str:
    """The text to print for `exc`.

    For an exception re-raised from a DataLoader worker, torch's copy carries the worker's
    whole formatted traceback as its message; the original message is its final
    `<module>.<class>: <message>` entry, found here by the exception's own class name.
    """
    if isinstance(exc, OSError) and exc.filename is not None:
        return os_error_message(exc)
    text = str(exc)
    if _raised_by_torch_reraise(exc.__traceback__):
        cls = type(exc)
        head = f"{cls.__module__}.{cls.__qualname__}: "
        if head in text:
            return text.rpartition(head)[2].strip()
        return text.strip().splitlines()[0]
    return text if text.strip() else type(exc).__name__


def os_error_message(exc: OSError) -> str:
    """`<strerror> (errno <n>, <NAME>): <file>`, e.g. `No space left on device (errno 28,
    ENOSPC): runs/x/last/dgs_weights.safetensors`; the file name is shown with
    `os.fsdecode` escapes made printable."""
    import errno as errno_names

    code = exc.errno
    name = errno_names.errorcode.get(code, "") if isinstance(code, int) else ""
    detail = f" (errno {code}{', ' + name if name else ''})" if code is not None else ""
    filename = exc.filename
    if isinstance(filename, bytes):
        filename = os.fsdecode(filename)
    shown = str(filename).encode("utf-8", "backslashreplace").decode("utf-8")
    return f"{exc.strerror or exc}{detail}: {shown}"


def print_error(message: str) -> None:
    """Print `dgsnet: error: <first line>`, then up to 7 more lines indented (stderr)."""
    lines = message.strip().splitlines() or ["error"]
    print(f"{PROG}: error: {lines[0]}", file=sys.stderr)
    for ln in lines[1:_MAX_LINES]:
        print(f"  {ln.strip()}", file=sys.stderr)
    if len(lines) > _MAX_LINES:
        print("  ...", file=sys.stderr)


def show_warning(
    message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None
) -> None:
    """A `warnings.showwarning` replacement: `dgsnet: warning: <message>`, no source
    line."""
    text = str(message).strip().splitlines()
    stream = sys.stderr if file is None else file
    print(f"{PROG}: warning: {text[0] if text else category.__name__}", file=stream)
    for ln in text[1:6]:
        print(f"  {ln.strip()}", file=stream)
