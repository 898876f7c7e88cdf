"""A run folder's finished results are never deleted by a fresh start, and a checkpoint that a
running training replaces while it is read is read again (or reported as being written, not
as damaged)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from dgsnet import DGSConfig, DGSWrapper
from dgsnet.cli import main
from dgsnet.errors import TrainingConfigError
from dgsnet.io import CheckpointError
from dgsnet.models import build_model
from dgsnet.training.lock import RunLock
from dgsnet.training.run_folder import commit_dir, staging_dir
from tests.helpers import make_bench
from tests.helpers.cli import tiny_train_flags, train_argv

pytestmark = pytest.mark.usefixtures("one_thread")

# the tiny model's stage 1 alone, one epoch, at the command's learning rate and dropout
STAGE1 = [
    *tiny_train_flags(epochs=None, lr=None, stage1_lr=None, lora_dropout=None),
    "--stage",
    "1",
]


def snapshot(out: Path) -> dict[str, bytes]:
    """Every file under `out` (but the lock files) and its bytes."""
    return {
        os.fspath(p.relative_to(out)): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and not p.name.startswith(".dgsnet-train.lock")
    }


def error_lines(capsys) -> list[str]:
    return [x for x in capsys.readouterr().err.splitlines() if "error:" in x]


@pytest.fixture
def finished(tmp_path) -> tuple[Path, Path]:
    """(data, a finished stage-1 run whose last/ was deleted to save space)."""
    data = make_bench(tmp_path / "train", subsets=("progan",), n=2)
    out = tmp_path / "run"
    assert main(train_argv(data, out, *STAGE1)) == 0
    import shutil

    shutil.rmtree(out / "last")
    return data, out


# -- item 9: a fresh start in a folder holding a finished run ----------------------------------


def test_a_fresh_start_keeps_a_finished_run_and_names_what_exists(finished, capsys):
    data, out = finished
    before = snapshot(out)
    assert "final/dgs_weights.safetensors" in before and "summary.json" in before
    capsys.readouterr()
    assert main(train_argv(data, out, *STAGE1)) == 2
    lines = error_lines(capsys)
    assert len(lines) == 1, lines
    assert "holds a finished run (final/, train_log.jsonl, summary.json)" in lines[0]
    assert "--no-resume" in lines[0]
    assert snapshot(out) == before  # nothing deleted, nothing rewritten


def test_no_resume_is_the_explicit_way_to_start_over(finished, capsys):
    data, out = finished
    assert main(train_argv(data, out, *STAGE1, "--no-resume")) == 0
    assert (out / "final" / "dgs_config.json").is_file() and (out / "last").is_dir()


@pytest.mark.parametrize("extra", [[], ["--no-resume"]])
def test_init_from_the_output_folder_itself_is_refused(finished, capsys, extra):
    data, out = finished
    before = snapshot(out)
    capsys.readouterr()
    argv = train_argv(data, out, *STAGE1, "--init-from")
    assert main([*argv, os.fspath(out), *extra]) == 2
    lines = error_lines(capsys)
    assert len(lines) == 1 and f"lies inside the output folder {out}" in lines[0], lines
    assert snapshot(out) == before
    capsys.readouterr()
    assert main([*argv, os.fspath(out / "final"), *extra]) == 2
    assert "lies inside the output folder" in error_lines(capsys)[0]
    assert snapshot(out) == before


def test_the_python_api_keeps_a_finished_run_too(finished):
    from dgsnet.training import train

    data, out = finished
    before = snapshot(out)
    bundle = build_model("tiny:32", flip=False)
    wrapper = DGSWrapper(bundle.model, bundle.tokenizer, DGSConfig(lora_dropout=0.0))
    from dgsnet.data import DetectionFolder

    ds = DetectionFolder(data, transform=bundle.train_transform, captions=None)
    with pytest.raises(TrainingConfigError, match=r"holds a finished run \(final/"):
        train(wrapper, ds, out, stage=1, stage1_epochs=1, batch_size=4, progress=False)
    assert snapshot(out) == before


# -- item 18: reading a checkpoint while a run replaces it --------------------------------------


def _checkpoint(out: Path, seed: int) -> Path:
    """Write (or replace, as the trainer does) `out/last` with a tiny wrapper's weights."""
    bundle = build_model("tiny:32", flip=False)
    w = DGSWrapper(bundle.model, bundle.tokenizer, DGSConfig(lora_dropout=0.0))
    with torch.no_grad():
        w.image_head.weight.normal_(0, 1.0, generator=torch.Generator().manual_seed(seed))
    tmp = staging_dir(out / "last")
    w.save_pretrained(tmp)
    (tmp / "dgsnet_model.json").write_text(json.dumps(bundle.info()))
    out.mkdir(parents=True, exist_ok=True)
    commit_dir(tmp, out / "last")
    return out / "last"


def _replace_while_reading(monkeypatch, out: Path, times: int) -> list[int]:
    """Make the next `times` weight reads happen just after a run replaced `out/last`
    (its JSON was read from the previous checkpoint). Returns the seeds written."""
    import dgsnet.wrapper.checkpoint as ckpt_module

    original = ckpt_module.load_dgs_weights
    written: list[int] = []

    def racing(directory, meta=None):
        if len(written) < times:
            written.append(100 + len(written))
            _checkpoint(out, written[-1])
        return original(directory, meta)

    monkeypatch.setattr(ckpt_module, "load_dgs_weights", racing)
    return written


def _head(out: Path) -> torch.Tensor:
    from safetensors.torch import load_file

    return load_file(out / "last" / "dgs_weights.safetensors")["image_head.weight"]


def test_a_checkpoint_replaced_while_read_by_a_running_training_is_read_again(
    tmp_path, monkeypatch
):
    from dgsnet.training import load_trained

    out = tmp_path / "run"
    _checkpoint(out, 1)
    lock = RunLock(out)
    lock.acquire()  # the run that writes it
    try:
        written = _replace_while_reading(monkeypatch, out, times=1)
        wrapper, _ = load_trained(out)
    finally:
        lock.release()
    assert written == [100]
    torch.testing.assert_close(wrapper.image_head.weight.detach(), _head(out), rtol=0, atol=0)


def test_a_checkpoint_replaced_at_every_read_is_reported_as_being_written(tmp_path, monkeypatch):
    from dgsnet.training import load_trained

    out = tmp_path / "run"
    _checkpoint(out, 1)
    lock = RunLock(out)
    lock.acquire()
    try:
        _replace_while_reading(monkeypatch, out, times=5)
        with pytest.raises(CheckpointError) as info:
            load_trained(out)
    finally:
        lock.release()
    message = str(info.value)
    assert "is being written" in message and f"process {os.getpid()}" in message, message
    assert "truncated" not in message and "checksum" not in message


def test_without_a_running_training_a_mismatch_is_reported_as_damage(tmp_path, monkeypatch):
    from dgsnet.training import load_trained

    out = tmp_path / "run"
    _checkpoint(out, 1)
    lock = RunLock(out)  # a run that ended: the lock file is there, nobody holds it
    lock.acquire()
    lock.release()
    _replace_while_reading(monkeypatch, out, times=1)
    with pytest.raises(CheckpointError, match="does not match the checksum") as info:
        load_trained(out)
    assert "being written" not in str(info.value)
