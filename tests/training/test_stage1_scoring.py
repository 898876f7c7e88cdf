"""A stage-1 result (a `train --stage 1` run, or an imported released stage-1 file) trained
only its teacher head: `load_trained`, `dgsnet predict` and `dgsnet eval` score with that
head, never with the untrained image head."""

from __future__ import annotations

import csv
import io
import json
import os
import warnings
from pathlib import Path

import pytest
import torch

from dgsnet import DGSConfig, DGSWrapper
from dgsnet.cli import main
from dgsnet.evaluation import load_trained
from dgsnet.models import build_model
from tests.helpers import make_bench, make_lora_nonzero, write_image
from tests.helpers.cli import tiny_train_flags
from tests.helpers.released_files import SIZE, stage1_file

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = tiny_train_flags(epochs=None, stage1_epochs=2, stage1_lr="5e-2", lr=None, lora_dropout=None)


def teacher_scores(ckpt: Path, spec: str, x: torch.Tensor) -> torch.Tensor:
    """sigmoid(teacher head(teacher features)), from the saved weights, without load_trained."""
    bundle = build_model(spec, flip=False)
    w = DGSWrapper.from_pretrained(ckpt, bundle.model, bundle.tokenizer).eval()
    with torch.no_grad():
        return torch.sigmoid(w.teacher_head(w.encode_teacher(x))).flatten()


def test_a_stage1_run_is_scored_with_its_teacher_head(tmp_path, capsys):
    data = make_bench(tmp_path / "train", subsets=("progan",), n=4)
    run = tmp_path / "run"
    assert main(["train", os.fspath(data), "--out", os.fspath(run), "--stage", "1", *FAST]) == 0
    pics = tmp_path / "pics"
    files = [write_image(pics / f"{i}.png", bool(i % 2), i) for i in range(4)]
    capsys.readouterr()
    assert main(["predict", os.fspath(run), os.fspath(pics), "--quiet"]) == 0
    out = capsys.readouterr()
    got = torch.tensor([float(r["score"]) for r in csv.DictReader(io.StringIO(out.out))])
    from PIL import Image

    bundle = build_model("tiny:32", flip=False)
    x = torch.stack([bundle.eval_transform(Image.open(f)) for f in files])
    want = teacher_scores(run / "final", "tiny:32", x)
    assert float((got - want).abs().max()) <= 1e-6  # the CSV has 6 decimals
    with torch.no_grad():  # the untrained image head scores something else
        untrained = DGSWrapper.from_pretrained(run / "final", build_model("tiny:32").model)
        other = torch.sigmoid(untrained.predict(x)).flatten()
    assert float((other - want).abs().max()) > 1e-3
    assert "stage-1 result" in out.err and "teacher head" in out.err  # and it says so
    with pytest.warns(UserWarning, match="stage-1 result"):
        load_trained(run)
    # eval scores the same way: its accuracy is the teacher head's
    bench = make_bench(tmp_path / "bench", subsets=("biggan",), n=6, seed=3, captions=False)
    report = tmp_path / "eval.json"
    argv = ["eval", os.fspath(run), os.fspath(bench), "--workers", "0", "--quiet"]
    assert main([*argv, "--json", os.fspath(report)]) == 0
    images = sorted((bench / "biggan").rglob("*.png"))
    labels = torch.tensor([int(p.parent.name == "1_fake") for p in images])
    x = torch.stack([bundle.eval_transform(Image.open(p)) for p in images])
    pred = (teacher_scores(run / "final", "tiny:32", x) > 0.5).long()
    row = json.loads(report.read_text())["roots"][0]["table"]["subsets"][0]
    assert row["acc"] == pytest.approx(float((pred == labels).float().mean())), row
    from dgsnet.evaluation import stage1_result

    assert "stage-1 training run" in str(stage1_result(run / "final"))


def test_an_imported_released_stage1_file_is_scored_with_its_teacher_head(tmp_path):
    from dgsnet.interop import import_released

    sd, clip, head = stage1_file()
    torch.save(sd, tmp_path / "model_epoch_step1.pth")
    run = tmp_path / "run"
    import_released(tmp_path / "model_epoch_step1.pth", run)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        wrapper, _ = load_trained(run)
    x = torch.randn(5, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = torch.sigmoid(head(clip.encode_image(x))).flatten()
        got = torch.sigmoid(wrapper.predict(x)).flatten()
    assert 0.02 < float(want.min()) and float(want.max()) < 0.98  # not saturated
    assert float((got - want).abs().max()) <= 1e-6
    assert any("released stage-1 checkpoint" in str(w.message) for w in caught)
    from dgsnet.evaluation import RELEASED_IMPORT_NAME
    from dgsnet.interop.layout import IMPORT_NAME

    assert RELEASED_IMPORT_NAME == IMPORT_NAME


def _run_folder(tmp_path: Path, stage: str, lora: bool) -> tuple[Path, DGSWrapper]:
    """A run folder written by hand: `final/` of a tiny wrapper and a run.json of `stage`."""
    bundle = build_model("tiny:32", flip=False)
    w = DGSWrapper(bundle.model, bundle.tokenizer, DGSConfig(lora_dropout=0.0))
    if lora:
        make_lora_nonzero(w)
    with torch.no_grad():
        w.teacher_head.weight.normal_(0, 1.0, generator=torch.Generator().manual_seed(4))
    run = tmp_path / f"run-{stage}-{lora}"
    w.save_pretrained(run / "final")
    (run / "final" / "dgsnet_model.json").write_text(json.dumps(bundle.info()))
    record = {"format": "dgsnet.run", "training": {"stage": stage}}
    (run / "run.json").write_text(json.dumps(record))
    return run, w.eval()


def test_a_stage1_run_started_from_trained_lora_keeps_its_image_head(tmp_path):
    """`--stage 1 --init-from` a stage-2 run: the image head was trained with that LoRA."""
    run, w = _run_folder(tmp_path, "1", lora=True)
    loaded, _ = load_trained(run)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(loaded.predict(x), w.predict(x), rtol=0, atol=0)


def test_stage2_runs_and_loose_checkpoints_are_scored_with_the_image_head(tmp_path, recwarn):
    run, w = _run_folder(tmp_path, "both", lora=False)
    loaded, _ = load_trained(run)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(loaded.predict(x), w.predict(x), rtol=0, atol=0)
    assert not [r for r in recwarn if "stage-1" in str(r.message)]
