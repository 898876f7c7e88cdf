"""An exclusive lock on a training output folder, so that two runs never write into it at once.

`hold_run_lock` takes an `fcntl.flock` lock on `OUT/.dgsnet-train.lock` for the
length of a run and writes the holder's process id (and host name) into that file. The kernel
releases a `flock` lock when its holder exits for any reason (`kill -9` included), so a
lock left behind by a dead run is never in the way: only a live holder blocks. A second run
into the same folder raises `RunLockedError` (a
`TrainingConfigError`; the command line exits 2) naming the folder and
the holder's pid.

Loader worker processes forked by a run inherit the open lock file; when the run is killed
they hold the lock for the few seconds they take to notice. A run that finds the lock held
by a pid of this host that no longer exists therefore replaces the lock file with a new one.
Runs inspect and replace the lock file only while holding a second lock, on
`OUT/.dgsnet-train.lock.guard`, for the moment it takes: two runs that start together on
such a stale lock take turns, and the second finds the first's live pid in the new file. The
lock file is opened with `O_NOFOLLOW`: a symbolic link there is refused, never followed.

Under `torchrun` only rank 0 takes the lock (it is the rank that writes); the other ranks
learn whether it succeeded through an all-reduce and raise the same error when it did not.

Examples:
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d, hold_run_lock(d):
    ...     try:
    ...         with hold_run_lock(d):
    ...             pass
    ...     except RunLockedError as exc:
    ...         print("locked")
    locked
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from ..errors import RunLockedError
from .distributed import DistInfo, any_rank

try:  # pragma: no cover - always there on Linux and macOS
    import fcntl
except ImportError:  # pragma: no cover - Windows: no lock
    fcntl = None  # type: ignore[assignment]

__all__ = ["GUARD_NAME", "LOCK_NAME", "RunLock", "RunLockedError", "hold_run_lock", "pid_alive"]

LOCK_NAME = ".dgsnet-train.lock"
"""The lock file inside the output folder (kept after the run; only the lock on it matters)."""

#: held while a run inspects or replaces the lock file (never while it trains)
GUARD_NAME = ".dgsnet-train.lock.guard"

#: how long taking the lock waits for another process's inspection to end
GUARD_WAIT_S = 10.0

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_BUSY = (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)


class RunLock:
    """The `flock` lock on `out_dir`'s `LOCK_NAME` (not re-entrant; one per run).

    Args:
        out_dir: the output folder (created when missing).
    """

    def __init__(self, out_dir: str | os.PathLike[str]) -> None:
        self.out = Path(out_dir)
        self.path = self.out / LOCK_NAME
        self.fd: int | None = None

    def acquire(self) -> None:
        """Take the lock without waiting and write this process's pid into the file.

        Everything that reads the lock file's holder or replaces the file happens under the
        guard (`GUARD_NAME`), so two runs that find the same stale lock cannot both replace
        it, nor unlink each other's new file.

        Raises:
            RunLockedError: another process holds it (naming the folder and its pid), or the
                lock file is a symbolic link (never followed: writing the pid would truncate
                the file it names).
            OSError: the folder or the lock file cannot be created.
        """
        self.out.mkdir(parents=True, exist_ok=True)
        if fcntl is None:  # pragma: no cover - no flock on this platform
            self.fd = self._open(self.path)
            return
        with self._guard():
            fd = self._take()
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        self.fd = fd

    def _open(self, path: Path) -> int:
        """Open (create) `path` for the lock, never through a symbolic link."""
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | _NOFOLLOW, 0o644)
        except OSError as exc:
            if exc.errno != errno.ELOOP and not path.is_symlink():
                raise
            target = os.readlink(path) if path.is_symlink() else "a loop"
            raise RunLockedError(
                f"{path} is a symbolic link (to {target}); dgsnet never follows a link there "
                "(taking the lock would truncate the file it names): remove the link"
            ) from None

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """Hold the guard's lock (waiting up to `GUARD_WAIT_S`) for the block."""
        assert fcntl is not None
        fd = self._open(self.out / GUARD_NAME)
        try:
            deadline = time.monotonic() + GUARD_WAIT_S
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in _BUSY or time.monotonic() > deadline:
                        raise RunLockedError(
                            f"{self.out}: another process has held {GUARD_NAME} for more than "
                            f"{GUARD_WAIT_S:g} s while taking the run lock"
                        ) from None
                    time.sleep(0.005)
            yield
        finally:
            os.close(fd)  # (drops the guard's lock)

    def _take(self) -> int:
        """The lock file's descriptor, locked (call under the guard)."""
        assert fcntl is not None
        for _ in range(3):
            fd = self._open(self.path)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder, host = _read_holder(fd)
                os.close(fd)
                if exc.errno not in _BUSY:
                    raise
                if holder and host == socket.gethostname() and not pid_alive(holder):
                    # the run died, but loader workers it forked still hold the file (they
                    # inherited it and exit a few seconds after their parent): a new file
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self.path)
                    continue
                who = f"process {holder}" if holder else "another process"
                raise RunLockedError(
                    f"{self.out} is in use by another training run ({who} holds {self.path}); "
                    "wait for it to end or choose another --out"
                ) from None
            if _same_file(fd, self.path):
                return fd
            os.close(fd)  # replaced meanwhile (by a dgsnet without the guard): lock the new one
        raise RunLockedError(f"{self.out}: the lock file {self.path} keeps being replaced")

    def holder(self) -> str | None:
        """Who holds the lock (`"process PID"`), or `None` when no run holds it.

        Probed under the guard when the folder is writable, so that the probe never makes a
        run that is starting at that moment fail; without it otherwise (a read-only folder
        holds no run that is starting)."""
        if fcntl is None or not self.path.is_file() or self.path.is_symlink():
            return None
        try:
            with self._guard():
                return self._probe()
        except (OSError, RunLockedError):  # no guard file can be made, or it is stuck
            return self._probe()

    def _probe(self) -> str | None:
        assert fcntl is not None
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC | _NOFOLLOW)
        except OSError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in _BUSY:
                    return None
                pid, _ = _read_holder(fd)
                return f"process {pid}" if pid else "another process"
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    def release(self) -> None:
        """Clear the pid and drop the lock (a no-op when not held)."""
        fd, self.fd = self.fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)
        except OSError:  # pragma: no cover - best effort; the unlock below is what counts
            pass
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _read_holder(fd: int) -> tuple[int | None, str | None]:
    """The pid and host name written by the holder (`None` when unreadable)."""
    try:
        parts = os.pread(fd, 512, 0).decode("utf-8", "replace").split()
    except OSError:  # pragma: no cover
        return None, None
    pid = int(parts[0]) if parts and parts[0].isdigit() else None
    return pid, (parts[1] if len(parts) > 1 else None)


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    here = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (here.st_dev, here.st_ino)


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid runs on this host (another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - someone else's live process
        return True
    return True


@contextmanager
def hold_run_lock(
    out_dir: str | os.PathLike[str],
    dist: DistInfo | None = None,
    device: torch.device | None = None,
) -> Iterator[RunLock | None]:
    """Hold the run lock on `out_dir` (rank 0 of `dist` only) for the `with` block;
    released on every way out of it.

    Raises:
        RunLockedError: another live run holds it (on every rank).
    """
    dist = dist or DistInfo()
    lock = RunLock(out_dir) if dist.is_main else None
    failure: RunLockedError | None = None
    if lock is not None:
        try:
            lock.acquire()
        except RunLockedError as exc:
            failure = exc
    if any_rank(failure is not None, dist, device or torch.device("cpu")):
        raise failure or RunLockedError(
            f"{out_dir} is in use by another training run (rank 0 could not lock it)"
        )
    try:
        yield lock
    finally:
        if lock is not None:
            lock.release()
