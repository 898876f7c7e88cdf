"""`dgsnet eval` on test sets with single-class subsets: exit 2 naming `--allow-single-class`
without it; with it, r_acc or f_acc only, in a table of their own and in `--json`."""

from __future__ import annotations

import json
import os

import pytest

from dgsnet.cli import main
from tests.helpers import make_bench
from tests.helpers.cli import tiny_train_flags, train_argv

pytestmark = pytest.mark.usefixtures("one_thread")


def err_lines(capsys) -> list[str]:
    return [x for x in capsys.readouterr().err.splitlines() if x.strip()]


def test_eval_allow_single_class_reports_r_acc_or_f_acc_only(tmp_path, capsys):
    import shutil

    root = make_bench(tmp_path / "train", subsets=("progan",), n=2)
    run = tmp_path / "run"
    # one epoch a stage, at the command's learning rates and dropout
    flags = tiny_train_flags(lr=None, stage1_lr=None, lora_dropout=None)
    assert main(train_argv(root, run, *flags)) == 0
    test = make_bench(
        tmp_path / "test", subsets=("biggan", "dalle", "glide"), n=2, seed=3, captions=False
    )
    shutil.rmtree(test / "biggan" / "1_fake")  # real only
    shutil.rmtree(test / "dalle" / "0_real")  # fake only
    capsys.readouterr()
    code = main(["eval", os.fspath(run), os.fspath(test), "--workers", "0", "--quiet"])
    lines = err_lines(capsys)
    assert code == 2 and len(lines) == 1, lines
    assert "--allow-single-class" in lines[0] and "allow_single_class=True" not in lines[0]

    out_json = tmp_path / "eval.json"
    assert (
        main(
            [
                "eval",
                os.fspath(run),
                os.fspath(test),
                "--workers",
                "0",
                "--quiet",
                "--allow-single-class",
                "--json",
                os.fspath(out_json),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "single-class subsets" in printed and "| biggan | 2 | r_acc |" in printed
    assert "| dalle | 2 | f_acc |" in printed
    report = json.loads(out_json.read_text())
    single = report["single_class"][os.fspath(test)]
    assert single["biggan"]["metric"] == "r_acc" and single["dalle"]["metric"] == "f_acc"
    assert 0.0 <= single["biggan"]["value"] <= 1.0
    (table,) = report["roots"]
    assert "glide" in json.dumps(table) and "biggan" not in json.dumps(table)
