"""`dgsnet.presets`: an earlier path of `dgsnet.cli.presets`, kept working.

The named training settings of `dgsnet train --preset` are used by the command line only, so
they live in `dgsnet.cli.presets`; this module re-exports its names.
"""

from .cli.presets import AIGIBENCH_SETTING2 as AIGIBENCH_SETTING2
from .cli.presets import DEFAULT_PRESET, TRAIN_PRESETS, TrainPreset, get_preset

__all__ = ["TrainPreset", "TRAIN_PRESETS", "DEFAULT_PRESET", "get_preset"]
