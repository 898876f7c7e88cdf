"""A real SIGKILL of ``dgsnet train`` mid-epoch: rerunning the same command resumes from the
last complete checkpoint and ends with exactly the weights of an uninterrupted run."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest

from tests.helpers import make_bench
from tests.helpers.cli import (
    REPO,
    sigkill_when,
    subprocess_env,
    tiny_train_flags,
    train_command,
    train_in_subprocess,
)
from tests.helpers.training import assert_same_saved_weights

ARGS = tiny_train_flags(batch_size=2, epochs=2, save_every=1)


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
    ref = train_in_subprocess(root, tmp_path / "ref", *ARGS)
    assert ref.returncode == 0, ref.stderr
    total = steps_logged(tmp_path / "ref")
    assert total >= 8

    run = tmp_path / "run"
    proc = subprocess.Popen(
        train_command(root, run, *ARGS),
        env=subprocess_env(),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    # killed in the second epoch
    sigkill_when(proc, lambda: steps_logged(run) >= total // 2 + 1, timeout=240)
    assert proc.returncode == -signal.SIGKILL
    assert not (run / "final").exists()

    resumed = train_in_subprocess(root, run, *ARGS)
    assert resumed.returncode == 0, resumed.stderr
    assert '"event": "resume"' in (run / "train_log.jsonl").read_text()
    assert_same_saved_weights(tmp_path / "ref" / "final", run / "final")
