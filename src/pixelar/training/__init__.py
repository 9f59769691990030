"""Training: the loop (train), its checkpoints, optimizer, learning-rate schedule and weight EMA."""

from ..evaluation import evaluate
from .loop import TrainingDiverged, train

__all__ = ["train", "TrainingDiverged", "evaluate"]
