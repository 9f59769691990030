"""RMS normalisation as in Image GPT's released `norm` (openai/image-gpt, src/model.py).

Despite its docstring there, the released function divides by sqrt(mean(x^2) + eps) and multiplies by a
learned gain: no mean subtraction and no bias (the "RMSNorm" of Zhang and Sennrich 2019).
"""

from __future__ import annotations

import torch
import torch.nn as nn


class RMSNorm(nn.Module):
    """x (..., d) -> x / sqrt(mean(x^2 over d) + eps) * g, with g (d,) initialised to one."""

    def __init__(self, d: int, eps: float = 1e-5):
        super().__init__()
        self.eps = float(eps)
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the sigmoid approximation of GELU that Image GPT uses (its `gelu2`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)
