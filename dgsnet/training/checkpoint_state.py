"""`dgsnet.training.checkpoint_state`: an earlier path, kept working.

The contents of `trainer_state.json` and of the run summary are assembled in
`dgsnet.training.run_state`, from values (no longer from the trainer); this module re-exports
the two functions.
"""

from .run_state import checkpoint_state, run_summary

__all__ = ["checkpoint_state", "run_summary"]
