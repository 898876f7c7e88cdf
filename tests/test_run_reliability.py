"""Issue 15, the run-level cases: the run lock on ``--out``, finite weights before every
commit, bounded loader workers, and the CLI's one-line errors on write failures."""

from __future__ import annotations

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

REPO = Path(__file__).resolve().parents[1]
TINY = ["--model", "tiny", "--workers", "0", "--batch-size", "2", "--stage1-epochs", "1",
        "--lr", "1e-3", "--stage1-lr", "1e-2", "--lora-dropout", "0.1", "--quiet"]

pytestmark = pytest.mark.usefixtures("one_thread")


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.fspath(REPO)}


def train_cmd(root: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "dgsnet.cli", "train", os.fspath(root), "--out", os.fspath(out),
            *TINY, *extra]


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
        assert (tmp_path / "out" / LOCK_NAME).read_text().strip() == str(os.getpid())
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
    code = ("import sys, time; from dgsnet.training.lock import RunLock; "
            "RunLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", code, os.fspath(tmp_path)], env=env(),
                            stdout=subprocess.PIPE, text=True)
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


@pytest.mark.slow
def test_second_train_into_the_same_out_exits_2_and_the_first_is_undisturbed(tmp_path):
    root = make_bench(tmp_path / "train", subsets=("progan", "sd14"), n=2)
    extra = ("--epochs", "2", "--save-every", "1")
    ref = subprocess.run(train_cmd(root, tmp_path / "ref", *extra), env=env(), cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr

    out = tmp_path / "run"
    first = subprocess.Popen(train_cmd(root, out, *extra), env=env(), cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while steps_logged(out) < 1:
            assert first.poll() is None, "the first run ended before the second could start"
            assert time.monotonic() < deadline, "the first run made no progress"
            time.sleep(0.01)
        os.kill(first.pid, signal.SIGSTOP)  # the first run holds the lock mid-epoch
        try:
            second = subprocess.run(train_cmd(root, out, *extra), env=env(), cwd=REPO,
                                    capture_output=True, text=True, timeout=300)
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
    args = ["train", os.fspath(root), "--out", os.fspath(out), *TINY, "--batch-size", "4",
            "--epochs", "1", "--lr", "1e308"]
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
