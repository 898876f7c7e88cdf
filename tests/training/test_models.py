"""The model factory (dgsnet.models) and its one CLIP preprocessing."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from dgsnet.data import default_transform
from dgsnet.models import ClipPreprocess, ModelSpec, build_model

open_clip = pytest.importorskip("open_clip")


def _image(w: int, h: int, mode: str, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    rgba = Image.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8), "RGBA")
    if mode == "RGBA":
        return rgba
    if mode == "P":
        return rgba.convert("RGB").convert("P")
    return rgba.convert(mode)


SIZES = [(32, 32), (33, 47), (250, 300), (301, 199), (17, 16), (224, 225), (500, 37)]
MODES = ["RGB", "RGBA", "L", "P", "CMYK"]


@pytest.mark.parametrize("size", [32, 224])
@pytest.mark.parametrize("mode", MODES)
def test_clip_preprocess_equals_open_clip_transform_exactly(size, mode):
    """Odd, non-square, smaller and larger than the target, every PIL mode a dataset may hold:
    the tensors are identical (no tolerance: the same torchvision/PIL operations run in the
    same order)."""
    theirs = open_clip.image_transform(size, is_train=False)
    ours = ClipPreprocess(size)
    for k, (w, h) in enumerate(SIZES):
        img = _image(w, h, mode, seed=k)
        a, b = ours(img), theirs(img)
        assert a.shape == (3, size, size) and a.dtype == torch.float32
        assert torch.equal(a, b), f"{mode} {w}x{h} -> {size}: max |diff| {(a - b).abs().max()}"


def test_default_transform_and_tiny_bundle_use_the_same_preprocessing():
    img = _image(61, 40, "RGBA", seed=3)
    expected = open_clip.image_transform(32, is_train=False)(img)
    assert torch.equal(default_transform(image_size=32)(img), expected)
    bundle = build_model("tiny")
    assert isinstance(bundle.preprocess, ClipPreprocess)
    assert torch.equal(bundle.eval_transform(img), expected)
    assert torch.equal(pickle.loads(pickle.dumps(bundle.preprocess))(img), expected)


def test_clip_preprocess_equals_create_model_and_transforms_preprocess():
    _, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)
    for k, mode in enumerate(MODES):
        img = _image(250, 300, mode, seed=10 + k)
        assert torch.equal(ClipPreprocess(224)(img), preprocess(img))


def test_model_spec_round_trips_and_training_reexports():
    import dgsnet.training as training

    assert str(ModelSpec.parse("tiny:64")) == "tiny:64"
    assert training.ModelSpec is ModelSpec and training.build_model is build_model
    assert training.ClipPreprocess is ClipPreprocess
