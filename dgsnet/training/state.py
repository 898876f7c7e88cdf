"""`dgsnet.training.state`: an earlier path, kept working.

What this module held is now in two modules named for what they are:
`dgsnet.training.run_folder` (the layout of a training output folder, atomic commits) and
`dgsnet.training.run_state` (the trainer's resumable run state: `RunProgress`,
`trainer_state.json`, the optimizer and teacher-cache files). This module re-exports their
names.
"""

from ..wrapper.checkpoint import MODEL_INFO_NAME
from .run_folder import (
    FINAL_DIR,
    FRESH_RUN_CLEARS,
    LAST_DIR,
    LOG_NAME,
    OPTIMIZER_NAME,
    RUN_NAME,
    STATE_NAME,
    SUMMARY_NAME,
    TEACHER_CACHE_NAME,
    clear_run_state,
    commit_dir,
    find_resume_checkpoint,
    save_model_dir,
    staging_dir,
    write_run_json,
)
from .run_state import (
    STATE_FORMAT,
    STATE_VERSION,
    canonical_json,
    load_training_state,
    optimizer_payload,
    read_state_json,
    restore_optimizer,
    save_optimizer,
    save_teacher_cache,
    write_state_json,
)

__all__ = [
    "FINAL_DIR",
    "FRESH_RUN_CLEARS",
    "LAST_DIR",
    "LOG_NAME",
    "MODEL_INFO_NAME",
    "OPTIMIZER_NAME",
    "RUN_NAME",
    "STATE_FORMAT",
    "STATE_NAME",
    "STATE_VERSION",
    "SUMMARY_NAME",
    "TEACHER_CACHE_NAME",
    "canonical_json",
    "clear_run_state",
    "commit_dir",
    "find_resume_checkpoint",
    "load_training_state",
    "optimizer_payload",
    "read_state_json",
    "restore_optimizer",
    "save_model_dir",
    "save_optimizer",
    "save_teacher_cache",
    "staging_dir",
    "write_run_json",
    "write_state_json",
]
