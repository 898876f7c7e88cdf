"""Command lines the tests share: a short `dgsnet train` of the tiny model, in-process (`main`)
or in a fresh process, and killing such a process mid-run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def tiny_train_flags(
    *,
    model: str | None = "tiny",
    batch_size: int = 4,
    epochs: int | None = 1,
    stage1_epochs: int = 1,
    lr: str | None = "1e-3",
    stage1_lr: str | None = "1e-2",
    lora_dropout: str | None = "0.1",
    save_every: int | None = None,
) -> list[str]:
    """`dgsnet train` flags for a quick, quiet run without loader workers; a `None` leaves
    the flag out (the command's default then applies)."""
    values = {
        "--model": model,
        "--batch-size": batch_size,
        "--epochs": epochs,
        "--stage1-epochs": stage1_epochs,
        "--lr": lr,
        "--stage1-lr": stage1_lr,
        "--lora-dropout": lora_dropout,
        "--save-every": save_every,
    }
    flags = ["--workers", "0"]
    for flag, value in values.items():
        if value is not None:
            flags += [flag, str(value)]
    return [*flags, "--quiet"]


def train_argv(root: Path, out: Path, *flags: str) -> list[str]:
    """`dgsnet train ROOT --out OUT FLAGS...` as `dgsnet.cli.main` takes it."""
    return ["train", os.fspath(root), "--out", os.fspath(out), *flags]


def train_command(root: Path, out: Path, *flags: str) -> list[str]:
    """The same `dgsnet train` as a command line for a fresh Python process."""
    return [sys.executable, "-m", "dgsnet.cli", *train_argv(root, out, *flags)]


def subprocess_env() -> dict[str, str]:
    """The environment of a fresh process: this checkout's dgsnet first, one OpenMP thread."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.fspath(REPO)}


def train_in_subprocess(
    root: Path, out: Path, *flags: str, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """`dgsnet train` run to its end in a fresh process (`subprocess_env`), its output
    captured as text."""
    return subprocess.run(
        train_command(root, out, *flags),
        env=subprocess_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def sigkill_when(proc: subprocess.Popen, reached: Callable[[], bool], timeout: float) -> None:
    """SIGKILL `proc` as soon as `reached()` is true; fail if it ends before, or if `timeout`
    seconds pass first. Waits for the process to be gone in any case."""
    deadline = time.monotonic() + timeout
    try:
        while not reached():
            assert proc.poll() is None, "the run finished before it could be killed"
            assert time.monotonic() < deadline, "the run made no progress"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
