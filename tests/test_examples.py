"""The examples run (tiny models, no downloads) and print what they promise."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str) -> str:
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.slow
def test_quickstart_trains_and_reports_accuracy():
    out = run("examples/quickstart.py", "--train", "128", "--test", "64", "--epochs", "1")
    assert "stage 1" in out and "stage 2" in out
    assert "held-out accuracy after DGS fine-tuning" in out
    assert "removed" in out and "cos(task, harm)" in out


def test_surgery_alone_example():
    out = run("examples/surgery_alone.py")
    assert "train accuracy" in out


def test_hf_clip_example_tiny():
    out = run("examples/hf_clip.py", "--tiny")
    assert "CLIPModel: 4 LoRA modules" in out and "step 2" in out
