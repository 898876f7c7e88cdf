"""`dgsnet.evaluation`: loading a trained detector and scoring it, by its short path.

The code lives in `dgsnet.training.evaluation`, inside the training engine whose run folders
it reads (below the trainer, which never imports it); this module re-exports its names, so
`from dgsnet.evaluation import evaluate` and `from dgsnet.training import evaluate` both work.
"""

from .training.evaluation import (
    EvalItems,
    ImageFiles,
    Prediction,
    TrainedDetector,
    class_probabilities,
    evaluate,
    evaluate_classifier,
    load_trained,
    predict_probabilities,
    predict_scores,
    resolve_checkpoint,
    stage1_result,
)
from .training.run_folder import RELEASED_IMPORT_NAME

__all__ = [
    "RELEASED_IMPORT_NAME",
    "EvalItems",
    "ImageFiles",
    "Prediction",
    "TrainedDetector",
    "class_probabilities",
    "evaluate",
    "evaluate_classifier",
    "load_trained",
    "predict_probabilities",
    "predict_scores",
    "resolve_checkpoint",
    "stage1_result",
]
