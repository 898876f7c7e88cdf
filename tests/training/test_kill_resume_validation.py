"""The kill-and-resume test of `test_kill_resume.py` with validation on: a SIGKILL mid-run,
then the same command again, ends with the uninterrupted run's final weights, best/ weights,
validation.csv and validation records, bit for bit, and stops early at the same step."""

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

REPO = Path(__file__).resolve().parents[2]
ARGS = ["--model", "tiny", "--workers", "0", "--batch-size", "2", "--epochs", "3",
        "--stage1-epochs", "1", "--lr", "1e-3", "--stage1-lr", "1e-2", "--lora-dropout", "0.1",
        "--save-every", "1", "--val-every", "3", "--patience", "4", "--quiet"]  # fmt: skip


def command(root: Path, val: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "dgsnet.cli", "train", os.fspath(root), "--out",
            os.fspath(out), "--val", os.fspath(val), *ARGS]  # fmt: skip


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.fspath(REPO)}


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


def same_weights(a: Path, b: Path) -> None:
    x, y = load_file(a / "dgs_weights.safetensors"), load_file(b / "dgs_weights.safetensors")
    assert x.keys() == y.keys()
    for name in x:
        assert (x[name] == y[name]).all(), name


@pytest.mark.slow
def test_sigkill_with_validation_on_resumes_bitwise(tmp_path):
    root = make_bench(tmp_path / "train", subsets=("progan", "sd14"), n=4)
    val = make_bench(tmp_path / "val", subsets=("biggan",), n=3, seed=5, captions=False)
    ref = subprocess.run(command(root, val, tmp_path / "ref"), env=env(), cwd=REPO,
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert ref.returncode == 0, ref.stderr
    total = len(logged(tmp_path / "ref", "step"))
    ref_vals = logged(tmp_path / "ref", "validation")
    # validation every 3 steps; the patience of 4 stops the run before its 24 steps
    assert ref_vals[-1]["stopped"] and total == ref_vals[-1]["step"] < 24
    assert len(ref_vals) == total // 3

    run = tmp_path / "run"
    proc = subprocess.Popen(command(root, val, run), env=env(), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 400
    try:  # killed after a validation and a few steps into the second epoch
        while len(logged(run, "step")) < total // 2 + 2:
            assert proc.poll() is None, "the run finished before it could be killed"
            assert time.monotonic() < deadline, "the run made no progress"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert (run / "best").is_dir() and not (run / "final").exists()

    resumed = subprocess.run(command(root, val, run), env=env(), cwd=REPO,
                             capture_output=True, text=True, timeout=600)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert logged(run, "resume")
    same_weights(tmp_path / "ref" / "final", run / "final")
    same_weights(tmp_path / "ref" / "best", run / "best")
    assert (run / "validation.csv").read_text() == (tmp_path / "ref" / "validation.csv").read_text()
    strip = [{k: v for k, v in r.items() if k != "time"} for r in ref_vals]
    assert [{k: v for k, v in r.items() if k != "time"} for r in logged(run, "validation")] == strip
