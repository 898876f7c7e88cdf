"""The default `--workers` never exceeds the usable CPU cores, so a default run prints no
warning about it; an explicit count above the cores still warns."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from dgsnet.training import workers
from tests.helpers.images import make_bench

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("cpus, expected", [(1, 1), (2, 2), (3, 3), (64, 4)])
def test_the_default_is_four_or_the_cores(monkeypatch, cpus, expected):
    monkeypatch.setattr(workers, "usable_cpus", lambda: cpus)
    assert workers.default_workers() == expected
    from dgsnet.cli import build_parser

    sub = build_parser()._defaults["_subparsers"]
    for command in ("train", "eval"):
        args = sub[command].parse_args(["x", "y"] if command == "eval" else ["x", "-o", "o"])
        assert args.workers == expected


def test_the_batch_bound_is_silent_and_the_core_bound_warns(monkeypatch):
    monkeypatch.setattr(workers, "usable_cpus", lambda: 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert workers.bounded_workers(2, 4, 32) == 1  # one batch: one worker, no warning
        assert workers.bounded_workers(workers.default_workers(), 10**6, 1) == 2
    with pytest.warns(UserWarning, match="lowered to 2 .*usable CPU core \\(2\\)"):
        assert workers.bounded_workers(4, 10**6, 1) == 2


@pytest.mark.slow
def test_a_default_run_prints_no_worker_warning(tmp_path):
    make_bench(tmp_path / "data" / "train", n=2)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "dgsnet",
            "train",
            "data/train",
            "-o",
            "run",
            "--model",
            "tiny",
            "--stage",
            "1",
            "--stage1-epochs",
            "1",
            "--batch-size",
            "4",
            "-q",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "workers" not in proc.stderr and "warning" not in proc.stderr, proc.stderr
