"""The run log `OUT/train_log.jsonl`: one JSON object a line, flushed as written; sinks
(e.g. `TensorBoardSink`) receive the same records."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Protocol

from ..io import json_safe, with_filename

__all__ = ["LogSink", "RunLog"]


class LogSink(Protocol):
    """Something that receives every record of a `RunLog` (`write`) and is closed
    with it (`close`)."""

    def write(self, record: Mapping[str, Any]) -> None: ...

    def close(self) -> None: ...


class RunLog:
    """Appends JSON records to `path` (through `dgsnet.io.json_safe`, so NaN becomes
    `"nan"`); with `path=None` (ranks other than 0) every call does nothing.

    Args:
        path: the log file, created with its folder if missing; `None` for no log.
        truncate_to: cut an existing file to this many bytes first (a resumed run drops
            what was logged after its checkpoint).
        sinks: receive each record as written to the file (after the JSON conversion) and
            are closed with the log; ignored without a `path`.
    """

    def __init__(
        self, path: Path | None, truncate_to: int | None = None, sinks: Sequence[LogSink] = ()
    ) -> None:
        self.path = path
        self.fh: IO[str] | None = None
        self.sinks: list[LogSink] = list(sinks) if path is not None else []
        if path is None:
            return
        if truncate_to is not None and path.exists():
            with open(path, "r+b") as fh:
                fh.truncate(min(int(truncate_to), os.path.getsize(path)))
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = open(path, "a", encoding="utf-8")  # noqa: SIM115

    def write(self, record: Mapping[str, Any]) -> None:
        """Append `record` as one line and flush."""
        if self.fh is None:
            return
        safe = json_safe(record)
        try:
            self.fh.write(json.dumps(safe, sort_keys=False) + "\n")
            self.fh.flush()
        except OSError as exc:  # disk full: name the log
            raise with_filename(exc, self.path or "") from exc
        for sink in self.sinks:
            sink.write(safe)

    def offset(self) -> int:
        """The file's length in bytes after what was written so far (0 without a file)."""
        if self.fh is None:
            return 0
        self.fh.flush()
        return self.fh.tell()

    def close(self) -> None:
        """Close the file and the sinks; later writes do nothing."""
        if self.fh is not None:
            self.fh.close()
            self.fh = None
        for sink in self.sinks:
            sink.close()
        self.sinks = []
