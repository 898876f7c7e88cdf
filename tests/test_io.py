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


def test_json_safe_converts_what_dgsnet_writes():
    import json
    import math
    from pathlib import Path

    import numpy as np
    import torch

    from dgsnet.io import json_safe

    raw = {
        "path": Path("a/b"),
        "tuple": (1, 2.5),
        "set": {3, 1, 2},
        "nan": float("nan"),
        "inf": [float("inf"), -math.inf],
        "np_int": np.int64(7),
        "np_float": np.float32(0.5),
        "np_array": np.arange(3),
        "scalar_tensor": torch.tensor([1.25]),
        "tensor": torch.tensor([[1, 2], [3, 4]]),
        4: True,
        "none": None,
    }
    safe = json_safe(raw)
    assert safe == {
        "path": "a/b",
        "tuple": [1, 2.5],
        "set": [1, 2, 3],
        "nan": "nan",
        "inf": ["inf", "-inf"],
        "np_int": 7,
        "np_float": 0.5,
        "np_array": [0, 1, 2],
        "scalar_tensor": 1.25,
        "tensor": [[1, 2], [3, 4]],
        "4": True,
        "none": None,
    }
    assert type(safe["np_int"]) is int
    json.dumps(safe, allow_nan=False)  # strict JSON
    kept = json_safe({"x": float("nan")}, finite=False)["x"]
    assert isinstance(kept, float) and math.isnan(kept)


def test_json_safe_private_entries_and_unknown_types():
    from dgsnet.io import json_safe

    namespace = {"lr": 0.1, "_subparsers": [1], "func": print, "nested": {"_x": 1, "y": 2}}
    assert json_safe(namespace, drop_private=True) == {"lr": 0.1, "nested": {"y": 2}}
    assert "func" in json_safe(namespace, default=str)
    with pytest.raises(TypeError, match="object"):
        json_safe({"a": object()})
    assert json_safe({"a": object()}, default=lambda o: "obj") == {"a": "obj"}
