"""Numeric precision of a run (`fp32`, `tf32`, `bf16`, `fp16`) and `torch.compile`.

One `Precision` object says, for a run on one device type, which TF32 flags are set,
which dtype the forward passes autocast to, and whether a `torch.amp.GradScaler` scales the
loss:

| precision | TF32 flags (matmul, cuDNN) during the run | autocast | GradScaler |
|---|---|---|---|
| `fp32` | both off (true float32 everywhere) | no | no |
| `tf32` | both on (CUDA only; no effect on the CPU) | no | no |
| `bf16` | left as they are | `bfloat16` | no |
| `fp16` | left as they are | `float16` | yes |

The weights, the optimizer state and the gradients stay float32 in every mode (autocast
computes the matmuls in the low dtype; the parameters are not converted). The flags are set
on entering `Precision.activate` and restored on leaving it.

`fp16` is allowed on the CPU (PyTorch has CPU `float16` autocast and a CPU
`GradScaler`), which is how its resume exactness is tested without a GPU; it is slow there
and meant for tests, not for training.

Examples:
    >>> p = Precision.parse("bf16", "cpu")
    >>> p.autocast_dtype, p.uses_scaler
    (torch.bfloat16, False)
    >>> Precision.parse("fp64", "cpu")
    Traceback (most recent call last):
    ...
    dgsnet.errors.TrainingConfigError: precision must be one of fp32, tf32, bf16, fp16, got 'fp64'
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import TrainingConfigError

__all__ = [
    "DEFAULT_PRECISION",
    "PRECISIONS",
    "Precision",
    "compile_image_tower",
    "parse_precision",
    "scaler_state",
    "tf32_flags",
]

PRECISIONS: tuple[str, ...] = ("fp32", "tf32", "bf16", "fp16")
"""The accepted precision names."""

DEFAULT_PRECISION = "fp32"
"""The precision of a run that does not choose one, and of an old run folder that does not
record one."""

_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


def parse_precision(value: Any) -> str:
    """`value` checked against `PRECISIONS` (case-insensitive, returned lower-case).

    Raises:
        TrainingConfigError: any other value (naming the accepted ones).
    """
    s = value.lower() if isinstance(value, str) else value
    if s not in PRECISIONS:
        raise TrainingConfigError(
            f"precision must be one of {', '.join(PRECISIONS)}, got {value!r}"
        )
    return str(s)


@contextlib.contextmanager
def tf32_flags(enabled: bool | None) -> Iterator[None]:
    """Set `torch.backends.cuda.matmul.allow_tf32` and `torch.backends.cudnn.allow_tf32`
    to `enabled` inside the block and restore both afterwards (`None`: leave them).

    Args:
        enabled: the value of both flags inside the block, or `None` to change nothing.
    """
    if enabled is None:
        yield
        return
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


@dataclass(frozen=True)
class Precision:
    """The numeric policy of a run: its `PRECISIONS` name on a device type."""

    name: str = DEFAULT_PRECISION
    """`"fp32"`, `"tf32"`, `"bf16"` or `"fp16"`."""
    device_type: str = "cpu"
    """`"cpu"`, `"cuda"`, ... (the autocast and GradScaler device type)."""

    @classmethod
    def parse(cls, name: Any, device: str | torch.device) -> Precision:
        """The policy for `name` on `device` (a device or its type).

        Raises:
            TrainingConfigError: `name` is not one of `PRECISIONS`.
        """
        return cls(parse_precision(name), torch.device(device).type)

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """`torch.bfloat16` (bf16), `torch.float16` (fp16) or `None` (no autocast)."""
        return _AUTOCAST.get(self.name)

    @property
    def uses_scaler(self) -> bool:
        """Whether the loss is scaled by a `torch.amp.GradScaler` (fp16)."""
        return self.name == "fp16"

    @property
    def tf32(self) -> bool | None:
        """The TF32 flags inside `activate`: `False` (fp32), `True` (tf32) or
        `None` (bf16/fp16: left as they are)."""
        return {"fp32": False, "tf32": True}.get(self.name)

    def activate(self) -> contextlib.AbstractContextManager[None]:
        """The TF32 flags of the run, restored on leaving (wraps a whole run or evaluation)."""
        return tf32_flags(self.tf32)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """`torch.autocast` for the forward passes (a no-op context for fp32 and tf32)."""
        dtype = self.autocast_dtype
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=dtype)

    def make_scaler(self, state: Mapping[str, Any] | None = None) -> torch.amp.GradScaler | None:
        """A `GradScaler` for fp16 (restored from `state`, a `state_dict()`, when
        given), else `None`."""
        if not self.uses_scaler:
            return None
        scaler = torch.amp.GradScaler(self.device_type)
        if state:
            scaler.load_state_dict(dict(state))
        return scaler


def scaler_state(scaler: torch.amp.GradScaler | None) -> dict[str, Any] | None:
    """`scaler.state_dict()` as plain JSON numbers (`None` without a scaler)."""
    if scaler is None:
        return None
    return {
        k: (float(v) if isinstance(v, float) else int(v) if isinstance(v, int) else v)
        for k, v in scaler.state_dict().items()
    }


def _blocks(tower: nn.Module, pattern: str) -> list[nn.Module]:
    """The children of the first `nn.ModuleList` named `pattern` inside `tower`."""
    for name, module in tower.named_modules():
        if name.split(".")[-1] == pattern and isinstance(module, nn.ModuleList):
            return list(module)
    return []


def compile_image_tower(encoder: Any, **kwargs: Any) -> int:
    """`torch.compile` the image tower of `encoder` (a `dgsnet.encoders` encoder,
    e.g. `wrapper.encoder`) in place; returns how many modules were compiled.

    Each block of the tower's block list (`encoder.block_pattern`, e.g. open_clip's
    `resblocks`) is compiled with `nn.Module.compile`, so every path through the tower
    (the whole tower, and the wrapper's split at the first adapted block for the shared frozen
    trunk) runs compiled code, and parameter names, `state_dict` keys and checkpoints stay
    as they were. A tower without such a list is compiled as a whole.

    Args:
        encoder: the wrapper's encoder (`wrapper.encoder`).
        **kwargs: passed to `torch.compile` (e.g. `mode="max-autotune"`).

    Returns:
        The number of modules compiled.
    """
    tower: nn.Module = encoder.image_tower
    blocks = _blocks(tower, getattr(encoder, "block_pattern", "blocks"))
    targets = blocks or [tower]
    for module in targets:
        module.compile(**kwargs)
    return len(targets)
