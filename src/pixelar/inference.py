"""Running a model for inference: eval mode (dropout off) and no autograd, the model's mode restored after.

Every library entry point that only reads a model (evaluation, scoring, sampling, completion, compression,
probing) runs its body inside `inference(model)` rather than relying on a decorator: a decorator can be
separated from its function by an edit (it once was, and evaluation then kept every batch's autograd graph
alive until it ran out of memory), a `with` block inside the body cannot. tests/test_inference.py checks that
each entry point builds no autograd graph and that evaluation memory does not grow with the data.
Lives below every package so that models/, sampling/, evaluation/ and codec/ can all use it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def inference(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """`with inference(model):` eval mode and torch.no_grad() for the block; the model's train/eval mode is
    restored afterwards, also when the block raises."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)


def require_eval(model: torch.nn.Module) -> None:
    """Refuse a model in training mode where a result must not depend on dropout (the incremental forward
    of cached sampling reproduces the eval-mode forward pass only)."""
    if model.training:
        raise ValueError("cached evaluation needs the model in eval mode (dropout off): call model.eval()")
