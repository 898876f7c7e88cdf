"""The run log ``OUT/train_log.jsonl``: one JSON object a line, flushed as written."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from ..io import json_safe, with_filename

__all__ = ["RunLog"]


class RunLog:
    """Appends JSON records to ``path`` (through :func:`dgsnet.io.json_safe`, so NaN becomes
    ``"nan"``); with ``path=None`` (ranks other than 0) every call does nothing.

    Args:
        path: the log file, created with its folder if missing; ``None`` for no log.
        truncate_to: cut an existing file to this many bytes first (a resumed run drops
            what was logged after its checkpoint).
    """

    def __init__(self, path: Path | None, truncate_to: int | None = None) -> None:
        self.path = path
        self.fh: IO[str] | None = None
        if path is None:
            return
        if truncate_to is not None and path.exists():
            with open(path, "r+b") as fh:
                fh.truncate(min(int(truncate_to), os.path.getsize(path)))
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = open(path, "a", encoding="utf-8")  # noqa: SIM115

    def write(self, record: Mapping[str, Any]) -> None:
        """Append ``record`` as one line and flush."""
        if self.fh is None:
            return
        try:
            self.fh.write(json.dumps(json_safe(record), sort_keys=False) + "\n")
            self.fh.flush()
        except OSError as exc:  # disk full: name the log
            raise with_filename(exc, self.path or "") from exc

    def offset(self) -> int:
        """The file's length in bytes after what was written so far (0 without a file)."""
        if self.fh is None:
            return 0
        self.fh.flush()
        return self.fh.tell()

    def close(self) -> None:
        """Close the file; later writes do nothing."""
        if self.fh is not None:
            self.fh.close()
            self.fh = None
