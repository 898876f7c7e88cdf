"""Issue 15, the run-level cases: the run lock on ``--out``, finite weights before every
commit, bounded loader workers, and the CLI's one-line errors on write failures."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dgsnet.cli import main
from dgsnet.training.lock import LOCK_NAME, RunLock, RunLockedError, hold_run_lock
from tests.helpers import make_bench
from tests.helpers.cli import (
    REPO,
    subprocess_env,
    tiny_train_flags,
    train_argv,
    train_command,
    train_in_subprocess,
)

TINY = tiny_train_flags(batch_size=2, epochs=None)

pytestmark = pytest.mark.usefixtures("one_thread")


def records(out: Path) -> list[dict]:
    """The log's records without what differs between two identical runs (times, paths)."""
    drop = {"time", "elapsed_s", "final_dir", "checkpoint"}
    rows = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in drop} for r in rows]


def steps_logged(out: Path) -> int:
    try:
        text = (out / "train_log.jsonl").read_text()
    except FileNotFoundError:
        return 0
    return text.count('"event": "step"')


def err_lines(capsys) -> list[str]:
    return [x for x in capsys.readouterr().err.splitlines() if x.strip()]


# -- 1. the run lock ---------------------------------------------------------------------------


def test_lock_refuses_a_second_holder_and_names_the_pid(tmp_path):
    with hold_run_lock(tmp_path / "out"):
        assert (tmp_path / "out" / LOCK_NAME).read_text().split()[0] == str(os.getpid())
        with pytest.raises(RunLockedError) as info:
            RunLock(tmp_path / "out").acquire()
        msg = str(info.value)
        assert os.fspath(tmp_path / "out") in msg and f"process {os.getpid()}" in msg
    # released on leaving the block, an exception included
    with pytest.raises(KeyError), hold_run_lock(tmp_path / "out"):
        raise KeyError("boom")
    lock = RunLock(tmp_path / "out")
    lock.acquire()
    lock.release()


def test_lock_of_a_killed_holder_is_stale(tmp_path):
    code = (
        "import sys, time; from dgsnet.training.lock import RunLock; "
        "RunLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(600)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, os.fspath(tmp_path)],
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        with pytest.raises(RunLockedError, match=f"process {proc.pid}"):
            RunLock(tmp_path).acquire()
    finally:
        proc.kill()
        proc.wait(timeout=30)
    lock = RunLock(tmp_path)  # the kernel dropped the dead holder's lock
    lock.acquire()
    lock.release()


def test_lock_held_by_the_orphaned_workers_of_a_dead_run_is_replaced(tmp_path):
    """A forked child (like a DataLoader worker) inherits the locked file; its parent dies."""
    code = (
        "import os, sys, time; from dgsnet.training.lock import RunLock; "
        "RunLock(sys.argv[1]).acquire(); child = os.fork()\n"
        "if child == 0:\n    n = os.open(os.devnull, os.O_RDWR); os.dup2(n, 1); os.dup2(n, 2)\n"
        "    time.sleep(60); os._exit(0)\n"
        "print(child, flush=True); os._exit(0)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, os.fspath(tmp_path)],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    child = int(out.stdout.strip())
    try:
        lock = RunLock(tmp_path)
        lock.acquire()  # the holder's pid is gone: a fresh lock file, not "in use"
        with pytest.raises(RunLockedError):
            RunLock(tmp_path).acquire()
        lock.release()
    finally:
        os.kill(child, signal.SIGKILL)


@pytest.mark.slow
def test_second_train_into_the_same_out_exits_2_and_the_first_is_undisturbed(tmp_path):
    root = make_bench(tmp_path / "train", subsets=("progan", "sd14"), n=2)
    extra = ("--epochs", "2", "--save-every", "1")
    ref = train_in_subprocess(root, tmp_path / "ref", *TINY, *extra)
    assert ref.returncode == 0, ref.stderr

    out = tmp_path / "run"
    first = subprocess.Popen(
        train_command(root, out, *TINY, *extra),
        env=subprocess_env(),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 240
        while steps_logged(out) < 1:
            assert first.poll() is None, "the first run ended before the second could start"
            assert time.monotonic() < deadline, "the first run made no progress"
            time.sleep(0.01)
        os.kill(first.pid, signal.SIGSTOP)  # the first run holds the lock mid-epoch
        try:
            second = train_in_subprocess(root, out, *TINY, *extra)
        finally:
            os.kill(first.pid, signal.SIGCONT)
        _, err = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert second.returncode == 2, second.stderr
    lines = [x for x in second.stderr.splitlines() if x.strip()]
    assert len(lines) == 1, second.stderr
    assert lines[0].startswith("dgsnet: error: ")
    assert os.fspath(out) in lines[0] and f"process {first.pid}" in lines[0]
    assert first.returncode == 0, err
    assert records(out) == records(tmp_path / "ref")  # record for record


# -- 2. final weights --------------------------------------------------------------------------


def test_a_diverged_last_step_exits_1_and_commits_nothing_non_finite(tmp_path, capsys):
    # 4 images, batch 4: stage 2 has one step, whose update (lr 1e308) overflows the weights
    root = make_bench(tmp_path / "train", subsets=("progan",), n=2)
    out = tmp_path / "out"
    args = train_argv(root, out, *TINY, "--batch-size", "4", "--epochs", "1", "--lr", "1e308")
    assert main(args) == 1
    lines = err_lines(capsys)
    assert len(lines) == 1 and "non-finite" in lines[0] and "final" not in lines[0].split(";")[0]
    assert not (out / "final").exists()
    # last/ is the stage-1 checkpoint, committed before the step: finite, loadable
    from dgsnet.checkpoint import load_dgs_weights

    for name, t in load_dgs_weights(out / "last").items():
        assert t.isfinite().all(), name
    state = json.loads((out / "last" / "trainer_state.json").read_text())
    assert state["global_step"] == 0


# -- 3. loader workers -------------------------------------------------------------------------


def test_workers_are_capped_by_cpus_and_batches():
    import torch

    from dgsnet.training.data import ResumableSampler, make_loader
    from dgsnet.training.workers import bounded_workers, usable_cpus

    with pytest.warns(UserWarning, match="lowered to"):
        loader = make_loader(
            list(range(4)), ResumableSampler(4, 0), 2, 100_000, 0, torch.device("cpu"), list
        )
    assert 1 <= loader.num_workers <= min(2, usable_cpus())
    assert bounded_workers(0, 10, 2) == 0
    assert bounded_workers(1, 10, 2) == 1
    with pytest.warns(UserWarning, match=f"lowered to {usable_cpus()}"):
        assert bounded_workers(10**6, 10**6, 1) == usable_cpus()


def _session_members(sid: int) -> list[int]:
    """Pids of the live processes of session ``sid`` (from /proc, no psutil)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()  # after "pid (comm)": state ppid pgrp session
        if len(fields) > 3 and fields[0] != "Z" and int(fields[3]) == sid:
            found.append(int(entry))
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_no_loader_worker_outlives_a_crash_mid_epoch(tmp_path):
    from tests.helpers.images import write_truncated

    root = make_bench(tmp_path / "train", subsets=("progan",), n=6)
    write_truncated(root / "progan" / "1_fake" / "003.png")  # a decode error inside a worker
    cmd = train_command(root, tmp_path / "out", *TINY, "--epochs", "1")
    cmd[cmd.index("--workers") + 1] = "2"
    proc = subprocess.Popen(
        cmd,
        env=subprocess_env(),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, err
    assert "003.png" in err and "Traceback" not in err
    left = _session_members(proc.pid)
    deadline = time.monotonic() + 1.0
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = _session_members(proc.pid)
    for pid in left:  # (clean up before failing)
        os.kill(pid, signal.SIGKILL)
    assert left == [], f"loader processes outlived the command: {left}"


# -- 4. write errors ---------------------------------------------------------------------------


def _full_disk_after_first_checkpoint(monkeypatch, tmp_path):
    """From the second checkpoint commit on, every fsync fails with ENOSPC."""
    import dgsnet.io
    import dgsnet.training.trainer as trainer_module

    real_commit, real_fsync = trainer_module.commit_dir, os.fsync
    commits = []

    def commit(tmp, target):
        real_commit(tmp, target)
        commits.append(target)

    def fsync(fd):
        if commits:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(trainer_module, "commit_dir", commit)
    monkeypatch.setattr(dgsnet.io.os, "fsync", fsync)
    return commits


def test_disk_full_mid_run_is_one_line_exit_2_and_last_stays_intact(tmp_path, monkeypatch, capsys):
    from dgsnet.checkpoint import load_dgs_weights
    from dgsnet.training.state import read_state_json

    root = make_bench(tmp_path / "train", subsets=("progan",), n=2)
    out = tmp_path / "out"
    commits = _full_disk_after_first_checkpoint(monkeypatch, tmp_path)
    code = main(train_argv(root, out, *TINY, "--epochs", "2"))
    lines = err_lines(capsys)
    assert code == 2, lines
    assert len(lines) == 1 and lines[0].startswith("dgsnet: error: ")
    assert "errno 28" in lines[0] and "ENOSPC" in lines[0]
    assert os.fspath(out / "last") in lines[0] or os.fspath(out / ".last.tmp") in lines[0]
    assert len(commits) == 1  # stage 1's checkpoint; the next one failed
    monkeypatch.undo()
    state = read_state_json(out / "last" / "trainer_state.json")
    assert state["phase"] == "stage2" and state["global_step"] == 0
    assert load_dgs_weights(out / "last")  # sha256 checked


def test_tmpfs_disk_full_is_one_line_exit_2(tmp_path, capsys):
    mnt = tmp_path / "small"
    mnt.mkdir()
    # 96 KiB: one checkpoint of the tiny model fits (about 70 KiB in pages), a second not
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", os.fspath(mnt)],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        root = make_bench(tmp_path / "train", subsets=("progan",), n=2)
        code = main(train_argv(root, mnt / "out", *TINY))
        lines = err_lines(capsys)
        assert code == 2, lines
        assert len(lines) == 1 and "ENOSPC" in lines[0] and os.fspath(mnt / "out") in lines[0]
        from dgsnet.checkpoint import load_dgs_weights
        from dgsnet.training.state import read_state_json

        assert not (mnt / "out" / "final").exists()
        if (mnt / "out" / "last").exists():  # the previous checkpoint: complete and valid
            read_state_json(mnt / "out" / "last" / "trainer_state.json")
            assert load_dgs_weights(mnt / "out" / "last")
    finally:
        subprocess.run(["umount", os.fspath(mnt)], check=False)


def test_log_write_error_names_the_log(tmp_path):
    from dgsnet.training.runlog import RunLog

    log = RunLog(tmp_path / "train_log.jsonl")

    class Full:
        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

    log.fh = Full()  # type: ignore[assignment]
    with pytest.raises(OSError) as info:
        log.write({"event": "x"})
    assert info.value.errno == errno.ENOSPC
    assert info.value.filename == os.fspath(tmp_path / "train_log.jsonl")


# -- 6. flag names in train's usage errors -----------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--batch-size", "0"), ("--workers", "-1"), ("--save-every", "-2"), ("--lr-step", "0")],
)
def test_train_usage_errors_name_the_flag(tmp_path, capsys, flag, value):
    root = make_bench(tmp_path / "train", subsets=("progan",), n=1)
    code = main(train_argv(root, tmp_path / "o", "--model", "tiny", f"{flag}={value}"))
    lines = err_lines(capsys)
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"dgsnet: error: {flag} must be"), lines[0]
