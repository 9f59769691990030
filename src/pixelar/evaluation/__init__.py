"""Evaluation of trained models: exact bits/dim over a dataset split."""
from .bpd import evaluate, first_images

__all__ = ["evaluate", "first_images"]
