"""A 10-class run predicts and evaluates as multi-class (one probability per class and the
argmax; top-1 and per-class accuracy); no class-1 probability is ever read as P(fake); a
binary run keeps its detection outputs."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
import torch

from dgsnet import DGSConfig, DGSWrapper
from dgsnet.cli import main
from dgsnet.data import ClassFolder
from dgsnet.errors import TrainingConfigError
from dgsnet.training import build_model, train
from tests.helpers.images import write_random_image

pytestmark = pytest.mark.usefixtures("one_thread")

CLASSES = [f"c{k}" for k in range(10)]


def make_classes(root, per_class: int, seed: int = 0):
    for k, name in enumerate(CLASSES):
        for i in range(per_class):
            write_random_image(root / name / f"{i}.png", size=(32, 32), seed=seed + 100 * k + i)
    return root


@pytest.fixture(scope="module")
def ten_class_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("multiclass")
    train_root = make_classes(root / "train", 2)
    test_root = make_classes(root / "test", 2, seed=5000)
    bundle = build_model("tiny")
    prompts = {}
    ds = ClassFolder(train_root, transform=bundle.eval_transform)
    for path, y in zip(ds.paths, ds.labels, strict=True):
        prompts[path] = f"a photo of a {ds.classes[y]}"  # class-name prompts as captions
    ds = ClassFolder(train_root, transform=bundle.eval_transform, captions=prompts)
    torch.manual_seed(0)
    dgs = DGSWrapper(bundle.model, bundle.tokenizer, DGSConfig(num_classes=10))
    out = root / "run"
    train(dgs, ds, out, epochs=1, stage1_epochs=1, batch_size=8, model_info=bundle.info(),
          progress=False)  # fmt: skip
    return out, test_root


def cli(capsys, *args):
    capsys.readouterr()
    code = main([*map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_predict_writes_one_probability_per_class_and_the_argmax(ten_class_run, capsys):
    out, test_root = ten_class_run
    code, text, err = cli(capsys, "predict", out, test_root, "-q")
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == 20
    assert list(rows[0]) == ["path", *(f"prob_{k}" for k in range(10)), "label_pred"]
    for row in rows:
        probs = [float(row[f"prob_{k}"]) for k in range(10)]
        assert sum(probs) == pytest.approx(1.0, abs=1e-5)
        assert int(row["label_pred"]) == int(np.argmax(probs))
    assert "score" not in text.splitlines()[0] and "fake" not in text
    code, text, _ = cli(capsys, "predict", out, test_root, "--format", "jsonl", "-q")
    first = json.loads(text.splitlines()[0])
    assert set(first) == {"path", "probabilities", "label_pred"}
    assert len(first["probabilities"]) == 10


def test_eval_reports_top1_and_per_class_accuracy(ten_class_run, capsys, tmp_path):
    out, test_root = ten_class_run
    js = tmp_path / "r.json"
    code, text, err = cli(capsys, "eval", out, test_root, "--workers", "0", "--json", js, "-q")
    assert code == 0, err
    assert "top-1 accuracy" in text and "mean per-class accuracy" in text
    assert "r_acc" not in text and "f_acc" not in text and "ap" not in text.split()
    for name in CLASSES:
        assert f"| {name} " in text
    report = json.loads(js.read_text())["roots"][0]["report"]
    assert report["n"] == 20 and len(report["classes"]) == 10
    # the numbers are those of the predictions
    code, ptext, _ = cli(capsys, "predict", out, test_root, "-q")
    rows = list(csv.DictReader(io.StringIO(ptext)))
    truth = [CLASSES.index(r["path"].split("/")[-2]) for r in rows]
    hits = sum(int(r["label_pred"]) == y for r, y in zip(rows, truth, strict=True))
    assert report["top1"] == pytest.approx(hits / 20)


def test_detection_only_options_are_refused_for_a_classifier(ten_class_run, capsys):
    out, test_root = ten_class_run
    code, _, err = cli(capsys, "eval", out, test_root, "--allow-single-class", "-q")
    assert code == 2 and "apply to binary real/fake heads" in err and "10 classes" in err


def test_a_root_with_other_classes_is_named(ten_class_run, capsys, tmp_path):
    out, _ = ten_class_run
    for name in ("a", "b"):
        write_random_image(tmp_path / "few" / name / "0.png", size=(32, 32))
    code, _, err = cli(capsys, "eval", out, tmp_path / "few", "--workers", "0", "-q")
    assert code == 2 and "has 2 classes (a, b), the model 10" in err


def test_the_python_api_never_calls_a_class_probability_p_fake(ten_class_run):
    from dgsnet.training import (
        evaluate,
        evaluate_classifier,
        load_trained,
        predict_probabilities,
        predict_scores,
    )

    out, test_root = ten_class_run
    detector = load_trained(out)
    wrapper, bundle = detector
    ds = ClassFolder(test_root, transform=bundle.eval_transform)
    with pytest.raises(TrainingConfigError, match="10 classes.*use predict_probabilities"):
        predict_scores(wrapper, ds)
    with pytest.raises(TrainingConfigError, match="use evaluate_classifier"):
        evaluate(wrapper, [test_root])
    probs, labels, _, paths = predict_probabilities(wrapper, ds)
    assert probs.shape == (20, 10)
    report = evaluate_classifier(wrapper, [test_root], bundle.eval_transform)[str(test_root)]
    assert report.top1 == pytest.approx(float((probs.argmax(1) == labels).mean()))
    pred = detector.predict_image(paths[0])
    assert pred.label == int(probs[0].argmax())
    assert pred.probabilities == pytest.approx(tuple(probs[0]), abs=1e-6)
    assert pred.score == pytest.approx(probs[0].max(), abs=1e-6)
