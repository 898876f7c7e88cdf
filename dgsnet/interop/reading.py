"""Reading and validating a released checkpoint: safe loading, the key layout, the heads and
the open_clip config read from the weights' shapes (`read_released`)."""

from __future__ import annotations

import math
import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import CheckpointError
from ..io import sha256_file
from .layout import (
    HEADS,
    OPENAI_META_KEYS,
    RELEASED_ALPHA,
    RELEASED_RANK,
    STUDENT,
    TEACHER1,
    TEACHER2,
    TEACHER_HEAD1,
    TEACHER_HEAD2,
    ReleasedCheckpoint,
    ReleasedImport,
)
from .student import check_student, need_tensor

__all__ = ["MAX_ALPHA", "check_alpha", "read_released", "released_model_config"]


#: the largest LoRA alpha accepted on import: alphas are of the order of the rank (the
#: released 6 with r = 6); far larger ones overflow the update `alpha / sqrt(r) * B A`
MAX_ALPHA = 1e4


def check_alpha(alpha: Any) -> float:
    """`alpha` as a float if it is a number in `(0, MAX_ALPHA]`.

    Raises:
        ValueError: any other value, named.
    """
    if (
        isinstance(alpha, bool)
        or not isinstance(alpha, (int, float))
        or not 0 < alpha <= MAX_ALPHA  # false for NaN
    ):
        raise ValueError(f"alpha must be a number in (0, {MAX_ALPHA:g}], got {alpha!r}")
    return float(alpha)


def _short(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _unpickling_refusal(path: Path, exc: BaseException) -> CheckpointError:
    """The error for a file that holds objects other than tensors: unpickling them would
    run code named in the file, which safe loading refuses to do."""
    names = sorted(set(re.findall(r"GLOBAL ([\w.]+)", str(exc))))
    named = f" (it names {', '.join(names)})" if names else ""
    return CheckpointError(
        f"{path} is refused: it holds Python objects other than tensors{named}, and loading "
        "them would run code from the file. dgsnet reads released checkpoints with "
        "torch.load(weights_only=True), which loads tensors only and runs nothing; a "
        "checkpoint saved by torch.save(model.state_dict()) holds tensors only"
    )


def _load_state_dict(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise CheckpointError(f"released checkpoint {path} does not exist or is not a file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise _unpickling_refusal(path, exc) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError) as exc:
        raise CheckpointError(
            f"{path} cannot be read as a torch.save file (truncated or damaged?): {_short(exc)}"
        ) from None
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{path} holds a {type(obj).__name__}, expected a state dict (names -> tensors) as "
            "saved by torch.save(model.state_dict())"
        )
    out: dict[str, Tensor] = {}
    for key, value in obj.items():
        if not isinstance(key, str):
            raise CheckpointError(f"{path}: key {key!r} is a {type(key).__name__}, expected str")
        if not isinstance(value, Tensor):
            raise CheckpointError(
                f"{path}: entry {key!r} is a {type(value).__name__}, expected a tensor"
            )
        _check_stored(path, key, value)
        out[key] = value
    for key, value in out.items():
        _check_values(path, key, value)
    return out


def _check_stored(path: Path, key: str, t: Tensor) -> None:
    """`t` is a dense tensor with values, and the file stores every value its shape declares
    (a view that repeats a few stored values, stride 0, would make every later step
    allocate the declared size). Checked before anything reads or builds from it."""
    if t.layout != torch.strided:
        raise CheckpointError(
            f"{path}: {key!r} is a {t.layout} tensor; a released checkpoint holds dense tensors"
        )
    if t.device.type == "meta":
        raise CheckpointError(f"{path}: {key!r} is a meta tensor (a shape without values)")
    if t.numel() == 0:
        return
    stored = t.untyped_storage().nbytes()
    last = t.storage_offset() + sum((n - 1) * st for n, st in zip(t.shape, t.stride(), strict=True))
    declared = t.numel() * t.element_size()
    if declared > stored or (last + 1) * t.element_size() > stored:
        raise CheckpointError(
            f"{path}: {key!r} declares shape {tuple(t.shape)} ({declared} bytes) but the file "
            f"stores {stored} bytes for it (strides {tuple(t.stride())}): refused before "
            "anything is built from it"
        )


def _check_values(path: Path, key: str, t: Tensor) -> None:
    """Weights are floating point and finite (OpenAI's integer scalar entries aside)."""
    if key.rpartition(".")[2] in OPENAI_META_KEYS and t.dim() == 0:
        return
    if not t.is_floating_point():
        raise CheckpointError(
            f"{path}: {key!r} has dtype {t.dtype}; weights must be floating point (a file "
            "whose weights were converted to integers, bools or complex numbers is not the "
            "released one)"
        )
    bad = int((~torch.isfinite(t)).sum())
    if bad:
        raise CheckpointError(
            f"{path}: {key!r} holds NaN or Inf ({bad} of {t.numel()} values): the file is "
            "damaged, or the run that saved it diverged"
        )


def _split(path: Path, sd: dict[str, Tensor]) -> tuple[int, dict[str, dict[str, Tensor]]]:
    """The stage and `{part: {name without prefix: tensor}}`; unknown keys raise."""
    if "img_fc.weight" in sd or any(k.startswith(STUDENT) for k in sd):
        stage = 2
        prefixes: tuple[str, ...] = (TEACHER2, TEACHER_HEAD2, STUDENT, *HEADS)
    elif TEACHER_HEAD1 + "weight" in sd or any(k.startswith(TEACHER1) for k in sd):
        stage = 1
        prefixes = (TEACHER1, TEACHER_HEAD1)
    else:
        sample = ", ".join(repr(k) for k in list(sd)[:4])
        raise CheckpointError(
            f"{path} is not a released DGS-Net checkpoint: expected keys under "
            f"{STUDENT!r}/{TEACHER2!r} (stage 2) or {TEACHER1!r}/{TEACHER_HEAD1!r} (stage 1), "
            f"got {sample}{' ...' if len(sd) > 4 else ''}"
        )
    parts: dict[str, dict[str, Tensor]] = {p: {} for p in prefixes}
    for key, value in sd.items():
        for p in prefixes:  # longest first: TEACHER2 before STUDENT / TEACHER1
            if key.startswith(p):
                parts[p][key[len(p) :]] = value
                break
        else:
            raise CheckpointError(
                f"{path}: unknown key {key!r} in a released stage-{stage} checkpoint (expected "
                f"prefixes: {', '.join(prefixes)})"
            )
    return stage, parts


def _count_blocks(keys: Any, pattern: str) -> int:
    rx = re.compile(rf"^{re.escape(pattern)}(\d+)\.")
    found = {int(m.group(1)) for k in keys if (m := rx.match(k))}
    if found and found != set(range(len(found))):
        raise CheckpointError(f"blocks {sorted(found)} of {pattern}* are not numbered 0..n-1")
    return len(found)


def _patch_grid(
    path: Path, prefix: str, conv: Tensor, pos: Tensor, proj: Tensor, tok: Tensor
) -> tuple[int, int, int]:
    """The image tower's width, patch size and patches per side, from the shapes of
    `visual.conv1.weight` and `visual.positional_embedding` (checked to be a CLIP ViT's)."""
    if conv.dim() != 4 or pos.dim() != 2 or proj.dim() != 2 or tok.dim() != 2:
        raise CheckpointError(
            f"{path}: {prefix}visual.conv1.weight / visual.positional_embedding / visual.proj "
            f"do not have the shapes of a CLIP ViT (got {tuple(conv.shape)}, {tuple(pos.shape)}, "
            f"{tuple(proj.shape)})"
        )
    width, patch = int(conv.shape[0]), int(conv.shape[-1])
    grid = math.isqrt(int(pos.shape[0]) - 1)
    if grid * grid != pos.shape[0] - 1:
        raise CheckpointError(
            f"{path}: {prefix}visual.positional_embedding has {pos.shape[0]} rows, not 1 + a "
            "square number of patches"
        )
    return width, patch, grid


def _check_head_width(path: Path, head_width: int, width: int, text_width: int) -> None:
    """Both towers' widths are whole numbers of heads of width `head_width`."""
    for what, w in (("image", width), ("text", text_width)):
        if w % head_width:
            raise CheckpointError(
                f"{path}: the {what} tower's width {w} is not a multiple of head_width="
                f"{head_width}; pass the head width of this model"
            )


def released_model_config(
    base: Mapping[str, Tensor],
    *,
    head_width: int = 64,
    quick_gelu: bool = True,
    path: Path | str = "checkpoint",
    prefix: str = "",
) -> dict[str, Any]:
    """The open_clip model config of an OpenAI-style CLIP state dict, read from its shapes.

    Width, layers, patch size, image size, MLP ratio, embedding dim, context length and
    vocabulary come from the weights; the number of heads cannot (it does not change a
    shape), so `head_width` gives it (OpenAI CLIP: 64 for every model, text and image).
    `quick_gelu`: OpenAI CLIP uses QuickGELU (`x * sigmoid(1.702 x)`).

    Args:
        base: the CLIP's state dict (`visual.conv1.weight`, `token_embedding.weight`...).
        head_width: width of one attention head.
        quick_gelu: the activation of the MLPs.
        path: named in errors.
        prefix: the keys' prefix in the file, named in errors.

    Returns:
        `{"embed_dim", "quick_gelu", "vision_cfg", "text_cfg"}` for `open_clip.CLIP(**cfg)`.

    Raises:
        CheckpointError: a key needed is missing or a shape does not fit a CLIP ViT.
    """
    path = Path(path)
    parts = dict(base)

    def need(name: str) -> Tensor:
        return need_tensor(path, parts, prefix, name)

    conv = need("visual.conv1.weight")
    pos = need("visual.positional_embedding")
    proj = need("visual.proj")
    tok = need("token_embedding.weight")
    text_pos = need("positional_embedding")
    ln_final = need("ln_final.weight")
    width, patch, grid = _patch_grid(path, prefix, conv, pos, proj, tok)
    layers = _count_blocks(parts, "visual.transformer.resblocks.")
    text_layers = _count_blocks(parts, "transformer.resblocks.")
    if layers == 0 or text_layers == 0:
        raise CheckpointError(
            f"{path}: no {prefix}visual.transformer.resblocks.* or "
            f"{prefix}transformer.resblocks.* keys: not a CLIP state dict"
        )
    fc = need("visual.transformer.resblocks.0.mlp.c_fc.weight")
    text_fc = need("transformer.resblocks.0.mlp.c_fc.weight")
    text_width = int(ln_final.shape[0])
    _check_head_width(path, head_width, width, text_width)
    return {
        "embed_dim": int(proj.shape[1]),
        "quick_gelu": bool(quick_gelu),
        "vision_cfg": {
            "image_size": grid * patch,
            "patch_size": patch,
            "width": width,
            "layers": layers,
            "head_width": head_width,
            "mlp_ratio": fc.shape[0] / width,
        },
        "text_cfg": {
            "context_length": int(text_pos.shape[0]),
            "vocab_size": int(tok.shape[0]),
            "width": text_width,
            "heads": text_width // head_width,
            "layers": text_layers,
            "mlp_ratio": text_fc.shape[0] / text_width,
        },
    }


def _head(path: Path, part: dict[str, Tensor], prefix: str, dim: int) -> tuple[Tensor, Tensor]:
    w = need_tensor(path, part, prefix, "weight")
    b = need_tensor(path, part, prefix, "bias")
    extra = sorted(set(part) - {"weight", "bias"})
    if extra:
        raise CheckpointError(f"{path}: unknown key {prefix + extra[0]!r}")
    if w.dim() != 2 or w.shape[1] != dim or b.shape != (w.shape[0],):
        raise CheckpointError(
            f"{path}: {prefix}weight / {prefix}bias have shapes {tuple(w.shape)} / "
            f"{tuple(b.shape)}, expected (C, {dim}) / (C,) for features of dimension {dim}"
        )
    return w, b


def read_released(
    path: str | os.PathLike[str],
    *,
    alpha: float = RELEASED_ALPHA,
    head_width: int = 64,
    quick_gelu: bool = True,
) -> ReleasedCheckpoint:
    """Read and validate a released stage-1 or stage-2 checkpoint (safe loading only).

    Args:
        path: `model_epoch_step1.pth` or `model_epoch_step2.pth` (any name).
        alpha: the LoRA alpha it was trained with (released: 6); not stored in the file.
        head_width: attention head width of the CLIP (OpenAI: 64), for the model config.
        quick_gelu: the CLIP's MLP activation is QuickGELU (OpenAI: yes).

    Returns:
        The parts of the checkpoint and a `ReleasedImport` summary.

    Raises:
        CheckpointError: the file is missing, truncated, holds a non-tensor object, or has an
            unknown key, a missing key or a shape that does not fit (the message names it).
    """
    path = Path(path)
    check_alpha(alpha)
    if isinstance(head_width, bool) or not isinstance(head_width, int) or head_width < 1:
        raise ValueError(f"head_width must be an int >= 1, got {head_width!r}")
    sd = _load_state_dict(path)
    stage, parts = _split(path, sd)
    t_prefix = TEACHER2 if stage == 2 else TEACHER1
    base = {k: v for k, v in parts[t_prefix].items() if k not in OPENAI_META_KEYS}
    cfg = released_model_config(
        base, head_width=head_width, quick_gelu=quick_gelu, path=path, prefix=t_prefix
    )
    dim = cfg["embed_dim"]
    if stage == 2:
        teacher_head = _head(path, parts[TEACHER_HEAD2], TEACHER_HEAD2, dim)
        image_head: tuple[Tensor, Tensor] | None = _head(path, parts["img_fc."], "img_fc.", dim)
        text_head: tuple[Tensor, Tensor] | None = _head(path, parts["text_fc."], "text_fc.", dim)
        student = {k: v for k, v in parts[STUDENT].items() if k not in OPENAI_META_KEYS}
        lora, rank, merged, deviation = check_student(
            path, base, student, cfg["vision_cfg"]["layers"], float(alpha)
        )
    else:
        teacher_head = _head(path, parts[TEACHER_HEAD1], TEACHER_HEAD1, dim)
        image_head = text_head = None
        lora, rank, merged, deviation = {}, RELEASED_RANK, None, 0.0
    info = ReleasedImport(
        source=os.fspath(path.resolve()),
        sha256=sha256_file(path),
        stage=stage,
        merged=merged,
        rank=rank,
        alpha=float(alpha),
        scaling=float(alpha) / math.sqrt(rank),
        model_config=cfg,
        weight_deviation=deviation,
    )
    return ReleasedCheckpoint(info, base, lora, teacher_head, image_head, text_head)
