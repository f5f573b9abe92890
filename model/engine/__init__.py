"""Training and evaluation of SAS-VPReID (``sasreid train`` / ``sasreid evaluate``).

Public API::

    from model.engine import TrainConfig, Trainer, evaluate_checkpoint, ReIDEvaluator, EvalReport
"""

from model.engine.config import TrainConfig
from model.engine.datasets import EvalCase, ReIDData, load_reid_data
from model.engine.evaluate import evaluate_checkpoint, evaluate_model
from model.engine.evaluator import ReIDEvaluator, RerankParams
from model.engine.report import EvalReport
from model.engine.submission import write_submission
from model.engine.trainer import Trainer, TrainingError, TrainResult

__all__ = [
    "EvalCase",
    "EvalReport",
    "ReIDData",
    "ReIDEvaluator",
    "RerankParams",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "TrainingError",
    "evaluate_checkpoint",
    "evaluate_model",
    "load_reid_data",
    "write_submission",
]
