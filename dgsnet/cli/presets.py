"""Named training settings for `dgsnet train --preset NAME`.

A preset is the lowest layer of a run's options: `preset < --config file < command-line
flags`. Two presets only pick the `DGSConfig` the DGS options start
from; `aigibench-setting2` is a whole setting (backbone, preprocessing, schedule, DGS config):
the paper's training run, see `docs/paper-setting.md`.

Examples:
    >>> from dgsnet.cli.presets import get_preset
    >>> p = get_preset("aigibench-setting2")
    >>> p.options["model"], p.options["transform"], p.dgs_config().lora_targets
    ('ViT-L-14@openai', 'patch-selection', ['q_proj', 'k_proj', 'v_proj'])
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from ..wrapper import DGSConfig

__all__ = ["TrainPreset", "TRAIN_PRESETS", "DEFAULT_PRESET", "get_preset"]


@dataclass(frozen=True)
class TrainPreset:
    """A named layer of `dgsnet train` options.

    `dgs`: the DGSConfig the DGS options start from (`"reference"`:
    `DGSConfig.reference`, `"library"`: `DGSConfig()`). `options`: values of
    `dgsnet train` options (argparse destinations, e.g. `"batch_size"`), applied below a
    `--config` file and the flags. `subsets`: the training subsets the setting was defined
    on (a warning names any difference; empty: no expectation).
    """

    name: str
    summary: str
    dgs: Literal["reference", "library"] = "reference"
    options: Mapping[str, Any] = field(default_factory=dict)
    subsets: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))

    def dgs_config(self) -> DGSConfig:
        return DGSConfig.reference() if self.dgs == "reference" else DGSConfig()


#: the DGS-Net paper's training run: AIGIBench Setting-II (`docs/paper-setting.md`)
AIGIBENCH_SETTING2 = TrainPreset(
    name="aigibench-setting2",
    summary="the paper's training run: OpenAI CLIP ViT-L/14, patch-selection + flip, stage 1 "
    "(3 epochs) then stage 2 (1 epoch), Adam 1e-4, batch 32, DGS reference config; "
    "data: AIGIBench Setting-II",
    dgs="reference",
    options={
        "model": "ViT-L-14@openai",
        "transform": "patch-selection",
        "flip": True,
        "stage": "both",
        "stage1_epochs": 3,
        "epochs": 1,
        "batch_size": 32,
        "lr": 1e-4,
        "stage1_lr": 1e-4,
        "lr_step": 10,
        "lr_gamma": 0.9,
    },
    # the released training command: --classes car,cat,chair,horse,sdv1.4
    subsets=("car", "cat", "chair", "horse", "sdv1.4"),
)

TRAIN_PRESETS: Mapping[str, TrainPreset] = MappingProxyType(
    {
        "reference": TrainPreset(
            "reference", "DGS options start from DGSConfig.reference() (LoRA on q/k/v)"
        ),
        "library": TrainPreset(
            "library", "DGS options start from the DGSConfig() defaults", dgs="library"
        ),
        AIGIBENCH_SETTING2.name: AIGIBENCH_SETTING2,
    }
)

DEFAULT_PRESET = "reference"


def get_preset(name: str) -> TrainPreset:
    """The preset called `name`; `KeyError` naming the known ones otherwise.

    Args:
        name: the preset's name.

    Returns:
        The preset.

    Raises:
        KeyError: no preset has that name (the message lists the known ones).
    """
    try:
        return TRAIN_PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown preset {name!r} (known: {', '.join(TRAIN_PRESETS)})") from None
