"""`dgsnet plot` on a hand-edited `train_log.jsonl`: one error line naming the file, the line
and the field, never a traceback."""

from __future__ import annotations

import json
import os

import pytest

from dgsnet.cli import main

pytest.importorskip("matplotlib")


def step(n, **fields):
    rec = {"event": "step", "step": n, "loss": 0.5, "losses": {"image": 0.4}, "lr": 0.1}
    rec["stats"] = {"removed_fraction": 0.01}
    rec.update(fields)
    return json.dumps(rec)


def plot(tmp_path, lines, capsys) -> tuple[int, list[str]]:
    run = tmp_path / "run"
    run.mkdir()
    (run / "train_log.jsonl").write_text("\n".join(lines) + "\n")
    capsys.readouterr()
    code = main(["plot", os.fspath(run), "--quiet"])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, [x for x in err.splitlines() if x.strip()]


@pytest.mark.parametrize(
    ("bad", "expected"),
    [
        (json.dumps({"event": "step", "loss": 0.5}), "'step' must be a whole number, got None"),
        (step(None), "'step' must be a whole number, got None"),
        (step(1).replace('"step": 1', '"step": 1e400'), "'step' must be a whole number, got inf"),
        (step("2"), "'step' must be a whole number, got '2'"),
        (step("abc"), "'step' must be a whole number, got 'abc'"),
        (step(True), "'step' must be a whole number, got True"),
        (step(-3), "'step' must be a whole number >= 0, got -3"),
        (step(10**30), "'step' must be a whole number >= 0, got 1000000000000000000000000000000"),
        (step(2, losses=[0.1, 0.2]), "'losses' must be an object of numbers, got list [0.1, 0.2]"),
        (step(2, stats="fast"), "'stats' must be an object of numbers, got str 'fast'"),
        ("[1, 2]", "expected a JSON object, got list"),
        ("{not json", "not a JSON record"),
    ],
)
def test_a_bad_line_is_one_error_naming_file_and_line(tmp_path, capsys, bad, expected):
    code, lines = plot(tmp_path, [step(1), bad, step(3)], capsys)
    assert code == 2 and len(lines) == 1, lines
    log = tmp_path / "run" / "train_log.jsonl"
    assert f"{log}, line 2: " in lines[0] and expected in lines[0], lines[0]


def test_a_log_that_is_not_utf8_names_the_file(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "train_log.jsonl").write_bytes(step(1).encode() + b"\n\xff\xfe\n")
    capsys.readouterr()
    assert main(["plot", os.fspath(run), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"{run / 'train_log.jsonl'} is not UTF-8 text" in err, err


def test_values_that_are_not_plain_numbers_are_left_out_not_errors(tmp_path, capsys):
    lines = [
        step(1),
        step(2, loss=10**400, lr="x", losses={"image": [1]}, stats={"removed_fraction": None}),
        step(3.0),
    ]
    code, err = plot(tmp_path, lines, capsys)
    assert code == 0, err
    assert (tmp_path / "run" / "plots" / "run.png").is_file()


def test_run_curves_names_the_record(tmp_path):
    from dgsnet.plots import run_curves

    with pytest.raises(ValueError, match=r"^record 2: a step record's 'stats' must be an object"):
        run_curves([json.loads(step(1)), json.loads(step(2, stats=[1]))])
