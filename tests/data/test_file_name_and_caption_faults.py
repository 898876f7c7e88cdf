"""Faults in data files: non-UTF-8 file names (through the dataset fingerprint and `dgsnet
caption`) and bad caption files (lone surrogates, empty captions, duplicate keys)."""

from __future__ import annotations

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
