"""The command line on terminals that report odd sizes: a pty of 0 columns (as under `script`
or on some CI runners), with and without `COLUMNS`, and a very narrow one."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from tests.helpers.images import make_bench

ROOT = Path(__file__).resolve().parents[2]


def run_in_pty(
    args: list[str], columns: int, env_extra: dict[str, str], cwd: Path
) -> tuple[int, str]:
    """Run `python -m dgsnet ARGS` with a pty of `columns` columns as its terminal (stdin,
    stdout and stderr); returns (exit status, everything it printed)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env.update({"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **env_extra})
    proc = subprocess.Popen(
        [sys.executable, "-m", "dgsnet", *args],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        cwd=cwd,
        env=env,
        close_fds=True,
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:  # EIO: the child closed its side
            break
        if not data:
            break
        chunks.append(data)
    status = proc.wait(timeout=300)
    os.close(master)
    return status, b"".join(chunks).decode("utf-8", "replace")


def test_the_pty_reports_zero_columns(tmp_path):
    """The set-up is what it claims: the child sees a terminal of 0 columns."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 0, 0, 0))
    try:
        assert os.get_terminal_size(slave).columns == 0
    finally:
        os.close(master)
        os.close(slave)


@pytest.mark.parametrize("env_extra", [{}, {"COLUMNS": "100"}], ids=["no-COLUMNS", "COLUMNS=100"])
@pytest.mark.parametrize("args", [["--help"], ["train", "--help"], ["predict", "--help"]])
def test_help_on_a_zero_column_terminal(tmp_path, args, env_extra):
    status, out = run_in_pty(args, 0, env_extra, tmp_path)
    assert status == 0, out
    assert "usage: dgsnet" in out and "invalid width" not in out
    # laid out for 100 columns, as without a terminal
    assert max(len(line.rstrip("\r")) for line in out.splitlines()) <= 100


@pytest.mark.slow
def test_a_command_with_a_progress_bar_on_a_zero_column_terminal(tmp_path):
    make_bench(tmp_path / "data" / "train", n=2, captions=False)
    status, out = run_in_pty(["caption", "data/train", "--template"], 0, {}, tmp_path)
    assert status == 0, out
    assert (tmp_path / "data" / "train_text" / "train.json").is_file()
    assert "Traceback" not in out


def test_help_on_a_narrow_terminal_keeps_a_readable_width(tmp_path):
    status, out = run_in_pty(["train", "--help"], 12, {}, tmp_path)
    assert status == 0, out
    assert "--batch-size" in out
