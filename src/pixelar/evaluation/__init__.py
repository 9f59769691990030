"""Evaluation of trained models: exact bits/dim over a dataset split (and per transformation: augment.py)."""
from .augment import evaluate_per_augmentation
from .bpd import evaluate, first_images

__all__ = ["evaluate", "evaluate_per_augmentation", "first_images"]
