"""`dgsnet.lora`: an earlier path of `dgsnet.wrapper.lora`, kept working.

This module re-exports the public names of `dgsnet.wrapper.lora`; new code imports them
from there (or from `dgsnet` / `dgsnet.wrapper`).
"""

from .wrapper.lora import (
    SCALINGS,
    LoRASpec,
    adapters_disabled,
    attach_lora,
    lora_parameters,
    lora_target_names,
)

__all__ = [
    "LoRASpec",
    "SCALINGS",
    "adapters_disabled",
    "attach_lora",
    "lora_parameters",
    "lora_target_names",
]
