"""Helpers for the dgsnet.data tests: tiny image files and benchmark folder trees in tmp_path."""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

_counter = [0]


def write_image(path: Path, size=(8, 8), fmt: str | None = None, seed: int | None = None) -> Path:
    """A small random RGB image; the format follows the extension unless ``fmt`` is given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if seed is None:
        _counter[0] += 1
        seed = _counter[0]
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    img = Image.fromarray(arr)
    if fmt is None:
        ext = path.suffix.lower()
        fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF"}.get(ext)
        fmt = fmt or {".png": "PNG", ".bmp": "BMP", ".webp": "WEBP"}.get(ext, "PNG")
    img.save(path, format=fmt)
    return path


def write_truncated(path: Path, fmt: str = "PNG", size=(64, 64)) -> Path:
    """A file whose header is valid but whose data stops half way."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    data = buf.getvalue()
    path.write_bytes(data[: len(data) // 2])
    return path


def make_tree(root: Path, spec: dict[str, int], ext: str = ".png") -> list[Path]:
    """``spec`` maps a folder relative to ``root`` to a number of images to write there."""
    out = []
    for rel, n in spec.items():
        folder = root / rel
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            out.append(write_image(folder / f"img{i:03d}{ext}"))
    return out


@pytest.fixture
def files() -> SimpleNamespace:
    """The file helpers above, as a fixture (tests never import conftest)."""
    return SimpleNamespace(
        write_image=write_image, write_truncated=write_truncated, make_tree=make_tree
    )


@pytest.fixture
def detection_root(tmp_path: Path) -> Path:
    """Two flat subsets and one with ProGAN-style categories."""
    root = tmp_path / "bench"
    make_tree(
        root,
        {
            "biggan/0_real": 2,
            "biggan/1_fake": 3,
            "progan/car/0_real": 1,
            "progan/car/1_fake": 1,
            "progan/cat/0_real": 2,
            "progan/cat/1_fake": 1,
            "stylegan/0_real": 1,
            "stylegan/1_fake": 1,
        },
    )
    return root


@pytest.fixture
def genimage_root(tmp_path: Path) -> Path:
    root = tmp_path / "GenImage"
    make_tree(
        root,
        {
            "ADM/train/nature": 2,
            "ADM/train/ai": 2,
            "ADM/val/nature": 1,
            "ADM/val/ai": 2,
            # the distributed form with an inner folder
            "SDv14/imagenet_ai_0419_sdv4/train/nature": 1,
            "SDv14/imagenet_ai_0419_sdv4/train/ai": 1,
            "SDv14/imagenet_ai_0419_sdv4/val/nature": 3,
            "SDv14/imagenet_ai_0419_sdv4/val/ai": 1,
        },
    )
    return root
