"""What the docs' code blocks are run against: tiny models in place of downloaded weights, and
small image folders in place of the benchmarks.

* `substitute_tiny_models()`: `open_clip.create_model_and_transforms(NAME, pretrained=...)`
  and `open_clip.get_tokenizer(NAME)` return the tiny random open_clip model of
  `dgsnet.models.build_model("tiny:56")` (always the same weights, like a real pretrained
  tag; image size 56, a multiple of 7 for the patch-selection transform) and its tokenizer,
  whatever the name, unless the name is a `local-dir:` folder or the weights a file on disk
  (a run folder's own base model, which is loaded as it is). Every other call
  (`open_clip.CLIP(...)`, Hugging Face models) is untouched. The docs' commands and
  programs then run end to end on a CPU in seconds; what they check is the code path, not
  the weights.
* `make_workspace(dir)`: the folders the docs name (`data/train`, `data/test`,
  `data/AIGIBench/{train,test}`, `data/UniversalFakeDetect`, ...: the detection layout, a few
  32x32 images per class, caption files for the training roots), `data/shapes/{train,test}`
  (ten class folders, for the classification example), a photo, a folder of
  downloads, and synthetic files in the released checkpoints' layout
  (`checkpoints/model_epoch_step{1,2}.pth`, from a tiny model).
* `python_globals(dir)`: the names the docs' Python blocks take as given (the user's model,
  loaders, a batch of images, feature tensors, labels and scores).
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.helpers.images import make_bench, write_image, write_random_image
from tests.helpers.released_files import write_released_files

ROOT = Path(__file__).resolve().parents[2]
TINY_SPEC = "tiny:56"

#: roots written with captions (a training split) and without (a test split)
TRAIN_ROOTS = ("data/train", "data/AIGIBench/train")
#: the classes of `data/shapes/{train,test}`, a class-folder layout
SHAPE_CLASSES = ("apple", "bird", "car", "cat", "chair", "dog", "flower", "horse", "house", "tree")
TEST_ROOTS = (
    "data/test",
    "data/AIGIBench/test",
    "data/UniversalFakeDetect",
    "data/AIGCDetectBenchmark",
)


def _tiny(name: str = "", pretrained: Any = None, **_: Any) -> tuple[Any, Any, Any]:
    from dgsnet.models import build_model

    bundle = build_model(TINY_SPEC)
    return bundle.model, bundle.preprocess, bundle.preprocess


def substitute_tiny_models(setattr_: Callable[[Any, str, Any], None] = setattr) -> None:
    """Patch open_clip's factory and tokenizer (with `setattr_`: `monkeypatch.setattr` in a
    test, plain `setattr` in a subprocess) so that every named model is the tiny one."""
    import open_clip

    real_tokenizer = open_clip.get_tokenizer
    if getattr(real_tokenizer, "_dgsnet_docs", False):
        return
    real_create, real_cfg = open_clip.create_model_and_transforms, open_clip.get_pretrained_cfg

    def local(name: str, pretrained: Any = None) -> bool:
        # a model folder or weights file on disk (a run folder's base model): the real thing
        return str(name).startswith("local-dir:") or (
            isinstance(pretrained, (str, os.PathLike)) and os.path.exists(pretrained)
        )

    def tokenizer(name: str = "", *args: Any, **kwargs: Any) -> Any:
        return real_tokenizer(name if local(name) else "ViT-B-32", *args, **kwargs)

    tokenizer._dgsnet_docs = True  # type: ignore[attr-defined]

    def create(name: str, pretrained: Any = None, *args: Any, **kwargs: Any) -> Any:
        if local(name, pretrained):
            return real_create(name, pretrained, *args, **kwargs)
        return _tiny(name, pretrained)

    def get_pretrained_cfg(name: str, tag: str) -> dict[str, Any]:
        return real_cfg(name, tag) if local(name, tag) else {}

    setattr_(open_clip, "create_model_and_transforms", create)
    setattr_(open_clip, "get_tokenizer", tokenizer)
    setattr_(open_clip, "get_pretrained_cfg", get_pretrained_cfg)


_TRAINED: dict[str, Path] = {}


def trained_run(cache: Path) -> Path:
    """A tiny finished `dgsnet train` run (both stages, one epoch), made once per process
    under `cache`: the `runs/dgs` of pages that use a run without training one."""
    if "run" not in _TRAINED:
        from dgsnet.cli import main

        data = make_bench(cache / "data" / "train", n=2, captions=True)
        out = cache / "runs" / "dgs"
        argv = ["train", str(data), "--out", str(out), "--model", "tiny", "--epochs", "1",
                "--stage1-epochs", "1", "--batch-size", "4", "--workers", "0", "-q"]  # fmt: skip
        if main(argv) != 0:
            raise RuntimeError("the docs tests' tiny run failed")
        _TRAINED["run"] = out
    return _TRAINED["run"]


def uses_untrained_run(text: str) -> bool:
    """Whether a page names `runs/dgs` without a command that writes it."""
    return (
        "runs/dgs" in text
        and not re.search(r"(--out|-o)\s+runs/dgs\b", text)
        and not (re.search(r"""train\([^)]*["']runs/dgs["']""", text))
    )


def make_workspace(where: Path, page_text: str = "", cache: Path | None = None) -> Path:
    """Write the docs' folders under `where` (the working directory of a page's blocks);
    with `cache`, a page that uses `runs/dgs` without training it gets a tiny trained run
    there (`trained_run`)."""
    where.mkdir(parents=True, exist_ok=True)
    if cache is not None and uses_untrained_run(page_text):
        shutil.copytree(trained_run(cache), where / "runs" / "dgs")
    for i, rel in enumerate(TRAIN_ROOTS):
        make_bench(where / rel, n=4, seed=i, captions=True)
    for i, rel in enumerate(TEST_ROOTS):
        make_bench(where / rel, subsets=("biggan", "sd14"), n=3, seed=10 + i, captions=False)
    for split, n in (("train", 2), ("test", 1)):  # a 10-class layout (docs/classification.md)
        for k, name in enumerate(SHAPE_CLASSES):
            for i in range(n):
                write_random_image(
                    where / "data" / "shapes" / split / name / f"{i}.png", (32, 32), seed=k * 10 + i
                )
    write_image(where / "photo.jpg", fake=False, seed=99)
    for i in range(3):
        write_image(where / "downloads" / f"img{i}.png", fake=bool(i % 2), seed=100 + i)
        write_image(where / "some" / "images" / f"img{i}.png", fake=bool(i % 2), seed=200 + i)
    # synthetic files in the released checkpoints' layout, in checkpoints/ and at the top
    write_released_files(where / "checkpoints")
    for name in ("model_epoch_step1.pth", "model_epoch_step2.pth"):
        (where / name).symlink_to(where / "checkpoints" / name)
    # the checkout's examples/ (preset files) and benchmarks/, which some commands name
    for name in ("examples", "benchmarks"):
        (where / name).symlink_to(ROOT / name, target_is_directory=True)
    return where


def shim_bin(where: Path) -> Path:
    """A `bin/` folder with `dgsnet` (the CLI with the tiny-model substitution, through
    `tests.helpers.docs_cli`) and `python`/`python3` (this interpreter)."""
    bin_dir = where / ".docs-bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "dgsnet").write_text(
        f'#!/bin/sh\nexec "{sys.executable}" -m tests.helpers.docs_cli "$@"\n'
    )
    (bin_dir / "dgsnet").chmod(0o755)
    refuse = (
        'echo "docs tests: a block runs pip; mark it <!-- docs-test: needs network: ... -->" >&2'
        "; exit 97"
    )
    for name in ("python", "python3"):  # a script, not a link: a venv knows itself by its path
        (bin_dir / name).write_text(
            f'#!/bin/sh\nif [ "$1" = "-m" ] && [ "$2" = "pip" ]; then {refuse}; fi\n'
            f'exec "{sys.executable}" "$@"\n'
        )
        (bin_dir / name).chmod(0o755)
    for name in ("pip", "pip3"):  # never install from a docs block into the test environment
        (bin_dir / name).write_text(f"#!/bin/sh\n{refuse}\n")
        (bin_dir / name).chmod(0o755)
    return bin_dir


def shell_env(where: Path) -> dict[str, str]:
    """The environment of a shell block: the shims first on PATH, the checkout importable,
    one thread per process, no colour."""
    env = dict(os.environ)
    tools = Path(sys.executable).parent  # torchrun, accelerate of this environment
    env["PATH"] = os.pathsep.join([str(shim_bin(where)), str(tools), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("OMP_NUM_THREADS", "1")
    env["NO_COLOR"] = "1"
    return env


def python_globals(where: Path) -> dict[str, Any]:
    """The names a page's Python blocks use without defining them (`model`, `tokenizer`,
    `preprocess`, `loader`, `stage1_loader`, `images`, `features`, `g_text`, `g_teacher`,
    `y_true`, `scores`, `y_pred`, `y_progan`, `s_progan`, ...), built on the workspace at
    `where`."""
    import numpy as np
    import open_clip
    import torch
    from torch.utils.data import DataLoader

    from dgsnet.data import DetectionFolder, collate

    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms("ViT-L-14", pretrained="openai")
    train = DetectionFolder(where / "data/train", transform=preprocess, captions="auto")
    loader = DataLoader(train, batch_size=4, shuffle=True, collate_fn=collate)
    rng = np.random.default_rng(0)
    y_true = np.array([0, 0, 0, 1, 1, 1, 0, 1])
    scores = np.clip(y_true * 0.5 + rng.uniform(0, 0.5, size=8), 0, 1)
    subset = {
        f"{v}_{name}": part
        for name, (y, s) in {"progan": (y_true, scores), "stylegan": (y_true[::-1], scores)}.items()
        for v, part in (("y", y.copy()), ("s", s.copy()))
    }
    return {
        "__name__": "__docs__",
        **subset,
        "model": model,
        "tokenizer": open_clip.get_tokenizer("ViT-L-14"),
        "preprocess": preprocess,
        "loader": loader,
        "stage1_loader": loader,
        "images": next(iter(loader)).images,
        "features": torch.randn(8, 32, requires_grad=True),
        "g_text": torch.randn(8, 32),
        "g_teacher": torch.randn(8, 32),
        "y_true": y_true,
        "scores": scores,
        "y_pred": scores,
    }
