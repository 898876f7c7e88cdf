"""`dgsnet predict --format csv|json|jsonl`, images per second in the bars of predict and eval,
and the Python call for one image (`load_trained(RUN).predict_image(path)`) against the CLI."""

from __future__ import annotations

import csv
import io
import json
import re

import pytest
from PIL import Image

from dgsnet.cli import main
from dgsnet.cli.predict_format import format_predictions
from tests.helpers.images import make_bench, write_image

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny binary run (both stages, one epoch each) and a folder of images to score."""
    root = tmp_path_factory.mktemp("predict")
    make_bench(root / "data" / "train", n=3)
    out = root / "run"
    argv = ["train", str(root / "data" / "train"), "-o", str(out), "--model", "tiny",
            "--epochs", "1", "--stage1-epochs", "1", "--batch-size", "4", "--workers", "0",
            "-q"]  # fmt: skip
    assert main(argv) == 0
    images = root / "images"
    for i in range(5):
        write_image(images / f"img{i}.png", fake=bool(i % 2), seed=40 + i)
    return out, images


def predict(capsys, *args):
    capsys.readouterr()
    assert main(["predict", *map(str, args)]) == 0
    return capsys.readouterr()


def test_the_three_formats_hold_the_same_predictions(run_dir, capsys):
    out, images = run_dir
    rows = list(csv.DictReader(io.StringIO(predict(capsys, out, images, "-q").out)))
    as_json = json.loads(predict(capsys, out, images, "--format", "json", "-q").out)
    lines = predict(capsys, out, images, "--format", "jsonl", "-q").out.splitlines()
    as_jsonl = [json.loads(line) for line in lines]
    assert len(rows) == len(as_json) == len(as_jsonl) == 5
    assert as_json == as_jsonl
    for row, rec in zip(rows, as_json, strict=True):
        assert set(rec) == {"path", "score", "label_pred"}
        assert row["path"] == rec["path"]
        assert float(row["score"]) == pytest.approx(rec["score"], abs=5e-7)
        assert int(row["label_pred"]) == rec["label_pred"] == int(rec["score"] > 0.5)


def test_format_to_a_file(run_dir, capsys, tmp_path):
    out, images = run_dir
    target = tmp_path / "p.jsonl"
    result = predict(capsys, out, images, "--format", "jsonl", "--out", target)
    assert result.out == ""
    assert len(target.read_text().splitlines()) == 5


def test_a_bad_format_is_refused(run_dir, capsys):
    out, images = run_dir
    assert main(["predict", str(out), str(images), "--format", "xml"]) == 2
    assert "invalid choice: 'xml'" in capsys.readouterr().err


def test_predict_image_equals_the_cli_score(run_dir, capsys):
    from dgsnet.training import Prediction, load_trained

    out, images = run_dir
    records = json.loads(predict(capsys, out, images, "--format", "json", "-q").out)
    detector = load_trained(out)
    wrapper, bundle = detector  # still unpacks as before
    assert wrapper is detector.wrapper and bundle is detector.bundle
    for rec in records:
        pred = detector.predict_image(rec["path"])
        assert isinstance(pred, Prediction)
        assert pred.score == pytest.approx(rec["score"], abs=1e-6)
        assert pred.label == rec["label_pred"]
        assert pred.probabilities == pytest.approx((1 - pred.score, pred.score))
        with Image.open(rec["path"]) as im:  # a PIL image: the same score
            assert detector.predict_image(im).score == pytest.approx(pred.score, abs=1e-6)
    assert detector.predict_image(records[0]["path"], threshold=1.0).label == 0
    assert not wrapper.training


def test_predict_image_refuses_what_is_not_an_image(run_dir, tmp_path):
    from dgsnet.errors import CorruptImageError
    from dgsnet.training import load_trained

    detector = load_trained(run_dir[0])
    with pytest.raises(TypeError, match="expects an image path or a PIL image, got int"):
        detector.predict_image(3)
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    with pytest.raises(CorruptImageError, match="bad.png"):
        detector.predict_image(bad)


RATE = re.compile(r"\d[\d.]*\s*(img/s|s/img)")


def test_the_bars_count_images_per_second(run_dir, capsys, tmp_path):
    out, images = run_dir
    err = predict(capsys, out, images, "--out", tmp_path / "p.csv").err
    assert RATE.search(err), err
    capsys.readouterr()
    assert main(["eval", str(out), str(images.parent / "data" / "train"), "--workers", "0"]) == 0
    err = capsys.readouterr().err
    assert RATE.search(err), err


def test_format_predictions_checks_its_input():
    with pytest.raises(ValueError, match="format must be one of csv, json, jsonl; got 'xml'"):
        format_predictions(["a"], [0.1], 0.5, "xml")
    with pytest.raises(ValueError, match="1 paths but 2 scores"):
        format_predictions(["a"], [0.1, 0.2], 0.5, "json")
    assert json.loads(format_predictions(["a"], [0.25], 0.5, "json")) == [
        {"path": "a", "score": 0.25, "label_pred": 0}
    ]
