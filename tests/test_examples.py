"""The examples and the packaged demo run (tiny models, no downloads) and print what they say."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMALL = ("--train", "128", "--test", "64", "--epochs", "1")


def run(*args: str, cwd: Path = ROOT) -> str:
    proc = subprocess.run(
        [sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def without_timing(out: str) -> str:
    return re.sub(r"\d+ s in all", "N s in all", out)


@pytest.mark.slow
def test_quickstart_trains_and_reports_accuracy():
    out = run("examples/quickstart.py", *SMALL)
    assert "stage 1" in out and "stage 2" in out
    assert "held-out accuracy after DGS fine-tuning" in out
    assert "removed" in out and "cos(task, harm)" in out


@pytest.mark.slow
def test_packaged_demo_runs_outside_the_checkout_and_matches_the_quickstart(tmp_path):
    # from a directory with no tests/ or examples/: the demo needs only the installed package
    demo = run("-m", "dgsnet.demo", *SMALL, "--no-progress", cwd=tmp_path)
    quickstart = run(str(ROOT / "examples" / "quickstart.py"), *SMALL, "--no-progress")
    assert without_timing(demo) == without_timing(quickstart)
    assert re.search(r"held-out accuracy after DGS fine-tuning: \d\.\d{3} \(64 images", demo)
    assert demo.count("  step ") == 1  # 128 images / batch 16 = 8 steps, one report line


def test_demo_rejects_bad_options_with_a_clear_message():
    proc = subprocess.run(
        [sys.executable, "-m", "dgsnet.demo", "--epochs", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "--epochs" in proc.stderr and "expected an integer >= 1, got 0" in proc.stderr


def test_demo_run_validates_its_arguments():
    from dgsnet.demo import run as run_demo

    with pytest.raises(ValueError, match="train must be an integer >= 2, got 1"):
        run_demo(train=1)
    with pytest.raises(ValueError, match="lr must be a positive number, got -0.1"):
        run_demo(lr=-0.1)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1, got True"):
        run_demo(batch_size=True)


def test_demo_imports_nothing_from_the_checkout():
    source = (ROOT / "dgsnet" / "demo.py").read_text()
    imports = re.findall(r"^\s*(?:from|import)\s+([\w.]+)", source, flags=re.M)
    assert imports and all(
        name.split(".")[0]
        in {"__future__", "argparse", "random", "time", "collections", "torch", "open_clip"}
        or name.startswith(".")
        for name in imports
    ), imports


def test_surgery_alone_example():
    out = run("examples/surgery_alone.py")
    assert "train accuracy" in out


def test_hf_clip_example_tiny():
    out = run("examples/hf_clip.py", "--tiny")
    assert "CLIPModel: 4 LoRA modules" in out and "step 2" in out
