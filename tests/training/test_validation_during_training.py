"""Validation during training: metrics per epoch or every N steps in the run log, TensorBoard
and validation.csv, the best weights in best/, early stopping after a patience, held-out
fractions, bad settings refused; `train()` and `Trainer` take the same options."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from safetensors.torch import load_file

from dgsnet import DGSConfig, DGSWrapper
from dgsnet.data import DetectionFolder
from dgsnet.errors import TrainingConfigError
from dgsnet.training import (
    BEST_DIR,
    VALIDATION_CSV,
    Trainer,
    TrainOptions,
    build_model,
    held_out_split,
    load_trained,
    train,
)
from dgsnet.training.monitor import validation_metrics
from tests.helpers.images import make_bench

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = dict(stage1_epochs=1, batch_size=4, lr=1e-3, stage1_lr=1e-2, progress=False)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("val")
    train_root = make_bench(root / "train", n=4)
    val_root = make_bench(root / "val", subsets=("biggan",), n=3, seed=7, captions=False)
    return train_root, val_root


def setup(data, seed=0):
    bundle = build_model("tiny")
    train_ds = DetectionFolder(data[0], transform=bundle.eval_transform, captions="auto")
    val_ds = DetectionFolder(data[1], transform=bundle.eval_transform)
    torch.manual_seed(seed)
    wrapper = DGSWrapper(bundle.model, bundle.tokenizer, DGSConfig())
    return bundle, wrapper, train_ds, val_ds


def records(out, event="validation"):
    lines = (out / "train_log.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("event") == event]


def test_every_epoch_logs_writes_the_csv_and_keeps_the_best(data, tmp_path):
    bundle, wrapper, train_ds, val_ds = setup(data)
    out = tmp_path / "run"
    train(wrapper, train_ds, out, epochs=3, val_data=val_ds, model_info=bundle.info(), **SMALL)
    recs = records(out)
    assert [r["epoch"] for r in recs] == [1, 2, 3]
    assert all(set(r) >= {"acc", "ap", "best_acc", "r_acc", "f_acc", "best"} for r in recs)
    rows = list(csv.DictReader((out / VALIDATION_CSV).open()))
    assert [int(r["step"]) for r in rows] == [r["step"] for r in recs]
    assert [float(r["acc"]) for r in rows] == [r["acc"] for r in recs]
    best = max(recs, key=lambda r: r["acc"])  # the first of the best (strictly greater)
    first_best = next(r for r in recs if r["acc"] == best["acc"])
    info = json.loads((out / BEST_DIR / "best.json").read_text())
    assert info["step"] == first_best["step"] and recs[-1]["best"] == best["acc"]
    # best/ holds the weights that scored it
    again = load_trained(out / BEST_DIR)
    metrics = validation_metrics(again.wrapper, val_ds)
    assert metrics["acc"] == pytest.approx(best["acc"])


def test_every_n_steps(data, tmp_path):
    bundle, wrapper, train_ds, val_ds = setup(data)
    out = tmp_path / "run"
    train(wrapper, train_ds, out, epochs=1, val_data=val_ds, val_every=2, **SMALL)
    assert [r["step"] for r in records(out)] == [2, 4]  # 16 images / 4 = 4 steps


def test_early_stop_after_patience_and_it_stays_stopped(data, tmp_path):
    bundle, wrapper, train_ds, val_ds = setup(data)
    out = tmp_path / "run"
    opts = dict(SMALL, lr=1e-12)  # no change the metric could see: nothing improves
    train(wrapper, train_ds, out, epochs=6, val_data=val_ds, patience=2, **opts)
    recs = records(out)
    assert len(recs) == 3 and recs[-1]["stopped"] and not recs[1]["improved"]
    ends = records(out, "epoch_end")
    assert len(ends) == 3  # epochs 4..6 never ran
    before = load_file(out / "final" / "dgs_weights.safetensors")
    _, wrapper2, _, _ = setup(data)
    train(wrapper2, train_ds, out, epochs=6, val_data=val_ds, patience=2, **opts)
    assert len(records(out)) == 3 and len(records(out, "epoch_end")) == 3
    after = load_file(out / "final" / "dgs_weights.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_trainer_takes_the_same_options(data, tmp_path):
    bundle, wrapper, train_ds, val_ds = setup(data)
    opts = TrainOptions(tmp_path / "run", epochs=1, val_every=3, patience=5, **SMALL)
    Trainer(wrapper, train_ds, opts, val_data=val_ds).run()
    assert [r["step"] for r in records(tmp_path / "run")] == [3]


def test_held_out_fraction_is_seeded_per_label_and_disjoint(data):
    _, _, train_ds, _ = setup(data)
    a_train, a_val = held_out_split(train_ds, 0.25, seed=0)
    b_train, b_val = held_out_split(train_ds, 0.25, seed=0)
    _, c_val = held_out_split(train_ds, 0.25, seed=1)
    assert a_val[0].indices == b_val[0].indices != c_val[0].indices
    assert sorted(a_val[0].labels) == [0, 0, 1, 1]  # 25% of 8 real and of 8 fake
    assert not set(a_val[0].indices) & set(a_train[0].indices)
    assert len(a_train[0]) + len(a_val[0]) == len(train_ds)
    assert a_train[0].paths == [train_ds.paths[i] for i in a_train[0].indices]


def test_val_fraction_trains_on_the_rest(data, tmp_path):
    bundle, wrapper, train_ds, _ = setup(data)
    out = tmp_path / "run"
    train(wrapper, train_ds, out, epochs=1, val_fraction=0.25, **SMALL)
    assert len(records(out)) == 1
    assert records(out, "start")[0]["num_images"] == 12


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(val_metric="top1"), "val_metric 'top1' is not a metric of a binary head"),
        (dict(patience=2), "val_every and patience need validation data"),
        (dict(val_fraction=1.5), "val_fraction must be a number in \\[0, 1\\), got 1.5"),
        (dict(val_metric="loss"), "val_metric must be one of auto, acc"),
    ],
)
def test_bad_settings_are_named(data, tmp_path, kwargs, message):
    bundle, wrapper, train_ds, val_ds = setup(data)
    val = val_ds if "val_metric" in kwargs and kwargs["val_metric"] == "top1" else None
    with pytest.raises(TrainingConfigError, match=message):
        train(wrapper, train_ds, tmp_path / "run", val_data=val, **kwargs, **SMALL)


def test_resume_with_other_validation_settings_is_refused(data, tmp_path):
    bundle, wrapper, train_ds, val_ds = setup(data)
    out = tmp_path / "run"
    train(wrapper, train_ds, out, epochs=1, val_data=val_ds, **SMALL)
    with pytest.raises(TrainingConfigError, match="validation settings .* differ"):
        train(wrapper, train_ds, out, epochs=2, val_data=val_ds, val_every=2, **SMALL)
    with pytest.raises(TrainingConfigError, match="written with validation"):
        train(wrapper, train_ds, out, epochs=2, **SMALL)


def test_tensorboard_shows_the_validation_metrics(data, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    bundle, wrapper, train_ds, val_ds = setup(data)
    out = tmp_path / "run"
    train(wrapper, train_ds, out, epochs=2, val_data=val_ds, tensorboard=True, **SMALL)
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    events = acc.Scalars("validation/acc")
    assert [e.step for e in events] == [r["step"] for r in records(out)]
    assert [e.value for e in events] == pytest.approx([r["acc"] for r in records(out)])
