"""Validating the stage-2 student of a released checkpoint against its pristine teacher:
the same weights outside the LoRA layers, and q/k/v weights that are the pristine ones
(unmerged) or the pristine ones plus `alpha / sqrt(r) * B A` (merged)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from ..errors import CheckpointError
from .layout import BLOCK_PATTERN, QKV_NAMES, STUDENT, TEACHER2


def need_tensor(path: Path, part: dict[str, Tensor], prefix: str, name: str) -> Tensor:
    if name not in part:
        raise CheckpointError(f"{path}: missing key {prefix + name!r}")
    return part[name]


def _student_keys(base: Mapping[str, Tensor], layers: int) -> set[str]:
    """The student's expected keys: the base's, with each vision block's attention split."""
    keys = {k for k in base if not BLOCK_PATTERN.match(k)}
    for i in range(layers):
        pre = f"visual.transformer.resblocks.{i}.attn."
        for p in QKV_NAMES:
            keys |= {f"{pre}{p}.{n}" for n in ("weight", "bias", "w_lora_A", "w_lora_B")}
        keys |= {f"{pre}proj.weight", f"{pre}proj.bias"}
    return keys


def _check_fixed(
    path: Path, base: Mapping[str, Tensor], student: Mapping[str, Tensor], want: set[str]
) -> None:
    """The student has exactly the keys `want`, and everything outside the q/k/v LoRA layers
    (which trains in no stage) is the pristine base's, shape and value."""
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
    fixed = sorted(k for k in want if not BLOCK_PATTERN.match(k))
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


def _lora_pair(
    path: Path, student: Mapping[str, Tensor], name: str, d: int, rank: int | None
) -> tuple[Tensor, Tensor, int]:
    """The LoRA factors `(A, B, r)` of the layer `name`: `A` is `(r, d)`, `B` is `(d, r)`,
    both floating point, and `r` equals `rank` (the first layer's) unless that is `None`."""
    a, b = student[name + "w_lora_A"], student[name + "w_lora_B"]
    r = int(a.shape[0]) if a.dim() == 2 else -1
    if a.dim() != 2 or a.shape[1] != d or b.shape != (d, r):
        raise CheckpointError(
            f"{path}: {STUDENT}{name}w_lora_A / w_lora_B have shapes {tuple(a.shape)} / "
            f"{tuple(b.shape)}, expected (r, {d}) / ({d}, r)"
        )
    if rank is not None and r != rank:
        raise CheckpointError(
            f"{path}: {STUDENT}{name}w_lora_A has rank {r}, the first layer's has rank {rank}"
        )
    if not a.is_floating_point() or not b.is_floating_point():
        raise CheckpointError(f"{path}: {STUDENT}{name}w_lora_A/B are not floating point")
    return a, b, r


def _merge_state(
    path: Path, name: str, w_s: Tensor, w_t: Tensor, a: Tensor, b: Tensor, alpha: float
) -> tuple[bool | None, float]:
    """Whether the student's weight `w_s` is the pristine `w_t` (`False`, unmerged) or
    `w_t + alpha / sqrt(r) * B A` (`True`, merged; `None` when both fit) up to float rounding,
    and the largest deviation from the case found."""
    r = int(a.shape[0])
    scaling = alpha / math.sqrt(r)
    delta = scaling * (b.double() @ a.double())
    if not bool(torch.isfinite(delta.to(w_s.dtype)).all()):
        raise CheckpointError(
            f"{path}: with alpha={alpha:g} the LoRA update alpha/sqrt(r) * B A of "
            f"{STUDENT}{name}weight overflows {w_s.dtype}: pass the alpha it was trained with"
        )
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
        return False, float(d_unmerged.max())
    if fits_merged and not fits_unmerged:
        return True, float(d_merged.max())
    if fits_unmerged:  # B A below float rounding: merged and unmerged are the same
        return None, float(d_unmerged.max())
    raise CheckpointError(
        f"{path}: {STUDENT}{name}weight is neither the pristine weight (unmerged) "
        f"nor the pristine weight + alpha/sqrt(r) * B A (merged, alpha={alpha:g}): "
        f"max difference {float(d_merged.max()):.3g}; pass the alpha it was trained "
        "with"
    )


def _check_block(
    path: Path,
    base: Mapping[str, Tensor],
    student: Mapping[str, Tensor],
    i: int,
    alpha: float,
    rank: int | None,
    lora: dict[str, tuple[Tensor, Tensor]],
    states: dict[str, bool],
) -> tuple[int, float]:
    """Validate vision block `i`'s attention; add its LoRA factors to `lora` and the merge
    state of each q/k/v layer to `states`; return the rank and the largest deviation."""
    pre = f"visual.transformer.resblocks.{i}.attn."
    w_in = base[f"{pre}in_proj_weight"]
    b_in = base.get(f"{pre}in_proj_bias")
    d = w_in.shape[1]
    deviation = 0.0
    for j, p in enumerate(QKV_NAMES):
        name = f"{pre}{p}."
        a, b, rank = _lora_pair(path, student, name, d, rank)
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
        state, off = _merge_state(path, name, w_s, w_t, a, b, alpha)
        if state is not None:
            states[name] = state
        deviation = max(deviation, off)
        lora[f"transformer.resblocks.{i}.attn.{p}"] = (a, b)
    for n_s, n_t in (("proj.weight", "out_proj.weight"), ("proj.bias", "out_proj.bias")):
        s, t = student[pre + n_s], base.get(pre + n_t)
        if t is None or s.shape != t.shape or not torch.equal(s, t):
            raise CheckpointError(
                f"{path}: {STUDENT}{pre}{n_s} differs from the pristine {TEACHER2}{pre}{n_t} "
                "(the released code does not adapt the out projection)"
            )
    assert rank is not None
    return rank, deviation


def check_student(
    path: Path, base: dict[str, Tensor], student: dict[str, Tensor], layers: int, alpha: float
) -> tuple[dict[str, tuple[Tensor, Tensor]], int, bool | None, float]:
    """Validate the stage-2 student against the pristine base; return the LoRA factors, the
    rank, whether the q/k/v weights were merged and their largest deviation from the case
    found (float rounding; 0.0 when exact)."""
    _check_fixed(path, base, student, _student_keys(base, layers))
    rank: int | None = None
    lora: dict[str, tuple[Tensor, Tensor]] = {}
    states: dict[str, bool] = {}
    deviation = 0.0
    for i in range(layers):
        rank, off = _check_block(path, base, student, i, alpha, rank, lora, states)
        deviation = max(deviation, off)
    kinds = set(states.values())
    if len(kinds) > 1:
        merged_names = sorted(n for n, v in states.items() if v)
        raise CheckpointError(
            f"{path}: some q/k/v weights are merged (e.g. {STUDENT}{merged_names[0]}weight) and "
            "others are not: a damaged file"
        )
    assert rank is not None
    return lora, rank, (kinds.pop() if kinds else None), deviation
