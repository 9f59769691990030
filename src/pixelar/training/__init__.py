"""Training: the loop (train), its checkpoints, optimizer, learning-rate schedule and weight EMA."""

from ..evaluation import evaluate
from .loop import TrainingDiverged, TrainingInterrupted, train

__all__ = ["train", "TrainingDiverged", "TrainingInterrupted", "evaluate"]
