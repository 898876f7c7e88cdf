"""The run lock under the stale-pid race, and a symbolic link in the lock file's place.

The race: the lock file names a dead run's pid while its orphaned loader workers still hold
the `flock` lock, and several runs start together. Each sees a stale lock and replaces the
file; without a guard around that step two of them could end up holding locks (each on its
own new file, one having unlinked the other's)."""

from __future__ import annotations

import os
import select
import socket
import time
from pathlib import Path

import pytest

from dgsnet.training.lock import LOCK_NAME, RunLock, RunLockedError

ROUNDS = 100
CONTENDERS = 4


def _dead_pid() -> int:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


def _child(body) -> int:
    """Fork a child that runs `body()` and exits (never returns into pytest)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            body()
            code = 0
        finally:
            os._exit(code)
    return pid


def _orphan(out: Path, dead: int) -> tuple[int, int]:
    """A process holding the flock on a lock file that names the dead pid `dead` (what the
    loader workers of a killed run are). Returns (pid, write end of its stop pipe: one byte
    lets it go)."""
    ready_r, ready_w = os.pipe()
    stop_r, stop_w = os.pipe()

    def hold() -> None:
        import fcntl

        fd = os.open(out / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{dead} {socket.gethostname()}\n".encode(), 0)
        os.write(ready_w, b"r")
        os.read(stop_r, 1)

    pid = _child(hold)
    assert _read(ready_r, 1) == b"r"
    for fd in (ready_r, ready_w, stop_r):
        os.close(fd)
    return pid, stop_w


def _read(fd: int, n: int, timeout: float = 60.0) -> bytes:
    """Up to `n` bytes from `fd`, failing after `timeout` seconds without any."""
    ready, _, _ = select.select([fd], [], [], timeout)
    assert ready, f"no answer within {timeout:g} s"
    return os.read(fd, n)


def _contender(out: Path, go_r: int, result_w: int, stop_r: int) -> int:
    """A run taking the lock when the parent says go; it answers W (won), L (locked out) or
    E<error>, and a winner holds the lock until the parent lets it go."""

    def run() -> None:
        os.read(go_r, 1)
        lock = RunLock(out)
        try:
            lock.acquire()
        except RunLockedError:
            os.write(result_w, b"L")
            return
        except BaseException as exc:  # reported, so that the parent fails with it
            os.write(result_w, b"E" + repr(exc)[:200].encode() + b"\n")
            return
        os.write(result_w, b"W")
        os.read(stop_r, 1)
        lock.release()

    return _child(run)


def _answers(result_r: int) -> list[str]:
    answers: list[str] = []
    buf = b""
    while len(answers) < CONTENDERS:
        buf += _read(result_r, 4096)
        while buf and len(answers) < CONTENDERS:
            if buf[:1] == b"E":
                line, sep, rest = buf.partition(b"\n")
                if not sep:
                    break
                answers.append(line.decode())
                buf = rest
            else:
                answers.append(buf[:1].decode())
                buf = buf[1:]
    return answers


def _round(out: Path) -> list[str]:
    """One race: returns each contender's answer ("W" won, "L" locked out, "E..." error).
    The pipes signal by bytes, not by closing (every child holds copies of their ends)."""
    out.mkdir()
    orphan, orphan_stop = _orphan(out, _dead_pid())
    go_r, go_w = os.pipe()
    result_r, result_w = os.pipe()
    stop_r, stop_w = os.pipe()
    pids = [_contender(out, go_r, result_w, stop_r) for _ in range(CONTENDERS)]
    try:
        os.write(go_w, b"g" * CONTENDERS)  # all start at once
        answers = _answers(result_r)
    finally:
        os.write(stop_w, b"s" * CONTENDERS)  # the winners release and exit
        for pid in pids:
            os.waitpid(pid, 0)
        os.write(orphan_stop, b"s")
        os.waitpid(orphan, 0)
        for fd in (go_r, go_w, result_r, result_w, stop_r, stop_w, orphan_stop):
            os.close(fd)
    return answers


@pytest.mark.slow
def test_exactly_one_of_several_runs_takes_a_stale_lock_held_by_orphans(tmp_path):
    bad = []
    start = time.perf_counter()
    for i in range(ROUNDS):
        answers = _round(tmp_path / f"r{i}")
        if answers.count("W") != 1 or any(a.startswith("E") for a in answers):
            bad.append((i, answers))
    elapsed = time.perf_counter() - start
    assert not bad, f"{len(bad)} of {ROUNDS} rounds without exactly one winner: {bad[:5]}"
    print(f"{ROUNDS} rounds of {CONTENDERS} contenders in {elapsed:.1f} s")


def test_a_stale_lock_held_by_orphans_is_taken_once(tmp_path):
    """One round (the fast suite's check of the stress test's path)."""
    answers = _round(tmp_path / "r")
    assert sorted(answers) == ["L"] * (CONTENDERS - 1) + ["W"]


# -- item 10: the lock file is a symbolic link --------------------------------------------------


def test_a_symlinked_lock_file_is_refused_and_its_target_untouched(tmp_path):
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_NAME).symlink_to(victim)
    with pytest.raises(RunLockedError, match="is a symbolic link") as info:
        RunLock(out).acquire()
    assert os.fspath(victim) in str(info.value)
    assert victim.read_text() == "keep me\n"


def test_a_dangling_symlinked_lock_file_creates_nothing(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_NAME).symlink_to(tmp_path / "created-by-the-lock")
    with pytest.raises(RunLockedError, match="is a symbolic link"):
        RunLock(out).acquire()
    assert not (tmp_path / "created-by-the-lock").exists()


def test_train_into_a_folder_whose_lock_file_is_a_link_exits_2(tmp_path, capsys):
    from dgsnet.cli import main
    from tests.helpers import make_bench

    data = make_bench(tmp_path / "train", subsets=("progan",), n=2)
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_NAME).symlink_to(victim)
    argv = ["train", os.fspath(data), "--out", os.fspath(out), "--model", "tiny", "--quiet"]
    assert main([*argv, "--workers", "0", "--stage", "1", "--stage1-epochs", "1"]) == 2
    err = [x for x in capsys.readouterr().err.splitlines() if "error:" in x]
    assert len(err) == 1 and "is a symbolic link" in err[0], err
    assert victim.read_text() == "keep me\n"
    assert not (out / "final").exists()
