"""LoRA on the image tower through peft, and the frozen teacher as "adapters off".

`attach_lora` injects peft `Linear` LoRA layers into the image tower's target
modules; every base weight stays untouched (peft adds `scale * B(A(dropout(x)))` beside the
base layer's output and never merges unless asked). `scale` is `alpha / r` (standard) or
`alpha / sqrt(r)` (`scaling="rslora"`: peft's `LoraConfig(use_rslora=True)`, the form
of the CLIP-LoRA layers the released DGS-Net code uses). peft initialises `A` like
`nn.Linear` (Kaiming-uniform, `a = sqrt(5)`) and `B` at zero, as those layers do.
`adapters_disabled` is a context in which those layers return the base output only: the
pre-fine-tuning encoder, with no copy.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol, cast

from torch import nn

from ..encoders.base import DualEncoder
from .config import DGSConfig

__all__ = [
    "SCALINGS",
    "LoRASpec",
    "attach_lora",
    "adapters_disabled",
    "lora_parameters",
    "lora_spec",
    "lora_target_names",
]


SCALINGS = ("standard", "rslora")


@dataclass(frozen=True)
class LoRASpec:
    """Where and how LoRA adapts the image tower.

    `scaling`: `"standard"` multiplies the branch by `alpha / rank`, `"rslora"` by
    `alpha / sqrt(rank)`; see `scale`.
    """

    rank: int = 6
    alpha: float = 6.0
    dropout: float = 0.0
    targets: tuple[str, ...] | None = None  # leaf module names; None: the encoder's defaults
    layers: tuple[int, ...] | None = None  # block indices (negative: from the end); None: all
    scaling: str = "standard"

    def __post_init__(self) -> None:
        if self.scaling not in SCALINGS:
            raise ValueError(
                f"LoRASpec.scaling: expected 'standard' or 'rslora', got {self.scaling!r}"
            )

    @property
    def scale(self) -> float:
        """The factor of the low-rank branch: `alpha / r` or `alpha / sqrt(r)`."""
        return self.alpha / (math.sqrt(self.rank) if self.scaling == "rslora" else self.rank)


def lora_spec(config: DGSConfig) -> LoRASpec:
    """The `LoRASpec` of a `DGSConfig` (its `lora_*` fields).

    Args:
        config: the config.

    Returns:
        The spec `attach_lora` takes.
    """
    return LoRASpec(
        rank=config.lora_rank,
        alpha=config.lora_alpha,
        dropout=config.lora_dropout,
        targets=config.lora_targets,
        layers=config.lora_layers,
        scaling=config.lora_scaling,
    )


def _block_index(name: str, pattern: str) -> int | None:
    m = re.search(rf"(?:^|\.){re.escape(pattern)}\.(\d+)(?:\.|$)", name)
    return int(m.group(1)) if m else None


def lora_target_names(encoder: DualEncoder, spec: LoRASpec) -> list[str]:
    """Full names (relative to the image tower) of the `nn.Linear` modules LoRA adapts.

    Args:
        encoder: the adapter whose image tower is searched.
        spec: the targets and layers to adapt.

    Returns:
        The module names, in the tower's module order.

    Raises:
        ValueError: a target matches no `nn.Linear`, a layer is out of range, or layers are
            given for an encoder without a block list.
    """
    targets = tuple(spec.targets) if spec.targets is not None else encoder.default_lora_targets
    tower = encoder.image_tower
    blocks = encoder.blocks()
    n_blocks = len(blocks) if blocks is not None else None
    layers: set[int] | None = None
    if spec.layers is not None:
        if n_blocks is None:
            raise ValueError("lora layers were given but the encoder exposes no block list")
        layers = set()
        for i in spec.layers:
            j = i + n_blocks if i < 0 else i
            if not 0 <= j < n_blocks:
                raise ValueError(
                    f"lora layer {i} is out of range for an image tower of {n_blocks} blocks"
                )
            layers.add(j)
    names = []
    found_leaves: set[str] = set()
    for name, module in tower.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if leaf not in targets or not isinstance(module, nn.Linear):
            continue
        found_leaves.add(leaf)
        idx = _block_index(name, encoder.block_pattern)
        if layers is not None and (idx is None or idx not in layers):
            continue
        names.append(name)
    missing = [t for t in targets if t not in found_leaves]
    if missing:
        raise ValueError(
            f"LoRA target(s) {missing} match no nn.Linear in the image tower; "
            f"available linear leaves: {_linear_leaves(tower)}"
        )
    return names


def _linear_leaves(tower: nn.Module) -> list[str]:
    names = {n.rsplit(".", 1)[-1] for n, m in tower.named_modules() if isinstance(m, nn.Linear)}
    return sorted(names)


def attach_lora(encoder: DualEncoder, spec: LoRASpec) -> list[str]:
    """Freeze the whole model, inject LoRA into the image tower; return the adapted names.

    Args:
        encoder: the adapter whose image tower gets LoRA.
        spec: rank, alpha, dropout, scaling, targets and layers.

    Returns:
        The adapted module names (relative to the image tower).
    """
    from peft import LoraConfig, inject_adapter_in_model

    targets = tuple(spec.targets) if spec.targets is not None else encoder.default_lora_targets
    encoder.prepare_for_lora(targets)
    names = lora_target_names(encoder, spec)
    for p in encoder.model.parameters():
        p.requires_grad_(False)
    config = LoraConfig(
        # peft annotates lora_alpha as int but only divides by it; a float alpha is exact
        r=spec.rank,
        lora_alpha=spec.alpha,  # type: ignore[arg-type]
        lora_dropout=spec.dropout,
        target_modules=names,
        bias="none",
        use_rslora=spec.scaling == "rslora",
    )
    inject_adapter_in_model(config, encoder.image_tower)
    for n, p in encoder.image_tower.named_parameters():
        p.requires_grad_("lora_" in n)
    return names


def lora_parameters(module: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    """The LoRA parameters of `module` (names containing `lora_`), as `(name, parameter)`.

    Args:
        module: the module to search.

    Yields:
        `(name, parameter)` pairs.
    """
    for n, p in module.named_parameters():
        if "lora_" in n:
            yield n, p


class _TunerLayer(Protocol):
    """A peft `BaseTunerLayer` that is also an `nn.Module` (every peft LoRA layer is)."""

    @property
    def disable_adapters(self) -> bool: ...

    def enable_adapters(self, enabled: bool) -> None: ...

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]: ...


def _tuner_layers(module: nn.Module) -> list[_TunerLayer]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [cast(_TunerLayer, m) for m in module.modules() if isinstance(m, BaseTunerLayer)]


@contextmanager
def adapters_disabled(module: nn.Module) -> Iterator[None]:
    """Within the context every peft layer in `module` returns its base output only.

    The `requires_grad` flag of every adapter parameter is restored exactly on exit (peft's
    own toggle would switch all active adapters' flags back on).

    Args:
        module: the module whose peft layers are switched off.

    Yields:
        Nothing; the adapters are off inside the `with` block.
    """
    layers = _tuner_layers(module)
    flags = [(p, p.requires_grad) for m in layers for p in m.parameters()]
    states = [m.disable_adapters for m in layers]
    for m in layers:
        m.enable_adapters(False)
    try:
        yield
    finally:
        for m, was_disabled in zip(layers, states, strict=True):
            m.enable_adapters(not was_disabled)
        for p, flag in flags:
            p.requires_grad_(flag)


def check_no_merge(module: nn.Module) -> None:
    """Raise if any peft layer has been merged (the teacher would then see adapted weights).

    Args:
        module: the module to check.

    Raises:
        RuntimeError: a peft layer has merged weights.
    """
    for m in _tuner_layers(module):
        if getattr(m, "merged", False):
            raise RuntimeError(
                f"{type(m).__name__} has merged LoRA weights; the adapters-off teacher needs them "
                "unmerged (call unmerge_adapter() or use teacher='copy')"
            )
