"""A real SIGKILL of ``dgsnet train`` mid-epoch: rerunning the same command resumes from the
last complete checkpoint and ends with exactly the weights of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.helpers import make_bench
from tests.helpers.cli import tiny_train_flags

REPO = Path(__file__).resolve().parents[2]
ARGS = tiny_train_flags(batch_size=2, epochs=2, save_every=1)


def command(root: Path, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "dgsnet.cli",
        "train",
        os.fspath(root),
        "--out",
        os.fspath(out),
        *ARGS,
    ]


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.fspath(REPO)}


def steps_logged(out: Path) -> int:
    log = out / "train_log.jsonl"
    if not log.exists():
        return 0
    n = 0
    for line in log.read_text().splitlines():
        try:
            n += json.loads(line).get("event") == "step"
        except json.JSONDecodeError:  # a line being written
            pass
    return n


@pytest.mark.slow
def test_sigkill_mid_epoch_then_rerun_gives_the_uninterrupted_weights(tmp_path):
    root = make_bench(tmp_path / "train", subsets=("progan", "sd14"), n=4)
    ref = subprocess.run(
        command(root, tmp_path / "ref"),
        env=env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ref.returncode == 0, ref.stderr
    total = steps_logged(tmp_path / "ref")
    assert total >= 8

    run = tmp_path / "run"
    proc = subprocess.Popen(
        command(root, run),
        env=env(),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 240
    try:
        while steps_logged(run) < total // 2 + 1:  # into the second epoch
            assert proc.poll() is None, "the run finished before it could be killed"
            assert time.monotonic() < deadline, "the run made no progress"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (run / "final").exists()

    resumed = subprocess.run(
        command(root, run), env=env(), cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr
    assert '"event": "resume"' in (run / "train_log.jsonl").read_text()
    a = load_file(tmp_path / "ref" / "final" / "dgs_weights.safetensors")
    b = load_file(run / "final" / "dgs_weights.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert (a[name] == b[name]).all(), name
