"""Writing a dgsnet run folder (`write_run_folder`) and turning a released checkpoint into
one (`import_released`, the `dgsnet import-released` command)."""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import CheckpointError
from ..io import atomic_write_json, save_tensors
from ..training.lock import pid_alive
from .building import build_clip, check_base, load_base, wrap_released
from .layout import (
    BASE_DIR,
    FINAL_DIR,
    IMPORT_NAME,
    RELEASED_ALPHA,
    RELEASED_DROPOUT,
    TEACHER1,
    TEACHER2,
    ReleasedImport,
)
from .reading import read_released

__all__ = ["import_released", "remove_stale_staging", "write_run_folder"]


def write_run_folder(
    wrapper: Any,
    out_dir: str | os.PathLike[str],
    *,
    model_spec: str | None = None,
    base: Mapping[str, Tensor] | None = None,
    model_config: Mapping[str, Any] | None = None,
    image_size: int | None = None,
) -> Path:
    """Write `wrapper` as a dgsnet run folder that `dgsnet eval` / `dgsnet predict`
    (and `dgsnet.training.load_trained`) accept, recording the released preprocessing.

    Layout: `OUT/final/` (`dgs_weights.safetensors`, `dgs_config.json`,
    `dgsnet_model.json`), `OUT/released_import.json` (what was imported) and, when the base
    CLIP is stored (`base` and `model_config` given), `OUT/base_model/` (an open_clip
    `local-dir` folder: `open_clip_config.json`, `open_clip_model.safetensors`) which
    `dgsnet_model.json` names by a path relative to `final/`, so the folder can be moved.
    Otherwise `model_spec` (e.g. `ViT-L-14-quickgelu@openai`) names the base model.
    The preprocessing recorded: `patch-selection` (49 patches of `image_size / 7`
    pixels, the 24 lowest and 25 highest by spectral entropy, tiled; ImageNet mean/std), no
    flip.

    The folder is assembled beside `out_dir` (`.<name>.tmp-<host>-<pid>`) and renamed into
    place at the end; the staging folders of killed writers are removed first
    (`remove_stale_staging`). An existing `out_dir`, or a symbolic link there, is refused.

    Args:
        wrapper: the wrapper to save (`wrapper.released_import` is recorded if present).
        out_dir: the run folder to create.
        model_spec: the base model's spec, when `base` is not stored.
        base: the pristine CLIP's state dict (open_clip names) to store.
        model_config: its open_clip config (with `base`).
        image_size: the model's input size (default: the wrapper's encoder's).

    Returns:
        `out_dir`.

    Raises:
        FileExistsError: `out_dir` exists or is a symbolic link.
        ValueError: neither `model_spec` nor `base` + `model_config` given.
    """
    out = Path(out_dir)
    _check_new_folder(out)
    stored = base is not None and model_config is not None
    if not stored and not model_spec:
        raise ValueError("write_run_folder needs model_spec, or base and model_config")
    image_size = _patch_image_size(wrapper, image_size)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(out)
    tmp = out.parent / f"{_staging_prefix(out)}{socket.gethostname()}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        spec = model_spec
        if stored:
            assert base is not None and model_config is not None
            spec = _write_base(tmp / BASE_DIR, base, model_config)
        wrapper.save_pretrained(tmp / FINAL_DIR)
        _write_model_info(tmp, wrapper, spec, image_size)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _check_new_folder(out: Path) -> None:
    """Refuse an `out` that exists, a symbolic link included (even one to nothing: the
    folder would be renamed over the link, and the error would name the staging folder).

    Raises:
        FileExistsError: naming `out` (and the link's target).
    """
    if out.is_symlink():
        raise FileExistsError(
            f"{out} is a symbolic link (to {os.readlink(out)}); choose a new run folder"
        )
    if out.exists():
        raise FileExistsError(f"{out} exists; choose a new run folder")


def _staging_prefix(out: Path) -> str:
    return f".{out.name}.tmp-"


def remove_stale_staging(out: str | os.PathLike[str]) -> list[Path]:
    """Delete the staging folders that writers of `out` killed on this host left beside it.

    A run folder is assembled in `.<name>.tmp-<host>-<pid>` next to `out` and renamed into
    place; a writer killed by `kill -9` leaves that folder (with its partial copy of the
    base model) behind. Those whose process no longer runs on this host are removed
    (`.<name>.tmp-<pid>`, the name before the host was recorded, counts as this host's).

    Returns:
        The folders removed.
    """
    out = Path(out)
    prefix, host = _staging_prefix(out), socket.gethostname()
    removed = []
    for folder in sorted(out.parent.glob(prefix + "*")):
        owner, _, pid = folder.name[len(prefix) :].rpartition("-")
        if not pid.isdigit() or owner not in ("", host) or pid_alive(int(pid)):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


def _patch_image_size(wrapper: Any, image_size: int | None) -> int:
    """`image_size`, or the wrapper's encoder's input size; a multiple of 7 (the 7x7 tiles of
    the released preprocessing), else `ValueError`."""
    if image_size is None:
        size = wrapper.encoder.image_size
        image_size = int(size[0]) if size else None
    if image_size is None or image_size % 7:
        raise ValueError(
            f"the released patch-selection preprocessing tiles 7x7 patches: the model's image "
            f"size must be a multiple of 7, got {image_size}"
        )
    return image_size


def _write_base(folder: Path, base: Mapping[str, Tensor], model_config: Mapping[str, Any]) -> str:
    """Store the base CLIP as an open_clip `local-dir` folder; return its spec relative to
    `final/`."""
    from ..data import IMAGENET_MEAN, IMAGENET_STD

    save_tensors(
        folder / "open_clip_model.safetensors",
        {k: v.detach().contiguous() for k, v in base.items()},
    )
    atomic_write_json(
        folder / "open_clip_config.json",
        {
            "model_cfg": dict(model_config),
            "preprocess_cfg": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
        },
    )
    return f"local-dir:../{folder.name}"  # relative to final/


def _write_model_info(tmp: Path, wrapper: Any, spec: str | None, image_size: int) -> None:
    """Write `final/dgsnet_model.json` (the base model's spec and the released preprocessing)
    and, for an imported wrapper, `released_import.json`."""
    from ..data import IMAGENET_MEAN, IMAGENET_STD
    from ..wrapper.checkpoint import MODEL_INFO_NAME

    info = getattr(wrapper, "released_import", None)
    model_info = {
        "format": "dgsnet.model",
        "spec": spec,
        "transform": "patch-selection",
        "flip": False,
        "image_size": image_size,
        "patch_size": image_size // 7,
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "source": "released DGS-Net checkpoint" if info is not None else "dgsnet",
    }
    atomic_write_json(tmp / FINAL_DIR / MODEL_INFO_NAME, model_info)
    if info is not None:
        atomic_write_json(tmp / IMPORT_NAME, info.to_dict())


def import_released(
    path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    model: str | None = None,
    alpha: float = RELEASED_ALPHA,
    dropout: float = RELEASED_DROPOUT,
    head_width: int = 64,
    quick_gelu: bool = True,
) -> ReleasedImport:
    """Turn a released checkpoint into a dgsnet run folder (`dgsnet import-released`).

    Args:
        path: the released `.pth` file.
        out_dir: the run folder to create (must not exist).
        model: optional model spec (e.g. `ViT-L-14-quickgelu@openai`). `None`: the file's
            pristine CLIP is stored in the folder (`base_model/`), nothing is downloaded.
            With a spec, the spec's weights must equal the file's pristine CLIP (checked);
            the folder then refers to the spec instead of storing the weights.
        alpha, dropout, head_width, quick_gelu: as in `load_released`.

    Returns:
        What was imported (also in `OUT/released_import.json`).

    Raises:
        CheckpointError: a bad file (see `read_released`), or a `model` whose weights
            are not the file's pristine CLIP.
        FileExistsError: `out_dir` exists or is a symbolic link.
    """
    out = Path(out_dir)
    _check_new_folder(out)
    ckpt = read_released(path, alpha=alpha, head_width=head_width, quick_gelu=quick_gelu)
    prefix = TEACHER2 if ckpt.info.stage == 2 else TEACHER1
    if model is None:
        import open_clip

        net = build_clip(ckpt.info.model_config)
        load_base(Path(path), net, ckpt.base, prefix)
        base = {k: v.detach().clone() for k, v in net.state_dict().items()}
        wrapper = wrap_released(ckpt, net, open_clip.get_tokenizer("ViT-L-14"), dropout)
        write_run_folder(wrapper, out, base=base, model_config=ckpt.info.model_config)
    else:
        from ..models import build_model

        bundle = build_model(model, transform="patch-selection", flip=False)
        own = bundle.model.state_dict()
        check_base(Path(path), own, ckpt.base, prefix)
        for k, v in own.items():
            if not torch.equal(v, ckpt.base[k].to(v.dtype)):
                raise CheckpointError(
                    f"{path}: {prefix + k!r} differs from the weights of --model {model}; "
                    "omit --model to store the file's own CLIP in the run folder"
                )
        wrapper = wrap_released(ckpt, bundle.model, bundle.tokenizer, dropout)
        write_run_folder(wrapper, out, model_spec=str(bundle.spec))
    return ckpt.info
