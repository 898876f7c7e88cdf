"""Atomic file writes and safetensors checkpoints (never pickle)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import CheckpointError  # re-exported: its earlier home

if TYPE_CHECKING:  # annotations only: the atomic writers need no torch (dgsnet.metrics uses them)
    from torch import Tensor

__all__ = [
    "atomic_write_bytes",
    "with_filename",
    "atomic_write_text",
    "atomic_write_json",
    "json_safe",
    "save_tensors",
    "load_tensors",
    "sha256_file",
    "CheckpointError",
]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never a
    partial file: temp file in the same folder, flush, fsync, `os.replace`, fsync folder.

    Args:
        path: the file to write (its folder is created).
        data: the bytes.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise with_filename(exc, path) from exc
    try:
        os.fchmod(fd, _default_mode(path))  # mkstemp makes 0600; use what open() would give
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError):  # e.g. ENOSPC from write or fsync: name the file
            raise with_filename(exc, path) from exc
        raise
    fsync_dir(path.parent)


def with_filename(exc: OSError, path: str | os.PathLike[str]) -> OSError:
    """`exc` itself when it names a file, else an `OSError` of the same type and errno
    that names `path` (`OSError(28, ...)` from `write` or `fsync` names nothing)."""
    if exc.filename is not None:
        return exc
    return type(exc)(exc.errno, exc.strerror or str(exc), os.fspath(path))


def fsync_dir(directory: Path) -> None:
    """Best effort: make a rename inside `directory` durable (POSIX); skipped where the
    platform has no directory file descriptors.

    Args:
        directory: the folder that holds the renamed file.
    """
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    try:  # Linux: read it without changing it (os.umask is process-wide and not thread-safe)
        with open("/proc/self/status", encoding="ascii") as f:
            for row in f:
                if row.startswith("Umask:"):
                    return int(row.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _default_mode(path: Path) -> int:
    try:
        return os.stat(path).st_mode & 0o7777  # keep an existing file's permissions
    except FileNotFoundError:
        return 0o666 & ~_umask()


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` as UTF-8 with `atomic_write_bytes`.

    Args:
        path: the file to write.
        text: the text.
    """
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, data: Any, *, indent: int = 2, ensure_ascii: bool = True) -> None:
    """Write `data` as JSON (sorted keys) with `atomic_write_text`.
    `ensure_ascii=False` writes non-ASCII text as UTF-8 instead of `\\u` escapes.

    Args:
        path: the file to write.
        data: a JSON value.
        indent: JSON indentation.
        ensure_ascii: escape non-ASCII characters.
    """
    text = json.dumps(data, indent=indent, sort_keys=True, ensure_ascii=ensure_ascii)
    atomic_write_text(path, text + "\n")


def json_safe(
    obj: Any,
    *,
    finite: bool = True,
    drop_private: bool = False,
    default: Callable[[Any], Any] | None = None,
) -> Any:
    """`obj` as plain JSON values (dict, list, str, int, float, bool, None), the one JSON
    sanitiser of dgsnet (run logs, `run.json`, `summary.json`, the training state's
    checksum, the options the command line records).

    Conversions: mappings become dicts with `str` keys; tuples, lists and sets become lists
    (a set sorted by `repr` of its items, so that the output is stable); `os.PathLike`
    becomes its path string; numpy scalars and arrays and torch tensors become Python numbers
    (a one-element tensor its single number) or nested lists; with `finite=True` a NaN or
    infinite float becomes its name, `"nan"`, `"inf"` or `"-inf"` (strict JSON has no
    such numbers).

    Args:
        obj: the value to convert; not modified.
        finite: replace non-finite floats by their names (`False` keeps them as floats, for
            `json.dumps(..., allow_nan=True)`).
        drop_private: leave out mapping entries whose key starts with `_` or whose value is
            callable (what an `argparse.Namespace` carries besides the options).
        default: called on a value of any other type, its result converted in turn; without
            it such a value raises.

    Returns:
        A structure that `json.dumps` serialises without a `default`.

    Raises:
        TypeError: a value of a type listed nowhere above, and no `default`.

    Examples:
        >>> json_safe({"a": (1, float("inf")), 2: Path("x")})
        {'a': [1, 'inf'], '2': 'x'}
    """

    def convert(value: Any) -> Any:
        return json_safe(value, finite=finite, drop_private=drop_private, default=default)

    if obj is None or isinstance(obj, (str, int)):  # bool is an int
        return obj
    if isinstance(obj, float):
        value = float(obj)
        return str(value) if finite and not math.isfinite(value) else value
    if isinstance(obj, Mapping):
        return {
            str(k): convert(v)
            for k, v in obj.items()
            if not (drop_private and (callable(v) or str(k).startswith("_")))
        }
    if isinstance(obj, (list, tuple)):
        return [convert(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return [convert(v) for v in sorted(obj, key=repr)]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    torch = sys.modules.get("torch")  # never imported here: a tensor exists only if torch is
    if torch is not None and isinstance(obj, torch.Tensor):
        return convert(obj.item() if obj.numel() == 1 else obj.tolist())
    np = sys.modules.get("numpy")
    if np is not None and isinstance(obj, (np.generic, np.ndarray)):
        return convert(obj.tolist())
    if default is not None:
        return convert(default(obj))
    raise TypeError(f"json_safe: a {type(obj).__name__} has no JSON form: {obj!r:.80}")


def save_tensors(
    path: Path, tensors: Mapping[str, Tensor], metadata: dict[str, str] | None = None
) -> str:
    """Write `tensors` as safetensors atomically; return the file's sha256.

    Args:
        path: the file to write.
        tensors: `{name: tensor}`.
        metadata: string metadata stored in the file's header.

    Returns:
        The hex sha256 of the file written.
    """
    from safetensors.torch import save

    data = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=metadata)
    atomic_write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """The hex sha256 of the file at `path`, read in chunks.

    Args:
        path: the file.

    Returns:
        The hex digest.
    """
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_tensors(path: Path, expected_sha256: str | None = None) -> dict[str, Tensor]:
    """Read a safetensors file, checking its sha256 when given; clear errors on damage.

    Args:
        path: the safetensors file.
        expected_sha256: the hex sha256 the file must have, or `None` not to check.

    Returns:
        `{name: tensor}`.

    Raises:
        CheckpointError: the file is missing, does not match `expected_sha256`, or is not a
            safetensors file.
    """
    from safetensors.torch import load

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} does not exist")
    data = path.read_bytes()
    if expected_sha256 is not None:
        digest = hashlib.sha256(data).hexdigest()
        if digest != expected_sha256:
            raise CheckpointError(
                f"checkpoint file {path} does not match the checksum recorded beside it "
                f"(expected sha256 {expected_sha256[:12]}..., got {digest[:12]}...): it is "
                "truncated, modified, or from another save"
            )
    try:
        return dict(load(data))
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(
            f"checkpoint file {path} is not a valid safetensors file: {exc}"
        ) from exc
