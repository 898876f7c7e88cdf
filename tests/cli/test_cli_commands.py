"""``dgsnet demo`` and ``dgsnet import-released`` (synthetic released files, tiny models)."""

from __future__ import annotations

import csv
import io
import json
import os
import re

import pytest
import torch

from dgsnet.cli import main
from tests.helpers.images import write_image
from tests.helpers.released import SIZE, make_released, released_scores, save_released

pytestmark = pytest.mark.usefixtures("one_thread")

DEMO = ["--train", "8", "--test", "4", "--epochs", "1", "--batch-size", "4", "--no-progress"]


def _without_timing(text: str) -> str:
    return re.sub(r", \d+ s in all\)", ", N s in all)", text)


def test_demo_command_prints_what_python_m_dgsnet_demo_prints(capsys):
    from dgsnet import demo

    assert demo.main(DEMO) == 0
    direct = capsys.readouterr().out
    assert main(["demo", *DEMO]) == 0
    via_cli = capsys.readouterr().out
    assert "held-out accuracy after DGS fine-tuning" in direct
    assert _without_timing(via_cli) == _without_timing(direct)


def test_demo_command_rejects_bad_options(capsys):
    assert main(["demo", "--train", "1"]) == 2
    assert "expected an integer >= 2" in capsys.readouterr().err


def _predict(run, pics, capsys):
    capsys.readouterr()
    assert main(["predict", os.fspath(run), os.fspath(pics), "--quiet"]) == 0
    return list(csv.DictReader(io.StringIO(capsys.readouterr().out)))


@pytest.mark.parametrize("merged", [False, True])
def test_import_released_then_predict_equals_the_released_arithmetic(tmp_path, capsys, merged):
    from PIL import Image

    from dgsnet.training import load_trained

    path, student, heads = save_released(tmp_path, merged=merged)
    run = tmp_path / "run"
    assert main(["import-released", os.fspath(path), "-o", os.fspath(run), "--alpha", "6"]) == 0
    err = capsys.readouterr().err
    assert f"stage 2, {'merged' if merged else 'unmerged'} q/k/v weights" in err, err
    assert json.loads((run / "released_import.json").read_text())["merged"] is merged
    pics = tmp_path / "pics"
    files = [write_image(pics / f"{i}.png", bool(i % 2), i, size=72) for i in range(4)]
    rows = _predict(run, pics, capsys)
    assert [r["path"] for r in rows] == [os.fspath(f) for f in files]
    _, bundle = load_trained(run)
    x = torch.stack([bundle.eval_transform(Image.open(f)) for f in files])
    assert x.shape == (4, 3, SIZE, SIZE)
    want = released_scores(student, heads["img_fc"], x).double()
    assert 0.02 < float(want.min()) and float(want.max()) < 0.98  # not saturated
    got = torch.tensor([float(r["score"]) for r in rows], dtype=torch.float64)
    assert float((got - want).abs().max()) <= 1e-6  # the CSV has 6 decimals


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dgsnet: error: "), err
    return err[0]


def test_import_released_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    sd, *_ = make_released()
    good = tmp_path / "good.pth"
    torch.save(sd, good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    run = tmp_path / "run"
    assert main(["import-released", os.fspath(truncated), "-o", os.fspath(run)]) == 2
    assert "truncated" in one_error_line(capsys)
    assert not run.exists()
    torch.save({**sd, "img_fc.bias": "not a tensor"}, tmp_path / "string.pth")
    assert main(["import-released", os.fspath(tmp_path / "string.pth"), "-o", os.fspath(run)]) == 2
    assert "'img_fc.bias' is a str, expected a tensor" in one_error_line(capsys)
    assert main(["import-released", os.fspath(tmp_path / "nope.pth"), "-o", os.fspath(run)]) == 2
    assert "does not exist" in one_error_line(capsys)
    assert main(["import-released", os.fspath(good), "-o", os.fspath(run), "--alpha", "0"]) == 2
    assert "--alpha must be a number in (0, 10000]" in one_error_line(capsys)
    run.mkdir()
    assert main(["import-released", os.fspath(good), "-o", os.fspath(run)]) == 2
    assert "exists; choose a new run folder" in one_error_line(capsys)
    assert main(["import-released", os.fspath(good)]) == 2  # -o is required
    assert "--out" in capsys.readouterr().err
