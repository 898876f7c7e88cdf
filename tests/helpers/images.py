"""Image files and benchmark folder trees written into a test's temporary directory."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

BENCH_CAPTIONS = [
    "a photo of a cat",
    "a dog on the grass",
    "a red car on a street",
    "a chair in a room",
]
"""The captions :func:`make_bench` cycles through."""

_counter = [0]


def write_image(path: Path, fake: bool, seed: int, size: int = 32, fmt: str | None = None) -> Path:
    """Smooth random scene; fakes carry a faint checkerboard (an up-sampling artefact)."""
    rng = np.random.default_rng(seed)
    low = rng.normal(size=(max(1, size // 8), max(1, size // 8), 3))
    x = (
        np.kron(low, np.ones((8, 8, 1)))[:size, :size] * 40
        + 128
        + rng.normal(size=(size, size, 3)) * 8
    )
    if fake:
        yy, xx = np.mgrid[:size, :size]
        x = x + ((yy + xx) % 2)[..., None] * 40 - 20
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(x, 0, 255).astype(np.uint8)).save(path, format=fmt)
    return path


def make_bench(
    root: Path,
    subsets: Sequence[str] = ("progan", "sd14"),
    n: int = 4,
    size: int = 32,
    seed: int = 0,
    captions: bool = True,
    ext: str = ".png",
) -> Path:
    """``root/<subset>/{0_real,1_fake}/NNN.png`` and, with ``captions``, the caption file
    ``<parent>/<root name>_text/<root name>.json`` (absolute keys) where ``dgsnet`` looks."""
    caps = {}
    k = seed * 1000
    for s in subsets:
        for cls in ("0_real", "1_fake"):
            for i in range(n):
                p = write_image(root / s / cls / f"{i:03d}{ext}", cls == "1_fake", k, size)
                caps[str(p.resolve())] = BENCH_CAPTIONS[k % len(BENCH_CAPTIONS)]
                k += 1
    if captions:
        d = root.parent / f"{root.name}_text"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{root.name}.json").write_text(json.dumps(caps))
    return root


def write_random_image(
    path: Path, size: tuple[int, int] = (8, 8), fmt: str | None = None, seed: int | None = None
) -> Path:
    """A small random RGB image; the format follows the extension unless ``fmt`` is given.
    Without ``seed`` each call draws a new image."""
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


def write_truncated(path: Path, fmt: str = "PNG", size: tuple[int, int] = (64, 64)) -> Path:
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
            out.append(write_random_image(folder / f"img{i:03d}{ext}"))
    return out
