"""Atomic writes and picklable errors."""

from __future__ import annotations

import os
import pickle

import pytest

from dgsnet.data._common import CorruptImageError
from dgsnet.io import atomic_write_bytes, atomic_write_text

def test_atomic_write_uses_normal_file_permissions(tmp_path):
    path = tmp_path / "a.txt"
    atomic_write_text(path, "one")
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask
    os.chmod(path, 0o640)
    atomic_write_text(path, "two")  # an existing file keeps its mode
    assert os.stat(path).st_mode & 0o777 == 0o640
    assert path.read_text() == "two"

def test_failed_atomic_write_leaves_old_file_and_no_temp(tmp_path):
    path = tmp_path / "a.bin"
    atomic_write_bytes(path, b"old")

    with pytest.raises(TypeError):
        atomic_write_bytes(path, object())  # type: ignore[arg-type]
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]

def test_corrupt_image_error_survives_pickling():
    err = pickle.loads(pickle.dumps(CorruptImageError("/data/x.png", "truncated file")))
    assert isinstance(err, CorruptImageError)
    assert err.path == "/data/x.png" and err.reason == "truncated file"
    assert "x.png" in str(err)
