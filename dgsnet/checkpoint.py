"""`dgsnet.checkpoint`: an earlier path of `dgsnet.wrapper.checkpoint`, kept working.

This module re-exports the public names of `dgsnet.wrapper.checkpoint`; new code imports them
from there (or from `dgsnet` / `dgsnet.wrapper`).
"""

from .wrapper.checkpoint import (
    CONFIG_NAME,
    FORMAT_VERSION,
    WEIGHTS_NAME,
    CheckpointModel,
    check_same_function,
    config_digest,
    config_from_meta,
    describe_head,
    get_dgs_state_dict,
    load_dgs_checkpoint,
    load_dgs_weights,
    read_checkpoint_meta,
    save_dgs_checkpoint,
    set_dgs_state_dict,
)

__all__ = [
    "CONFIG_NAME",
    "CheckpointModel",
    "FORMAT_VERSION",
    "WEIGHTS_NAME",
    "check_same_function",
    "config_digest",
    "config_from_meta",
    "describe_head",
    "get_dgs_state_dict",
    "load_dgs_checkpoint",
    "load_dgs_weights",
    "read_checkpoint_meta",
    "save_dgs_checkpoint",
    "set_dgs_state_dict",
]
