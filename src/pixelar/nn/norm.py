"""Normalisations.

RMSNorm, as in Image GPT's released `norm` (openai/image-gpt, src/model.py): despite its docstring there, the
released function divides by sqrt(mean(x^2) + eps) and multiplies by a learned gain: no mean subtraction and
no bias (the "RMSNorm" of Zhang and Sennrich 2019).

positional_norm, as LMConv's released runs use it (ajayjain/lmconv, layers.py `pono`): positional
normalisation (PONO, Li, Wu, Lim, Belongie, Weinberger 2019), no learned parameters.
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


def positional_norm(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Each position's feature vector over the channels (dim 1) to zero mean and unit variance:
    (x - mean) / sqrt(var + eps). x (B, C, H, W) maps or (B, C) single positions alike, C >= 2.

    var is the unbiased variance (divisor C - 1), torch's default x.var(dim=1) that ajayjain/lmconv's `pono`
    takes, and eps = 1e-5 is its epsilon. It reads one position only, so it keeps whatever causal structure a
    network has over positions. Computed in at least float32 (a bf16 variance over a few hundred channels
    loses too much), returned in x's dtype."""
    xf = x.to(torch.promote_types(x.dtype, torch.float32))
    mean = xf.mean(dim=1, keepdim=True)
    std = xf.var(dim=1, keepdim=True).add(eps).sqrt()
    return ((xf - mean) / std).to(x.dtype)


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the sigmoid approximation of GELU that Image GPT uses (its `gelu2`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)
