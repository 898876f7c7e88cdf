"""`preprocessing.json`: the steps read from the transform a detector was evaluated with, and
the exported loader's PIL/numpy implementation of them, equal to dgsnet's own tensors."""

from __future__ import annotations

import runpy
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dgsnet.data import PatchSelection
from dgsnet.data.transforms import OPENAI_CLIP_MEAN, ClipPreprocess
from dgsnet.export import describe_preprocessing
from dgsnet.export.loaders import loader_text
from dgsnet.io import atomic_write_json

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPES = [(50, 40), (40, 50), (32, 32), (20, 70), (97, 31), (16, 16)]
MODES = ["RGB", "RGBA", "L", "P", "CMYK"]


def _image(size: tuple[int, int], mode: str, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(arr).convert(mode)


def _loader(tmp_path: Path, transform, size: int) -> dict:
    """The generated load_detector.py of a folder whose preprocessing.json describes
    `transform` (the loader's preprocess reads it from its own folder)."""
    pre = describe_preprocessing(transform, image_size=(size, size), source="test")
    atomic_write_json(tmp_path / "preprocessing.json", pre)
    (tmp_path / "load_detector.py").write_text(loader_text("onnx"))
    return runpy.run_path(str(tmp_path / "load_detector.py"))


def test_clip_preprocess_steps():
    pre = describe_preprocessing(ClipPreprocess(224), image_size=(224, 224), source="t")
    assert pre["complete"] is True
    assert [s["op"] for s in pre["steps"]] == [
        "resize_shorter",
        "center_crop",
        "convert_rgb",
        "to_tensor",
        "normalize",
    ]
    assert pre["steps"][0] == {
        "op": "resize_shorter",
        "size": 224,
        "interpolation": "bicubic",
        "antialias": True,
    }
    assert pre["steps"][-1]["mean"] == list(OPENAI_CLIP_MEAN)
    assert pre["input"] == {
        "layout": "NCHW",
        "channels": "RGB",
        "dtype": "float32",
        "height": 224,
        "width": 224,
    }


def test_open_clip_transform_steps():
    import open_clip

    tf = open_clip.image_transform(64, is_train=False, mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6))
    pre = describe_preprocessing(tf, image_size=(64, 64), source="t")
    assert pre["complete"] is True
    ops = [s["op"] for s in pre["steps"]]
    assert ops == ["resize_shorter", "center_crop", "convert_rgb", "to_tensor", "normalize"]
    assert pre["steps"][-1]["std"] == pytest.approx([0.4, 0.5, 0.6])


def test_patch_selection_and_unknown_steps():
    pre = describe_preprocessing(
        PatchSelection(patch_size=8, deterministic=True), image_size=(56, 56), source="t"
    )
    (step,) = pre["steps"]
    assert step["op"] == "patch_selection" and step["patch_size"] == 8
    assert (step["n_low"], step["n_high"], step["grid"]) == (24, 25, 7)
    assert step["deterministic"] is True and step["seed"] == 0 and step["normalize"] is True
    odd = describe_preprocessing(lambda img: img, image_size=None, source="t")
    assert odd["complete"] is False and odd["steps"][0]["op"] == "unknown"


@pytest.mark.parametrize("mode", MODES)
def test_loader_equals_dgsnet_clip_preprocessing(tmp_path, mode):
    ns = _loader(tmp_path, ClipPreprocess(32), 32)
    for i, shape in enumerate(SHAPES):
        img = _image(shape, mode, i)
        want = ClipPreprocess(32)(img).numpy()
        got = ns["preprocess"](img)
        assert got.dtype == np.float32 and got.shape == want.shape
        assert np.array_equal(got, want), (mode, shape, float(np.abs(got - want).max()))


def test_loader_equals_open_clip_preprocessing(tmp_path):
    import open_clip

    tf = open_clip.image_transform(48, is_train=False)
    ns = _loader(tmp_path, tf, 48)
    for i, shape in enumerate(SHAPES):
        img = _image(shape, "RGB", i)
        assert np.array_equal(ns["preprocess"](img), tf(img).numpy()), shape


def test_loader_reads_image_files(tmp_path):
    ns = _loader(tmp_path, ClipPreprocess(32), 32)
    path = tmp_path / "x.png"
    _image((60, 45), "RGB", 0).save(path)
    with Image.open(path) as img:
        want = ClipPreprocess(32)(img).numpy()
    assert np.array_equal(ns["preprocess"](str(path)), want)


def test_loader_patch_selection_uses_dgsnet(tmp_path):
    ps = PatchSelection(patch_size=8, deterministic=True)
    ns = _loader(tmp_path, ps, 56)
    img = _image((70, 64), "RGB", 3)
    assert np.array_equal(ns["preprocess"](img), ps(img).numpy())


def test_loader_hf_processor(tmp_path):
    transformers = pytest.importorskip("transformers")
    from dgsnet.models import HFPreprocess

    proc = transformers.CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    )
    proc.save_pretrained(tmp_path)
    ns = _loader(tmp_path, HFPreprocess(proc), 32)
    img = _image((50, 41), "RGB", 4)
    want = HFPreprocess(proc)(img).numpy()
    assert np.allclose(ns["preprocess"](img), want, atol=0, rtol=0)
    assert ns["scores"](np.array([[0.0], [2.0]])).tolist() == pytest.approx(
        torch.sigmoid(torch.tensor([0.0, 2.0])).tolist()
    )
