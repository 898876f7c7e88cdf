"""Bad input to `dgsnet.data`: dataset folders with missing classes and broken files, caption
files of any bytes, bad batches to `collate`, and images of any shape and dtype to
`PatchSelection` are refused clearly or read correctly, never half-read."""

from __future__ import annotations

import io
import math
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tests.helpers.bad_input import PROFILE, raises_clearly

pytestmark = pytest.mark.usefixtures("one_thread")


FILE_KINDS = st.sampled_from(["good", "good", "corrupt", "empty", "text"])
CLASS_SPEC = st.one_of(st.none(), st.lists(FILE_KINDS, max_size=3))  # None: folder missing


def _write(path: Path, kind: str, i: int) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "good":
        Image.new("RGB", (8, 8), (i * 40 % 256, 10, 20)).save(path)
    elif kind == "corrupt":
        data = io.BytesIO()
        Image.new("RGB", (64, 64), (1, 2, 3)).save(data, format="PNG")
        path.write_bytes(data.getvalue()[:40])
    elif kind == "empty":
        path.write_bytes(b"")
    else:
        path.write_text("not an image")


@PROFILE
@given(spec=st.lists(st.tuples(CLASS_SPEC, CLASS_SPEC), min_size=1, max_size=2))
def test_detection_folder_refuses_or_reads_every_item(spec):
    from dgsnet.data import CorruptImageError, DatasetError, DetectionFolder

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        root.mkdir()
        bad_files = 0
        for s, classes in enumerate(spec):
            for cls, files in zip(("0_real", "1_fake"), classes, strict=True):
                if files is None:
                    continue
                (root / f"s{s}" / cls).mkdir(parents=True)
                for i, kind in enumerate(files):
                    _write(root / f"s{s}" / cls / f"{i}.png", kind, i)
                    bad_files += kind != "good"
        try:
            ds = DetectionFolder(root)
        except DatasetError as exc:
            assert str(exc)
            return
        loaded = 0
        for i in range(len(ds)):
            try:
                ds[i]
                loaded += 1
            except CorruptImageError as exc:
                assert ds.paths[i] in str(exc)
        assert loaded == len(ds) - bad_files
        if bad_files:
            raises_clearly(ds.verify, DatasetError)
        else:
            assert ds.verify() == []


@PROFILE
@given(
    data=st.one_of(
        st.binary(max_size=40),
        st.text(max_size=40).map(str.encode),
        st.sampled_from([b"[1]", b'{"a": 1}', b'{"a": null}', b"\xff\xfe", b"{}", b'{"a": "b"}']),
    )
)
def test_caption_file_reader(data):
    from dgsnet.data import CaptionError, read_caption_file

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "caps.json"
        path.write_bytes(data)
        try:
            captions = read_caption_file(path)
        except CaptionError as exc:
            assert str(path) in str(exc)
            return
        assert isinstance(captions, dict)
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in captions.items())


@pytest.mark.parametrize(
    "batch",
    [
        [],
        "abc",
        [1, 2],
        [(torch.zeros(3, 2, 2), "c", "x", "s", 0, "p")],
        [(torch.zeros(3, 2, 2), "c", 0, "s", 0, "p"), (torch.zeros(3, 4, 4), "c", 1, "s", 1, "p")],
    ],
)
def test_collate_refuses_bad_batches(batch):
    from dgsnet.data import collate

    raises_clearly(lambda: collate(batch), where=None)  # Sample(*item) may raise in Python


@PROFILE
@given(
    shape=st.sampled_from(
        [(3, 64, 64), (1, 64, 64), (64, 64), (4, 64, 64), (3, 0, 0), (3, 64), (2, 3, 64, 64)]
    ),
    dtype=st.sampled_from(
        [torch.uint8, torch.float32, torch.float64, torch.int64, torch.bool, torch.complex64]
    ),
    fill=st.sampled_from(["rand", "nan", "inf"]),
)
def test_patch_selection_refuses_or_returns_a_finite_image(shape, dtype, fill):
    from dgsnet.data import PatchSelection

    t = torch.rand(shape)
    if fill != "rand" and t.numel():
        t.view(-1)[0] = math.nan if fill == "nan" else math.inf
    t = (t * 255).to(dtype) if dtype == torch.uint8 and fill == "rand" else t.to(dtype)
    transform = PatchSelection(deterministic=True)
    try:
        out = transform(t)
    except (TypeError, ValueError) as exc:
        assert str(exc)
        return
    assert out.shape == (3, 224, 224) and torch.isfinite(out).all()
