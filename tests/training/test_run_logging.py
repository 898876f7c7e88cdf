"""``dgsnet train --tensorboard`` and ``dgsnet plot``: the event files and the figures hold
the values of ``train_log.jsonl`` (tiny model, image trees in tmp_path)."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import pytest

from dgsnet.cli import main
from tests.helpers import make_bench
from tests.helpers.cli import tiny_train_flags, train_argv

FAST = tiny_train_flags(epochs=2, stage1_epochs=2)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return make_bench(tmp_path_factory.mktemp("logging") / "train", subsets=("progan", "sd14"), n=4)


@pytest.fixture(scope="module")
def run(root, tmp_path_factory) -> Path:
    pytest.importorskip("tensorboard")
    out = tmp_path_factory.mktemp("tb") / "run"
    assert main(train_argv(root, out, "--tensorboard", *FAST)) == 0
    return out


def log_records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def events(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(os.fspath(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return acc


def scalars(acc, tag: str) -> dict[int, float]:
    found = [(e.step, e.value) for e in acc.Scalars(tag)]
    steps = [s for s, _ in found]
    assert len(steps) == len(set(steps)), f"{tag}: a step written twice: {steps}"
    return dict(found)


def expected_step_scalars(records: list[dict]) -> dict[str, dict[int, float]]:
    want: dict[str, dict[int, float]] = {}
    for r in records:
        if r["event"] != "step":
            continue
        values = {"loss/total": r["loss"], "lr": r["lr"], "skipped": float(r["skipped"])}
        values.update({f"loss/{k}": v for k, v in r["losses"].items()})
        values.update({f"surgery/{k}": v for k, v in r["stats"].items()})
        for tag, v in values.items():
            want.setdefault(tag, {})[r["step"]] = float(v)
    return want


def assert_close(got: dict[int, float], want: dict[int, float], tag: str) -> None:
    assert sorted(got) == sorted(want), tag
    for step, v in want.items():
        # event files store float32
        assert math.isclose(got[step], v, rel_tol=1e-6, abs_tol=1e-7), (tag, step, got[step], v)


def test_tensorboard_event_files_hold_the_logged_values(run):
    records = log_records(run)
    acc = events(run / "tensorboard")
    want = expected_step_scalars(records)
    # the loss parts, the surgery statistics and the lr of every step
    assert {
        "loss/total",
        "loss/image",
        "loss/text",
        "loss/align",
        "surgery/removed_fraction",
        "surgery/cos_harm",
        "surgery/cos_help",
        "lr",
    } <= set(want)
    assert set(acc.Tags()["scalars"]) == set(want) | {"epoch/epoch", "epoch/skipped_steps"}
    for tag, values in want.items():
        assert_close(scalars(acc, tag), values, tag)
    assert len(want["loss/total"]) == 8  # 16 images, batch 4, 2 epochs
    ends = [r for r in records if r["event"] == "epoch_end"]
    assert len(ends) == 2
    assert_close(scalars(acc, "epoch/epoch"), {r["step"]: r["epoch"] for r in ends}, "epoch")
    assert_close(scalars(acc, "epoch/skipped_steps"), {r["step"]: 0.0 for r in ends}, "skipped")
    stage1 = events(run / "tensorboard" / "stage1")
    want1 = {r["epoch"]: r["loss"] for r in records if r["event"] == "stage1_epoch"}
    assert len(want1) == 2
    assert_close(scalars(stage1, "stage1/loss"), want1, "stage1/loss")


def test_plot_writes_pngs_of_the_logged_values(run, tmp_path, capsys):
    from PIL import Image

    from dgsnet.plots import run_figures

    out = tmp_path / "figs"
    assert main(["plot", os.fspath(run), "-o", os.fspath(out)]) == 0
    assert "losses.png" in capsys.readouterr().err
    names = ["losses", "removed_fraction", "cosines", "lr", "run"]
    for name in names:
        f = out / f"{name}.png"
        assert f.read_bytes()[:8] == PNG_SIGNATURE, f
        with Image.open(f) as im:
            im.verify()
    with Image.open(out / "run.png") as im:
        assert im.size[0] > 400 and im.size[1] > 300
    # the plotted data is the log's
    curves = run_figures(run, tmp_path / "again")
    assert sorted(curves) == sorted(names[:-1])
    steps = [r for r in log_records(run) if r["event"] == "step"]
    xs = [r["step"] for r in steps]
    assert curves["losses"]["total"] == (xs, [r["loss"] for r in steps])
    for part in ("image", "text", "align"):
        assert curves["losses"][part] == (xs, [r["losses"][part] for r in steps])
    assert curves["removed_fraction"]["removed_fraction"] == (
        xs,
        [r["stats"]["removed_fraction"] for r in steps],
    )
    for name in ("cos_harm", "cos_help"):
        assert curves["cosines"][name] == (xs, [r["stats"][name] for r in steps])
    assert curves["lr"]["lr"] == (xs, [r["lr"] for r in steps])
    # the default folder is RUN_DIR/plots
    assert main(["plot", os.fspath(run), "--quiet"]) == 0
    assert (run / "plots" / "run.png").is_file()


def test_curves_skip_non_finite_values_and_include_distill(tmp_path):
    from dgsnet.plots import run_curves, run_figures

    log = tmp_path / "train_log.jsonl"
    recs = [
        {"event": "start", "step": 0},
        {
            "event": "step",
            "step": 1,
            "loss": 1.0,
            "losses": {"image": 0.5, "distill": 0.25},
            "stats": {},
            "lr": 0.1,
            "skipped": False,
        },
        {"event": "step", "step": 2, "loss": "nan", "skipped": True, "reason": "x", "lr": 0.1},
        {
            "event": "step",
            "step": 3,
            "loss": 0.5,
            "losses": {"image": 0.4, "distill": 0.125},
            "stats": {},
            "lr": 0.05,
            "skipped": False,
        },
    ]
    log.write_text("\n".join(json.dumps(r) for r in recs) + "\n" + '{"event": "st')
    curves = run_curves(recs)
    assert curves["losses"] == {
        "total": ([1, 3], [1.0, 0.5]),
        "image": ([1, 3], [0.5, 0.4]),
        "distill": ([1, 3], [0.25, 0.125]),
    }
    assert "cosines" not in curves and "removed_fraction" not in curves  # no surgery
    assert curves["lr"]["lr"] == ([1, 2, 3], [0.1, 0.1, 0.05])
    assert run_figures(log) == curves  # a cut last line (a killed run) is left out
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == [
        "losses.png",
        "lr.png",
        "run.png",
    ]


def test_tensorboard_after_resume_has_each_step_once(root, tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    from dgsnet.training.trainer import Trainer

    out = tmp_path / "run"
    args = train_argv(root, out, "--tensorboard", "--save-every", "2", *FAST)
    after_step = Trainer._after_step

    def interrupt(self, record, epoch, batch_i, bar):
        after_step(self, record, epoch, batch_i, bar)
        if record["step"] == 3:
            raise KeyboardInterrupt("test")

    monkeypatch.setattr(Trainer, "_after_step", interrupt)
    assert main(args) == 130
    first = events(out / "tensorboard")
    assert sorted(scalars(first, "loss/total")) == [1, 2, 3]
    monkeypatch.setattr(Trainer, "_after_step", after_step)
    assert main(args) == 0  # resumes from the checkpoint of step 2
    records = log_records(out)
    # the log was cut back to the checkpoint; steps 3.. were trained again
    assert [r["step"] for r in records if r["event"] == "step"] == list(range(1, 9))
    acc = events(out / "tensorboard")
    for tag, want in expected_step_scalars(records).items():
        assert_close(scalars(acc, tag), want, tag)


def test_missing_extras_give_one_line_and_exit_2(root, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    out = tmp_path / "run"
    assert main(train_argv(root, out, "--tensorboard", *FAST)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "dgsnet[tensorboard]" in err[0], err
    assert not out.exists()  # checked before anything is built
    from dgsnet.training.tensorboard import TensorBoardSink

    with pytest.raises(ImportError, match=r"dgsnet\[tensorboard\]"):
        TensorBoardSink(tmp_path / "tb")
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    log = tmp_path / "train_log.jsonl"
    log.write_text(json.dumps({"event": "step", "step": 1, "loss": 1.0}) + "\n")
    assert main(["plot", os.fspath(log)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "dgsnet[viz]" in err[0], err


def test_plot_errors(tmp_path, capsys):
    assert main(["plot", os.fspath(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["plot", os.fspath(tmp_path)]) == 2
    assert "no run log" in capsys.readouterr().err
    (tmp_path / "train_log.jsonl").write_text(
        json.dumps({"event": "stage1_epoch", "epoch": 1, "loss": 0.7}) + "\n"
    )
    assert main(["plot", os.fspath(tmp_path)]) == 2
    assert "no stage-2 step records" in capsys.readouterr().err


def test_train_function_takes_every_train_option():
    import dataclasses
    import inspect

    from dgsnet.training import TrainOptions, train

    params = inspect.signature(train).parameters
    assert {f.name for f in dataclasses.fields(TrainOptions)} <= set(params)
    assert params["tensorboard"].default is False
