"""Evaluation of trained models: exact bits/dim over a dataset split (and per transformation: augment.py),
linear probes (probe.py)."""

from .augment import evaluate_per_augmentation
from .bpd import EVAL_BATCH_SIZE, TOKEN_NOTE, describe, evaluate, image_log_prob, order_mixture

__all__ = [
    "EVAL_BATCH_SIZE",
    "TOKEN_NOTE",
    "describe",
    "evaluate",
    "evaluate_per_augmentation",
    "image_log_prob",
    "order_mixture",
]
