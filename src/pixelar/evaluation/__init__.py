"""Evaluation of trained models: exact bits/dim over a dataset split, linear probes."""
from .bpd import TOKEN_NOTE, describe, evaluate, first_images

__all__ = ["TOKEN_NOTE", "describe", "evaluate", "first_images"]
