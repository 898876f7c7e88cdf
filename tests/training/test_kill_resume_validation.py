"""The kill-and-resume test of `test_kill_resume.py` with validation on: a SIGKILL mid-run,
then the same command again, ends with the uninterrupted run's final weights, best/ weights,
validation.csv and validation records, bit for bit, and stops early at the same step."""

from __future__ import annotations

import json
import os
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

ARGS = [*tiny_train_flags(batch_size=2, epochs=3, save_every=1),
        "--val-every", "3", "--patience", "4"]  # fmt: skip


def logged(out: Path, event: str) -> list[dict]:
    log = out / "train_log.jsonl"
    found = []
    for line in log.read_text().splitlines() if log.exists() else []:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line being written
            continue
        if record.get("event") == event:
            found.append(record)
    return found


@pytest.mark.slow
def test_sigkill_with_validation_on_resumes_bitwise(tmp_path):
    root = make_bench(tmp_path / "train", subsets=("progan", "sd14"), n=4)
    val = make_bench(tmp_path / "val", subsets=("biggan",), n=3, seed=5, captions=False)
    args = ["--val", os.fspath(val), *ARGS]
    ref = train_in_subprocess(root, tmp_path / "ref", *args, timeout=600)
    assert ref.returncode == 0, ref.stderr
    total = len(logged(tmp_path / "ref", "step"))
    ref_vals = logged(tmp_path / "ref", "validation")
    # validation every 3 steps; the patience of 4 stops the run before its 24 steps
    assert ref_vals[-1]["stopped"] and total == ref_vals[-1]["step"] < 24
    assert len(ref_vals) == total // 3

    run = tmp_path / "run"
    proc = subprocess.Popen(train_command(root, run, *args), env=subprocess_env(), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    # killed after a validation and a few steps into the second epoch
    sigkill_when(proc, lambda: len(logged(run, "step")) >= total // 2 + 2, timeout=400)
    assert proc.returncode == -signal.SIGKILL
    assert (run / "best").is_dir() and not (run / "final").exists()

    resumed = train_in_subprocess(root, run, *args, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert logged(run, "resume")
    assert_same_saved_weights(tmp_path / "ref" / "final", run / "final")
    assert_same_saved_weights(tmp_path / "ref" / "best", run / "best")
    assert (run / "validation.csv").read_text() == (tmp_path / "ref" / "validation.csv").read_text()
    strip = [{k: v for k, v in r.items() if k != "time"} for r in ref_vals]
    assert [{k: v for k, v in r.items() if k != "time"} for r in logged(run, "validation")] == strip
