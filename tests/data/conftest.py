"""Fixtures of the dgsnet.data tests: tiny image files and benchmark folder trees in tmp_path."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.helpers import make_tree, write_random_image, write_truncated


@pytest.fixture
def files() -> SimpleNamespace:
    """The image-file helpers of :mod:`tests.helpers.images`, as a fixture."""
    return SimpleNamespace(
        write_image=write_random_image, write_truncated=write_truncated, make_tree=make_tree
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
