"""The optimizer (Adam) and the learning-rate schedule of a training run, as plain functions."""

from __future__ import annotations

import torch


def make_optimizer(params, lr: float, betas: tuple[float, float], eps: float) -> torch.optim.Adam:
    """Adam over `params`; its lr is overwritten before every step by `set_lr(opt, learning_rate(...))`."""
    return torch.optim.Adam(params, lr=lr, betas=tuple(betas), eps=eps)


def learning_rate(step: int, lr: float, warmup_steps: int = 0, lr_decay: float = 1.0) -> float:
    """The learning rate of step `step` (0-based): linear warm-up to `lr`, times a per-step decay.

    lr * min(1, (step + 1) / warmup_steps) * lr_decay ** step; the warm-up factor is 1 when warmup_steps is 0.
    It depends only on the step, so a resumed run (or one given more steps) follows the same schedule.
    """
    warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    return lr * warm * lr_decay**step


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
