"""Global conditioning shared by the convolutional models: a class label or a vector -> per-channel bias."""

from __future__ import annotations

import torch
import torch.nn as nn


class GlobalBias(nn.Module):
    """Maps cond to a bias (B, channels, 1, 1) broadcast over space (the V^T h term of Gated PixelCNN).

    cond is int64 labels (B,) when num_classes > 0, or floats (B, cond_dim) when cond_dim > 0.
    """

    def __init__(self, channels: int, num_classes: int = 0, cond_dim: int = 0):
        super().__init__()
        if num_classes:
            self.proj = nn.Embedding(num_classes, channels)
            nn.init.zeros_(self.proj.weight)
        else:
            self.proj = nn.Linear(cond_dim, channels, bias=False)
            nn.init.zeros_(self.proj.weight)

    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        return self.proj(cond)[:, :, None, None]


def maybe_bias(channels: int, num_classes: int, cond_dim: int) -> GlobalBias | None:
    return GlobalBias(channels, num_classes, cond_dim) if (num_classes or cond_dim) else None
