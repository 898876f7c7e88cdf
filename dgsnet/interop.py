"""Read the checkpoints published with the released DGS-Net code (HorizonTEL/DGS-Net).

The released training script saves each stage with a plain `torch.save(model.state_dict())`:

* `model_epoch_step1.pth` (stage 1): `clip_model_frozen.*` (the OpenAI CLIP) and
  `img_frozen_fc.{weight,bias}` (the teacher head, a linear probe on frozen features);
* `model_epoch_step2.pth` (stage 2): `clip_model.*` (the student CLIP, whose vision
  attention is split into `attn.{q,k,v}_proj.{weight,bias,w_lora_A,w_lora_B}` and
  `attn.proj.{weight,bias}`), `clip_model_frozen.clip_model_frozen.*` (the pristine CLIP,
  the teacher), `clip_model_frozen.img_frozen_fc.*` (the teacher head), `img_fc.*` and
  `text_fc.*` (the image and text heads).

The LoRA layers (the public CLIP-LoRA code, `loralib/layers.py`) compute
`W x + b + scaling * dropout(x) A^T B^T` with `scaling = alpha / sqrt(r)` on q, k and v of
every vision block. When such a model is switched to eval mode the layers add
`scaling * B A` into `weight` in place, so a file saved afterwards holds *merged* q/k/v
weights. The pristine teacher in the same file tells the cases apart exactly: unmerged
student weights equal the teacher's, merged ones differ by `scaling * B A` up to float
rounding. Both are handled (the base weights always come from the pristine copy) and
`ReleasedImport.merged` says which one was found.

Loading is safe: `torch.load(path, map_location="cpu", weights_only=True)`, never a full
unpickle. Every problem (a truncated file, an object that is not a tensor, an unknown or a
missing key, a shape that does not fit, a student that is not the teacher plus LoRA) raises
one `CheckpointError` naming the key.

Examples:
    The released file itself (no download of the OpenAI weights is needed):

    >>> from dgsnet.interop import load_released
    >>> dgs = load_released("model_epoch_step2.pth")  # doctest: +SKIP
    >>> dgs.released_import.merged, dgs.released_import.rank  # doctest: +SKIP
    (False, 6)
    >>> scores = dgs.predict(images).sigmoid()  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import pickle
import re
import shutil
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .config import DGSConfig
from .io import CheckpointError, atomic_write_json, save_tensors, sha256_file

__all__ = [
    "RELEASED_ALPHA",
    "RELEASED_DROPOUT",
    "RELEASED_RANK",
    "ReleasedCheckpoint",
    "ReleasedImport",
    "import_released",
    "load_released",
    "read_released",
    "released_model_config",
    "write_run_folder",
]

log = logging.getLogger(__name__)

#: the released code's LoRA settings (its options/*.py): alpha and dropout cannot be read from
#: a checkpoint (only the rank can, from the shapes of A and B)
RELEASED_ALPHA = 6.0
RELEASED_DROPOUT = 0.8
RELEASED_RANK = 6  # used for a stage-1 file only, which holds no LoRA

#: prefixes of the two released layouts
STUDENT = "clip_model."
TEACHER2 = "clip_model_frozen.clip_model_frozen."
TEACHER_HEAD2 = "clip_model_frozen.img_frozen_fc."
TEACHER1 = "clip_model_frozen."
TEACHER_HEAD1 = "img_frozen_fc."
HEADS = ("img_fc.", "text_fc.")

#: scalar entries of OpenAI's own checkpoints that are no weights (its loader drops them too)
_OPENAI_META = ("input_resolution", "context_length", "vocab_size")
_QKV = ("q_proj", "k_proj", "v_proj")
_BLOCK = re.compile(r"^visual\.transformer\.resblocks\.(\d+)\.attn\.")

BASE_DIR = "base_model"
FINAL_DIR = "final"
IMPORT_NAME = "released_import.json"


@dataclass(frozen=True)
class ReleasedImport:
    """What was found in a released checkpoint (stored as `wrapper.released_import` and in
    the run folder's `released_import.json`).

    Attributes:
        source: the file read.
        sha256: its SHA-256.
        stage: 1 (teacher head only) or 2 (student LoRA and the three heads).
        merged: stage 2: `True` if the file holds merged q/k/v weights (saved in eval mode),
            `False` if unmerged; `None` for stage 1 or when every `B` is zero (the two
            cases are then the same weights).
        rank: the LoRA rank (from the shape of `w_lora_A`; stage 1: the released default).
        alpha: the LoRA alpha used (not stored in the file).
        scaling: `alpha / sqrt(rank)`, the released layers' factor.
        model_config: the open_clip model config of the CLIP in the file.
        weight_deviation: the largest absolute difference between the student's q/k/v
            weights and what the case found predicts (pristine weight, or pristine + scaling
            * B A): float rounding, `0.0` when bit-exact. The import always uses the
            pristine weight plus the LoRA branch.
    """

    source: str
    sha256: str
    stage: int
    merged: bool | None
    rank: int
    alpha: float
    scaling: float
    model_config: dict[str, Any] = field(default_factory=dict)
    weight_deviation: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class ReleasedCheckpoint:
    """A validated released checkpoint, split into its parts (see `read_released`).

    `base`: the pristine CLIP's state dict (open_clip / OpenAI names); `lora`:
    `{"transformer.resblocks.{i}.attn.{q,k,v}_proj": (A, B)}` (names relative to the image
    tower; empty for stage 1); `teacher_head`, `image_head`, `text_head`: `(weight,
    bias)` (the last two `None` for stage 1).
    """

    info: ReleasedImport
    base: dict[str, Tensor]
    lora: dict[str, tuple[Tensor, Tensor]]
    teacher_head: tuple[Tensor, Tensor]
    image_head: tuple[Tensor, Tensor] | None = None
    text_head: tuple[Tensor, Tensor] | None = None


# ------------------------------------------------------------------------------------------
# reading
# ------------------------------------------------------------------------------------------
def _short(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _load_state_dict(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise CheckpointError(f"released checkpoint {path} does not exist or is not a file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path} holds objects other than tensors, which are not loaded (safe loading, "
            f"weights_only=True): {_short(exc, 200)}"
        ) from None
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
        out[key] = value
    return out


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


def _need(path: Path, part: dict[str, Tensor], prefix: str, name: str) -> Tensor:
    if name not in part:
        raise CheckpointError(f"{path}: missing key {prefix + name!r}")
    return part[name]


def _count_blocks(keys: Any, pattern: str) -> int:
    rx = re.compile(rf"^{re.escape(pattern)}(\d+)\.")
    found = {int(m.group(1)) for k in keys if (m := rx.match(k))}
    if found and found != set(range(len(found))):
        raise CheckpointError(f"blocks {sorted(found)} of {pattern}* are not numbered 0..n-1")
    return len(found)


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
        return _need(path, parts, prefix, name)

    conv = need("visual.conv1.weight")
    pos = need("visual.positional_embedding")
    proj = need("visual.proj")
    tok = need("token_embedding.weight")
    text_pos = need("positional_embedding")
    ln_final = need("ln_final.weight")
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
    for what, w in (("image", width), ("text", text_width)):
        if w % head_width:
            raise CheckpointError(
                f"{path}: the {what} tower's width {w} is not a multiple of head_width="
                f"{head_width}; pass the head width of this model"
            )
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
    w = _need(path, part, prefix, "weight")
    b = _need(path, part, prefix, "bias")
    extra = sorted(set(part) - {"weight", "bias"})
    if extra:
        raise CheckpointError(f"{path}: unknown key {prefix + extra[0]!r}")
    if w.dim() != 2 or w.shape[1] != dim or b.shape != (w.shape[0],):
        raise CheckpointError(
            f"{path}: {prefix}weight / {prefix}bias have shapes {tuple(w.shape)} / "
            f"{tuple(b.shape)}, expected (C, {dim}) / (C,) for features of dimension {dim}"
        )
    return w, b


def _student_keys(base: Mapping[str, Tensor], layers: int) -> set[str]:
    """The student's expected keys: the base's, with each vision block's attention split."""
    keys = {k for k in base if not _BLOCK.match(k)}
    for i in range(layers):
        pre = f"visual.transformer.resblocks.{i}.attn."
        for p in _QKV:
            keys |= {f"{pre}{p}.{n}" for n in ("weight", "bias", "w_lora_A", "w_lora_B")}
        keys |= {f"{pre}proj.weight", f"{pre}proj.bias"}
    return keys


def _check_student(
    path: Path, base: dict[str, Tensor], student: dict[str, Tensor], layers: int, alpha: float
) -> tuple[dict[str, tuple[Tensor, Tensor]], int, bool | None, float]:
    """Validate the stage-2 student against the pristine base; return the LoRA factors, the
    rank, whether the q/k/v weights were merged and their largest deviation from the case
    found (float rounding; 0.0 when exact)."""
    want = _student_keys(base, layers)
    missing = sorted(want - set(student))
    if missing:
        raise CheckpointError(
            f"{path}: missing key {STUDENT + missing[0]!r}"
            f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}"
        )
    unknown = sorted(set(student) - want)
    if unknown:
        raise CheckpointError(
            f"{path}: unknown key {STUDENT + unknown[0]!r}"
            f"{f' (and {len(unknown) - 1} more)' if len(unknown) > 1 else ''}"
        )
    # everything outside the q/k/v LoRA layers trains in no stage: it must be the base's
    fixed = sorted(k for k in want if not _BLOCK.match(k))
    for key in fixed:
        if student[key].shape != base[key].shape:
            raise CheckpointError(
                f"{path}: {STUDENT + key!r} has shape {tuple(student[key].shape)}, but the "
                f"pristine copy {TEACHER2 + key!r} has {tuple(base[key].shape)}: student and "
                "teacher are different model sizes"
            )
    for key in fixed:
        if not torch.equal(student[key], base[key]):
            raise CheckpointError(
                f"{path}: {STUDENT + key!r} differs from the pristine copy {TEACHER2 + key!r}; "
                "the released code trains only LoRA and the heads, so this is not its file"
            )
    rank: int | None = None
    lora: dict[str, tuple[Tensor, Tensor]] = {}
    states: dict[str, bool] = {}
    deviation = 0.0
    for i in range(layers):
        pre = f"visual.transformer.resblocks.{i}.attn."
        w_in = base[f"{pre}in_proj_weight"]
        b_in = base.get(f"{pre}in_proj_bias")
        d = w_in.shape[1]
        for j, p in enumerate(_QKV):
            name = f"{pre}{p}."
            a, b = student[name + "w_lora_A"], student[name + "w_lora_B"]
            r = int(a.shape[0]) if a.dim() == 2 else -1
            if a.dim() != 2 or a.shape[1] != d or b.shape != (d, r):
                raise CheckpointError(
                    f"{path}: {STUDENT}{name}w_lora_A / w_lora_B have shapes {tuple(a.shape)} / "
                    f"{tuple(b.shape)}, expected (r, {d}) / ({d}, r)"
                )
            if rank is None:
                rank = r
            elif r != rank:
                raise CheckpointError(
                    f"{path}: {STUDENT}{name}w_lora_A has rank {r}, the first "
                    f"layer's has rank {rank}"
                )
            if not a.is_floating_point() or not b.is_floating_point():
                raise CheckpointError(f"{path}: {STUDENT}{name}w_lora_A/B are not floating point")
            bias_t = b_in[j * d : (j + 1) * d] if b_in is not None else None
            bias_s = student.get(name + "bias")
            if bias_t is None or bias_s is None or not torch.equal(bias_s, bias_t):
                raise CheckpointError(
                    f"{path}: {STUDENT}{name}bias differs from the pristine "
                    f"{TEACHER2}{pre}in_proj_bias slice (the released layers never change biases)"
                )
            w_s, w_t = student[name + "weight"], w_in[j * d : (j + 1) * d]
            if w_s.shape != w_t.shape:
                raise CheckpointError(
                    f"{path}: {STUDENT}{name}weight has shape {tuple(w_s.shape)}, the pristine "
                    f"copy's slice has {tuple(w_t.shape)}"
                )
            scaling = alpha / math.sqrt(r)
            delta = scaling * (b.double() @ a.double())
            # float rounding allowed: the merge itself, and the merge/unmerge round trips
            # the released script makes around each validation (weight += d; weight -= d)
            eps = torch.finfo(w_s.dtype).eps if w_s.is_floating_point() else 0.0
            bound = scaling * (b.double().abs() @ a.double().abs())
            tol = (r + 16) * eps * (w_t.double().abs() + bound)
            off = w_s.double() - w_t.double()
            d_unmerged, d_merged = off.abs(), (off - delta).abs()
            fits_unmerged = bool((d_unmerged <= tol).all())
            fits_merged = bool((d_merged <= tol).all())
            if fits_unmerged and not fits_merged:
                states[name] = False
                deviation = max(deviation, float(d_unmerged.max()))
            elif fits_merged and not fits_unmerged:
                states[name] = True
                deviation = max(deviation, float(d_merged.max()))
            elif fits_unmerged:  # B A below float rounding: merged and unmerged are the same
                deviation = max(deviation, float(d_unmerged.max()))
            else:
                raise CheckpointError(
                    f"{path}: {STUDENT}{name}weight is neither the pristine weight (unmerged) "
                    f"nor the pristine weight + alpha/sqrt(r) * B A (merged, alpha={alpha:g}): "
                    f"max difference {float(d_merged.max()):.3g}; pass the alpha it was trained "
                    "with"
                )
            lora[f"transformer.resblocks.{i}.attn.{p}"] = (a, b)
        for n_s, n_t in (("proj.weight", "out_proj.weight"), ("proj.bias", "out_proj.bias")):
            s, t = student[pre + n_s], base.get(pre + n_t)
            if t is None or s.shape != t.shape or not torch.equal(s, t):
                raise CheckpointError(
                    f"{path}: {STUDENT}{pre}{n_s} differs from the pristine {TEACHER2}{pre}{n_t} "
                    "(the released code does not adapt the out projection)"
                )
    kinds = set(states.values())
    if len(kinds) > 1:
        merged_names = sorted(n for n, v in states.items() if v)
        raise CheckpointError(
            f"{path}: some q/k/v weights are merged (e.g. {STUDENT}{merged_names[0]}weight) and "
            "others are not: a damaged file"
        )
    assert rank is not None
    return lora, rank, (kinds.pop() if kinds else None), deviation


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
    if not (
        isinstance(alpha, (int, float))
        and not isinstance(alpha, bool)
        and math.isfinite(alpha)
        and alpha > 0
    ):
        raise ValueError(f"alpha must be a finite number > 0, got {alpha!r}")
    if isinstance(head_width, bool) or not isinstance(head_width, int) or head_width < 1:
        raise ValueError(f"head_width must be an int >= 1, got {head_width!r}")
    sd = _load_state_dict(path)
    stage, parts = _split(path, sd)
    t_prefix = TEACHER2 if stage == 2 else TEACHER1
    base = {k: v for k, v in parts[t_prefix].items() if k not in _OPENAI_META}
    cfg = released_model_config(
        base, head_width=head_width, quick_gelu=quick_gelu, path=path, prefix=t_prefix
    )
    dim = cfg["embed_dim"]
    if stage == 2:
        teacher_head = _head(path, parts[TEACHER_HEAD2], TEACHER_HEAD2, dim)
        image_head: tuple[Tensor, Tensor] | None = _head(path, parts["img_fc."], "img_fc.", dim)
        text_head: tuple[Tensor, Tensor] | None = _head(path, parts["text_fc."], "text_fc.", dim)
        student = {k: v for k, v in parts[STUDENT].items() if k not in _OPENAI_META}
        lora, rank, merged, deviation = _check_student(
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


# ------------------------------------------------------------------------------------------
# building a wrapper
# ------------------------------------------------------------------------------------------
def _build_clip(cfg: Mapping[str, Any]) -> nn.Module:
    import open_clip

    with torch.random.fork_rng(devices=[]):  # the weights are overwritten: no global RNG use
        torch.manual_seed(0)
        return open_clip.CLIP(
            **{k: (dict(v) if isinstance(v, dict) else v) for k, v in cfg.items()}
        )


def _check_base(
    path: Path, own: Mapping[str, Tensor], base: Mapping[str, Tensor], prefix: str
) -> None:
    """The model's state dict `own` and the file's pristine CLIP have the same keys and
    shapes (errors name the file's key)."""
    missing = sorted(set(own) - set(base))
    if missing:
        raise CheckpointError(
            f"{path}: missing key {prefix + missing[0]!r} that the model needs (a different "
            "model architecture?)"
        )
    unknown = sorted(set(base) - set(own))
    if unknown:
        raise CheckpointError(
            f"{path}: key {prefix + unknown[0]!r} has no counterpart in the model (a different "
            "model architecture?)"
        )
    for k, v in own.items():
        if base[k].shape != v.shape:
            raise CheckpointError(
                f"{path}: {prefix + k!r} has shape {tuple(base[k].shape)}, the model's has "
                f"{tuple(v.shape)}: the file is from a different model size"
            )


def _load_base(path: Path, model: nn.Module, base: Mapping[str, Tensor], prefix: str) -> None:
    """Load the pristine weights into `model` (strict; errors name the file's key)."""
    own = model.state_dict()
    _check_base(path, own, base, prefix)
    with torch.no_grad():
        for k, v in own.items():
            v.copy_(base[k].to(v.dtype))


def _wrap(ckpt: ReleasedCheckpoint, model: nn.Module, tokenizer: Any, dropout: float) -> Any:
    from .wrapper import DGSWrapper

    info = ckpt.info
    config = DGSConfig.reference(
        lora_rank=info.rank, lora_alpha=info.alpha, lora_dropout=dropout, lora_scaling="rslora"
    )
    with torch.random.fork_rng(devices=[]):  # peft's init of A (stage 1): reproducible
        torch.manual_seed(0)
        wrapper = DGSWrapper(model, tokenizer, config)
    tower = wrapper.encoder.image_tower
    if ckpt.lora and set(wrapper.lora_modules) != set(ckpt.lora):
        raise CheckpointError(
            f"{info.source}: the file adapts {sorted(ckpt.lora)[:3]}..., the model's LoRA "
            f"targets are {wrapper.lora_modules[:3]}..."
        )
    with torch.no_grad():
        for name, (a, b) in ckpt.lora.items():
            layer: Any = tower.get_submodule(name)
            layer.lora_A["default"].weight.copy_(a)
            layer.lora_B["default"].weight.copy_(b)
        heads = [(wrapper.teacher_head, ckpt.teacher_head)]
        if ckpt.image_head is not None and ckpt.text_head is not None:
            heads += [(wrapper.image_head, ckpt.image_head), (wrapper.text_head, ckpt.text_head)]
        for head, (w, b) in heads:
            if head.weight.shape != w.shape:
                raise CheckpointError(
                    f"{info.source}: a head of shape {tuple(w.shape)} does not fit the model's "
                    f"{tuple(head.weight.shape)} (num_classes)"
                )
            head.weight.copy_(w)
            head.bias.copy_(b)
    wrapper.clear_caches()
    # a plain attribute (nn.Module.__setattr__ stores non-tensor, non-module values as such)
    object.__setattr__(wrapper, "released_import", info)
    return wrapper


def load_released(
    path: str | os.PathLike[str],
    model: Any = None,
    tokenizer: Any = None,
    *,
    alpha: float = RELEASED_ALPHA,
    dropout: float = RELEASED_DROPOUT,
    head_width: int = 64,
    quick_gelu: bool = True,
) -> Any:
    """A `DGSWrapper` holding a released DGS-Net checkpoint.

    The student is the pristine CLIP of the file plus its LoRA with the released scaling
    `alpha / sqrt(r)` (`DGSConfig.reference(lora_scaling="rslora")`, rank read from the
    shapes of `A`); the heads are the file's. A stage-1 file gives the teacher head (LoRA
    `B = 0` and fresh image/text heads), from which stage 2 can start.
    `wrapper.released_import` (a `ReleasedImport`) says what was found, including
    whether the q/k/v weights were saved merged.

    Args:
        path: the released `.pth` file.
        model: an open_clip CLIP to load into (its weights are replaced by the file's
            pristine CLIP; its architecture must match, else `CheckpointError`).
            `None`: build the open_clip model from the shapes of the file's weights
            (`released_model_config`); nothing is downloaded.
        tokenizer: for captions (training); `None`: open_clip's CLIP BPE tokenizer when
            `model` is `None`.
        alpha: the LoRA alpha of the run (released: 6; not stored in the file).
        dropout: LoRA dropout for further training (released: 0.8; no effect on predictions).
        head_width: attention head width when building the model (OpenAI CLIP: 64).
        quick_gelu: QuickGELU MLPs when building the model (OpenAI CLIP: yes).

    Returns:
        The wrapper, in eval mode.

    Raises:
        CheckpointError: see `read_released`; also a `model` that does not fit.
    """
    ckpt = read_released(path, alpha=alpha, head_width=head_width, quick_gelu=quick_gelu)
    prefix = TEACHER2 if ckpt.info.stage == 2 else TEACHER1
    if model is None:
        model = _build_clip(ckpt.info.model_config)
        if tokenizer is None:
            import open_clip

            tokenizer = open_clip.get_tokenizer("ViT-L-14")  # OpenAI's BPE; ships with open_clip
    elif not isinstance(model, nn.Module):
        raise TypeError(f"model must be an open_clip CLIP (nn.Module), got {type(model).__name__}")
    _load_base(Path(path), model, ckpt.base, prefix)
    wrapper = _wrap(ckpt, model, tokenizer, dropout)
    wrapper.eval()
    i = ckpt.info
    log.info(
        "read released stage-%d checkpoint %s: rank %d, alpha %g (scaling %.4g), %s",
        i.stage,
        i.source,
        i.rank,
        i.alpha,
        i.scaling,
        {
            True: "merged q/k/v weights (unmerged on import)",
            False: "unmerged weights",
            None: "no LoRA delta",
        }[i.merged],
    )
    return wrapper


# ------------------------------------------------------------------------------------------
# run folders
# ------------------------------------------------------------------------------------------
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

    The folder is assembled beside `out_dir` and renamed into place at the end; an
    existing `out_dir` is refused.

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
        FileExistsError: `out_dir` exists.
        ValueError: neither `model_spec` nor `base` + `model_config` given.
    """
    from .data import IMAGENET_MEAN, IMAGENET_STD
    from .training import MODEL_INFO_NAME

    out = Path(out_dir)
    if out.exists():
        raise FileExistsError(f"{out} exists; choose a new run folder")
    stored = base is not None and model_config is not None
    if not stored and not model_spec:
        raise ValueError("write_run_folder needs model_spec, or base and model_config")
    if image_size is None:
        size = wrapper.encoder.image_size
        image_size = int(size[0]) if size else None
    if image_size is None or image_size % 7:
        raise ValueError(
            f"the released patch-selection preprocessing tiles 7x7 patches: the model's image "
            f"size must be a multiple of 7, got {image_size}"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        spec = model_spec
        if stored:
            assert base is not None and model_config is not None
            save_tensors(
                tmp / BASE_DIR / "open_clip_model.safetensors",
                {k: v.detach().contiguous() for k, v in base.items()},
            )
            atomic_write_json(
                tmp / BASE_DIR / "open_clip_config.json",
                {
                    "model_cfg": dict(model_config),
                    "preprocess_cfg": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
                },
            )
            spec = f"local-dir:../{BASE_DIR}"  # relative to final/
        wrapper.save_pretrained(tmp / FINAL_DIR)
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
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


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
        FileExistsError: `out_dir` exists.
    """
    out = Path(out_dir)
    if out.exists():
        raise FileExistsError(f"{out} exists; choose a new run folder")
    ckpt = read_released(path, alpha=alpha, head_width=head_width, quick_gelu=quick_gelu)
    prefix = TEACHER2 if ckpt.info.stage == 2 else TEACHER1
    if model is None:
        import open_clip

        net = _build_clip(ckpt.info.model_config)
        _load_base(Path(path), net, ckpt.base, prefix)
        base = {k: v.detach().clone() for k, v in net.state_dict().items()}
        wrapper = _wrap(ckpt, net, open_clip.get_tokenizer("ViT-L-14"), dropout)
        write_run_folder(wrapper, out, base=base, model_config=ckpt.info.model_config)
    else:
        from .training import build_model

        bundle = build_model(model, transform="patch-selection", flip=False)
        own = bundle.model.state_dict()
        _check_base(Path(path), own, ckpt.base, prefix)
        for k, v in own.items():
            if not torch.equal(v, ckpt.base[k].to(v.dtype)):
                raise CheckpointError(
                    f"{path}: {prefix + k!r} differs from the weights of --model {model}; "
                    "omit --model to store the file's own CLIP in the run folder"
                )
        wrapper = _wrap(ckpt, bundle.model, bundle.tokenizer, dropout)
        write_run_folder(wrapper, out, model_spec=str(bundle.spec))
    return ckpt.info
