"""EXIF orientation is not applied: an image is read as its pixels are stored, as open_clip's
preprocessing and the released DGS-Net loader (`Image.open(path).convert("RGB")`) read it,
so that scores stay comparable with theirs. Documented in docs/datasets.md."""

from __future__ import annotations

import numpy as np
from PIL import Image

from dgsnet.data import DetectionFolder
from dgsnet.data._common import load_image


def _rotated_jpeg(path, orientation: int = 6) -> np.ndarray:
    """A 40 x 24 JPEG whose EXIF asks viewers to rotate it (6: 90 degrees clockwise)."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(24, 40, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation  # Orientation
    Image.fromarray(pixels).save(path, quality=100, exif=exif)
    with Image.open(path) as im:
        assert im.getexif()[0x0112] == orientation
        return np.asarray(im.convert("RGB"))


def test_load_image_keeps_the_stored_orientation(tmp_path):
    stored = _rotated_jpeg(tmp_path / "x.jpg")
    img = load_image(tmp_path / "x.jpg")
    assert img.size == (40, 24)  # not (24, 40): the EXIF rotation is not applied
    assert np.array_equal(np.asarray(img), stored)


def test_datasets_read_the_stored_orientation_too(tmp_path):
    for label in ("0_real", "1_fake"):
        (tmp_path / "bench" / "s" / label).mkdir(parents=True)
        stored = _rotated_jpeg(tmp_path / "bench" / "s" / label / "a.jpg")
    ds = DetectionFolder(tmp_path / "bench", transform=lambda im: np.asarray(im), captions=None)
    assert np.array_equal(ds[1].image, stored)
