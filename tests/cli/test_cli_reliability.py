"""The command line's values: thresholds, on/off and list options in a --config file, seeds,
resize factors, and the files `dgsnet predict` leaves out of a folder. Each bad value is
one error line and exit status 2; nothing is skipped without a word."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import pytest

from dgsnet.cli import main
from tests.helpers import make_bench, write_image
from tests.helpers.cli import tiny_train_flags

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = tiny_train_flags(epochs=None, lora_dropout=None)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("clirel")
    make_bench(base / "train", subsets=("progan",), n=4)
    make_bench(base / "test", subsets=("biggan",), n=3, seed=3, captions=False)
    return base


@pytest.fixture(scope="module")
def run(data) -> Path:
    out = data / "run"
    assert main(["train", os.fspath(data / "train"), "--out", os.fspath(out), *FAST]) == 0
    return out


def cli(argv: list[str], capsys) -> tuple[int, str, list[str]]:
    """Exit status, standard output and the non-empty lines of standard error."""
    capsys.readouterr()
    code = main(argv)
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    return code, out.out, [x for x in out.err.splitlines() if x.strip()]


def one_error(lines: list[str]) -> str:
    errors = [x for x in lines if "error:" in x]
    assert len(errors) == 1, lines
    return errors[0]


# -- item 3: the decision threshold ------------------------------------------------------------


@pytest.mark.parametrize("value", ["nan", "-0.1", "1.5", "inf", "-inf", "half"])
@pytest.mark.parametrize("command", ["predict", "eval"])
def test_a_threshold_outside_0_1_is_refused_by_the_parser(run, data, capsys, command, value):
    target = data / ("test/biggan/0_real/000.png" if command == "predict" else "test")
    argv = [command, os.fspath(run), os.fspath(target), "--workers", "0", "--quiet"]
    code, out, lines = cli([*argv, f"--threshold={value}"], capsys)
    assert code == 2 and out == ""
    assert f"--threshold: expected a number in [0, 1], got '{value}'" in one_error(lines)


@pytest.mark.parametrize("value", ["0", "1", "0.25"])
def test_thresholds_inside_0_1_are_accepted(run, data, capsys, value):
    image = data / "test/biggan/1_fake/000.png"
    code, out, _ = cli(["predict", os.fspath(run), os.fspath(image), "--threshold", value], capsys)
    assert code == 0
    row = next(csv.DictReader(io.StringIO(out)))
    assert row["label_pred"] == str(int(float(row["score"]) > float(value)))


# -- items 7 and 15: values in a --config file, and the seed -----------------------------------


def train_with_config(tmp_path: Path, data: Path, config: dict, capsys) -> tuple[int, list[str]]:
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(config))
    argv = ["train", os.fspath(data / "train"), "--out", os.fspath(tmp_path / "out")]
    code, _, lines = cli([*argv, *FAST, "--config", os.fspath(path)], capsys)
    return code, lines


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"flip": "false"}, 'flip must be true or false, got str "false"'),
        ({"flip": 0}, "flip must be true or false, got int 0"),
        ({"deterministic": "yes"}, 'deterministic must be true or false, got str "yes"'),
        ({"suppression": "off"}, 'suppression must be true or false, got str "off"'),
        ({"resume": 1}, "resume must be true or false, got int 1"),
        ({"captions": 5}, "captions takes a list of values (e.g. [...]), got int 5"),
        ({"captions": "c.json"}, 'captions takes a list of values (e.g. ["c.json"])'),
        ({"subsets": "progan"}, 'subsets takes a list of values (e.g. ["progan"])'),
        ({"subsets": [1]}, "subsets must be a string, got int 1"),
        ({"lora_layers": ["0"]}, 'lora_layers must be an integer, got str "0"'),
        ({"batch_size": 4.5}, "batch_size must be an integer, got float 4.5"),
        ({"batch_size": True}, "batch_size must be an integer, got bool true"),
        ({"lr": "1e-3"}, 'lr must be a number, got str "1e-3"'),
        ({"init_from": 7}, "init_from must be a string, got int 7"),
    ],
    ids=lambda v: json.dumps(v)[:30] if isinstance(v, dict) else "",
)
def test_config_values_of_the_wrong_kind_are_refused(tmp_path, data, capsys, config, expected):
    code, lines = train_with_config(tmp_path, data, config, capsys)
    assert code == 2
    line = one_error(lines)
    assert expected in line and "recipe.json" in line, line
    assert not (tmp_path / "out" / "run.json").exists()


def test_config_values_of_the_right_kind_are_recorded_as_given(tmp_path, data, capsys):
    config = {"flip": False, "subsets": ["progan"], "lr_gamma": 1, "stage": 1, "seed": 3}
    code, lines = train_with_config(tmp_path, data, config, capsys)
    assert code == 0, lines
    options = json.loads((tmp_path / "out" / "run.json").read_text())["options"]
    assert options["flip"] is False and options["subsets"] == ["progan"]
    assert options["lr_gamma"] == 1.0 and isinstance(options["lr_gamma"], float)
    assert options["stage"] == "1" and options["seed"] == 3


@pytest.mark.parametrize("seed", [str(2**64), str(2**63), "-1"])
def test_a_seed_outside_int64_is_one_error_line(data, tmp_path, capsys, seed):
    argv = ["train", os.fspath(data / "train"), "--out", os.fspath(tmp_path / "o"), *FAST]
    code, _, lines = cli([*argv, "--seed", seed], capsys)
    assert code == 2
    assert f"--seed must be an integer in [0, 2**63 - 1], got {seed}" in one_error(lines)


# -- item 8: what a folder given to predict holds besides images ------------------------------


def test_predict_reports_what_it_skipped_in_a_folder(run, tmp_path, capsys):
    pics = tmp_path / "pics"
    scored = write_image(pics / "a.png", False, 0)
    for name in ("b.gif", "c.jfif", ".d.png", ".hidden/e.png", "notes.txt"):
        target = pics / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(scored.read_bytes())
    (pics / "linked").symlink_to(tmp_path, target_is_directory=True)
    code, out, lines = cli(["predict", os.fspath(run), os.fspath(pics), "--quiet"], capsys)
    assert code == 0
    assert [r["path"] for r in csv.DictReader(io.StringIO(out))] == [os.fspath(scored)]
    warned = [x for x in lines if "skipped" in x]
    assert len(warned) == 1, lines
    line = warned[0]
    assert f"{pics}: scored 1 image(s), skipped 6 entries" in line
    assert "3 not an image extension: b.gif, c.jfif, notes.txt" in line
    assert "2 hidden (the name starts with '.'): .d.png, .hidden/" in line
    assert "1 a linked folder (not followed): linked/" in line


def test_predict_says_nothing_when_it_scored_everything(run, data, capsys):
    code, _, lines = cli(["predict", os.fspath(run), os.fspath(data / "test"), "--quiet"], capsys)
    assert code == 0 and not [x for x in lines if "skipped" in x], lines


# -- item 17: the resize factor of eval's degradations ----------------------------------------


@pytest.mark.parametrize("value", ["1000", "4.01", "nan", "0", "-1"])
def test_eval_resize_scale_is_bounded(run, data, capsys, value):
    argv = ["eval", os.fspath(run), os.fspath(data / "test"), "--workers", "0", "--quiet"]
    code, out, lines = cli([*argv, "--resize-scale", value], capsys)
    assert code == 2 and out == ""
    assert "--resize-scale must be a number in (0, 4]" in one_error(lines)


def test_eval_resize_scale_4_is_accepted(run, data, capsys):
    argv = ["eval", os.fspath(run), os.fspath(data / "test"), "--workers", "0", "--quiet"]
    code, out, _ = cli([*argv, "--resize-scale", "4"], capsys)
    assert code == 0 and "resize4" in out
