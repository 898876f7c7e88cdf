"""Issue 15, the input cases: non-UTF-8 file names, bad captions (lone surrogates, empty,
duplicate keys), a checkpoint whose JSON was edited, and single-class test sets in eval."""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path

import pytest

from dgsnet.cli import main
from dgsnet.data import CaptionError, read_caption_file
from tests.helpers import make_bench, write_image

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.skipif(sys.platform != "linux", reason="byte file names: Linux"),
]

CAFE = os.fsdecode(b"caf\xe9.png")  # not UTF-8: Python spells the byte as "\udce9"


def err_lines(capsys) -> list[str]:
    return [x for x in capsys.readouterr().err.splitlines() if x.strip()]


def bench_with_latin1_name(tmp_path: Path) -> Path:
    root = make_bench(tmp_path / "train", subsets=("progan",), n=2, captions=False)
    write_image(root / "progan" / "1_fake" / CAFE, True, 99)
    return root


def test_dataset_fingerprint_hashes_a_non_utf8_file_name(tmp_path):
    from dgsnet.data import open_dataset
    from dgsnet.training.data import dataset_fingerprint

    root = bench_with_latin1_name(tmp_path)
    ds = open_dataset(root, allow_single_class=True)
    assert any(os.path.basename(p) == CAFE for p in ds.paths)
    fp = dataset_fingerprint([ds])
    assert fp["num_images"] == 5 and len(fp["sha256"]) == 64
    assert dataset_fingerprint([ds]) == fp


def test_caption_template_writes_and_reads_back_a_non_utf8_name(tmp_path, capsys):
    root = bench_with_latin1_name(tmp_path)
    out = tmp_path / "caps.json"
    assert (
        main(
            [
                "caption",
                os.fspath(root),
                "--template",
                "a photo",
                "--out",
                os.fspath(out),
                "--quiet",
            ]
        )
        == 0
    ), capsys.readouterr().err
    caps = read_caption_file(out)
    assert any(os.path.basename(k) == CAFE for k in caps)
    assert len(caps) == 5


def test_a_caption_with_a_lone_surrogate_is_rejected_naming_file_and_key(tmp_path):
    path = tmp_path / "caps.json"
    path.write_text('{"/d/a.png": "a dog", "/d/b.png": "bad \\ud800 text"}')
    with pytest.raises(CaptionError) as info:
        read_caption_file(path)
    msg = str(info.value)
    assert os.fspath(path) in msg and "/d/b.png" in msg and "surrogate" in msg


def test_empty_captions_and_duplicate_keys_warn(tmp_path):
    path = tmp_path / "caps.json"
    path.write_text('{"/d/a.png": "a dog", "/d/b.png": "  ", "/d/a.png": "a cat"}')
    with pytest.warns(UserWarning) as record:
        caps = read_caption_file(path)
    text = " | ".join(str(w.message) for w in record)
    assert "duplicate key" in text and "'/d/a.png'" in text
    assert "empty or whitespace-only" in text and "'/d/b.png'" in text
    assert caps["/d/a.png"] == "a cat"  # the last one wins, as json.loads gives it
    path.write_text('{"/d/a.png": "a dog"}')
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_caption_file(path)  # a clean file: no warning


def test_the_deprecated_caption_writer_alias_is_gone():
    import dgsnet.data._common as common

    assert not hasattr(common, "atomic_write_json")


# -- a checkpoint whose config was edited ------------------------------------------------------


@pytest.mark.parametrize(("key", "value"), [("lora_alpha", 1.0), ("normalize_features", True)])
def test_an_edited_checkpoint_config_is_refused(tmp_path, key, value):
    from dgsnet import DGSWrapper
    from dgsnet.io import CheckpointError
    from tests.helpers.models import build, open_clip_tokenizer, tiny_open_clip

    w, _ = build()
    w.save_pretrained(tmp_path)
    path = tmp_path / "dgs_config.json"
    meta = json.loads(path.read_text())
    assert meta["config"][key] != value
    meta["config"][key] = value
    path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="config was changed after"):
        DGSWrapper.from_pretrained(tmp_path, tiny_open_clip(), open_clip_tokenizer())
    with pytest.raises(CheckpointError, match="config was changed after"):
        w.load_checkpoint(tmp_path)
    del meta["config_sha256"]  # a checkpoint from before the checksum: loads as written
    path.write_text(json.dumps(meta))
    again = DGSWrapper.from_pretrained(tmp_path, tiny_open_clip(), open_clip_tokenizer())
    assert getattr(again.config, key) == value


# -- eval on single-class test sets ------------------------------------------------------------


def test_eval_allow_single_class_reports_r_acc_or_f_acc_only(tmp_path, capsys):
    import shutil

    root = make_bench(tmp_path / "train", subsets=("progan",), n=2)
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                os.fspath(root),
                "--out",
                os.fspath(run),
                "--model",
                "tiny",
                "--workers",
                "0",
                "--batch-size",
                "4",
                "--stage1-epochs",
                "1",
                "--quiet",
            ]
        )
        == 0
    )
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


def test_split_single_class_rates():
    from dgsnet.single_class import split_single_class

    two, single = split_single_class(
        {
            "mix": ([0, 1], [0.1, 0.9]),
            "real": ([0, 0, 0, 0], [0.1, 0.6, 0.5, 0.4]),
            "fake": ([1, 1], [0.7, 0.2]),
        },
        threshold=0.5,
    )
    assert list(two) == ["mix"]
    assert single["real"].metric == "r_acc" and single["real"].value == 0.75  # 0.5 is real
    assert single["fake"].metric == "f_acc" and single["fake"].value == 0.5
