r"""The training engine behind `dgsnet train` / `dgsnet eval`, usable from Python too.

Pieces (see `docs/cli.md` for the command line on top of them), one module each:
`options` (`TrainOptions`), `precision`, `seeding`, `distributed`, `data`
(items, the resumable sampler, the fingerprint, loaders), `run_folder` (the output-folder
layout), `run_state` (the trainer's resumable run state: `RunProgress`,
`trainer_state.json`), `runlog`, `signals`, `evaluation` (loading a trained run and scoring
it; also importable as `dgsnet.evaluation`), `trainer` (`Trainer`) and `api` (`train`); the
model factory is `dgsnet.models` (its names are re-exported here).

* `build_model`: a model spec (`tiny`, an open_clip name with its weights such as
  `ViT-L-14@openai`, or `hf:<path>` for a Hugging Face CLIP) -> `ModelBundle`
  `(model, tokenizer, train_transform, eval_transform)`.
* `train`: stage 1 (the teacher head as a linear probe on frozen features, through
  `DGSWrapper.fit_teacher_head`) then stage 2 (LoRA + image/text heads with the gradient
  surgery; Adam, lr `x0.9` every 10 epochs as in the reference code), or either alone.
  Per-step JSONL log, tqdm bar, resumable checkpoints (safetensors + JSON, never pickle),
  non-finite loss/gradient detection, `torchrun` data parallelism.
* `evaluate`: one `MetricsTable` per test root (one row per
  subset), optionally on JPEG-compressed / blurred / resized images.
* validation during training (`monitor`, `ValidationMonitor`): `train(..., val_data=...)`
  or `val_fraction`, after every epoch or every `val_every` steps; metrics in the log,
  TensorBoard and `validation.csv`, the best weights in `best/`, early stopping after
  `patience` validations without improvement; resumed runs stay bitwise exact.

Reproducibility. Every source of randomness in `train` is a pure function of the seed
and the position in the run, so an interrupted run resumed from its checkpoint finishes with
exactly the weights of an uninterrupted one:

* the sampler's permutation of epoch `e` is drawn from a generator seeded with
  `(seed, e)`; the checkpoint stores the epoch and the number of batches done in it;
* the random part of the training transform (flip, patch shuffle) of item `i` in epoch
  `e` runs under torch's RNG seeded with `(seed, e, i)` (whatever the worker or rank);
* before stage-2 step `k` torch's RNG (LoRA dropout) is seeded with `(seed, rank, k)`;
* the optimizer state, the learning-rate schedule and the RNG states are saved as well.

With `deterministic=True` `train` also switches on
`torch.use_deterministic_algorithms` for its duration (bitwise repeatable CPU runs).

Precision (`dgsnet.training.precision`): `precision="fp32"` (default), `"tf32"`,
`"bf16"` (autocast) or `"fp16"` (autocast + `GradScaler`, its state checkpointed);
`compile=True` runs `torch.compile` on the image tower.
"""

from __future__ import annotations

from ..errors import ModelLoadError, NonFiniteError, TrainingConfigError, TrainingInterrupted
from ..models import ClipPreprocess, HFPreprocess, ModelBundle, ModelSpec, build_model
from ..wrapper.checkpoint import MODEL_INFO_NAME
from .api import train
from .data import ResumableSampler, TrainItems, dataset_fingerprint, open_datasets
from .distributed import DistInfo, setup_distributed
from .evaluation import (
    Prediction,
    TrainedDetector,
    evaluate,
    evaluate_classifier,
    load_trained,
    predict_probabilities,
    predict_scores,
)
from .monitor import BEST_DIR, VALIDATION_CSV, ValidationMonitor, held_out_split
from .options import TrainOptions
from .precision import PRECISIONS, Precision, compile_image_tower
from .run_folder import (
    FINAL_DIR,
    LAST_DIR,
    LOG_NAME,
    OPTIMIZER_NAME,
    RUN_NAME,
    STATE_NAME,
    SUMMARY_NAME,
    TEACHER_CACHE_NAME,
    find_resume_checkpoint,
    resolve_checkpoint,
)
from .run_state import STATE_FORMAT, STATE_VERSION, RunProgress
from .seeding import seed_everything
from .trainer import Trainer, TrainResult, TrainState

__all__ = [
    "LAST_DIR",
    "FINAL_DIR",
    "LOG_NAME",
    "MODEL_INFO_NAME",
    "STATE_NAME",
    "OPTIMIZER_NAME",
    "RUN_NAME",
    "SUMMARY_NAME",
    "TEACHER_CACHE_NAME",
    "STATE_FORMAT",
    "STATE_VERSION",
    "ClipPreprocess",
    "HFPreprocess",
    "ModelSpec",
    "ModelBundle",
    "ModelLoadError",
    "TrainingConfigError",
    "NonFiniteError",
    "TrainingInterrupted",
    "TrainOptions",
    "PRECISIONS",
    "Precision",
    "compile_image_tower",
    "TrainState",
    "TrainResult",
    "RunProgress",
    "Trainer",
    "DistInfo",
    "ResumableSampler",
    "TrainItems",
    "ValidationMonitor",
    "held_out_split",
    "BEST_DIR",
    "VALIDATION_CSV",
    "build_model",
    "open_datasets",
    "train",
    "evaluate",
    "evaluate_classifier",
    "predict_scores",
    "predict_probabilities",
    "load_trained",
    "TrainedDetector",
    "Prediction",
    "resolve_checkpoint",
    "find_resume_checkpoint",
    "setup_distributed",
    "dataset_fingerprint",
    "seed_everything",
]
