"""Conditioning shared by the convolutional models: a class label or a vector -> per-channel bias (GlobalBias),
or a map known before generation -> per-position bias (SpatialBias, the V * s term of conditional PixelCNN)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


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

    def forward(self, cond: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        return self.proj(cond)[:, :, None, None]


class SpatialBias(nn.Module):
    """Maps a conditioning map (B, cond_channels, H, W) to a bias (B, channels, h, w) at a layer's resolution: a
    1x1 convolution of the map, average-pooled to (h, w) first where the layer is coarser (the map is known in
    full before generation, so any position may read all of it without breaking causality)."""

    def __init__(self, channels: int, cond_channels: int):
        super().__init__()
        self.proj = nn.Conv2d(cond_channels, channels, 1, bias=False)
        nn.init.zeros_(self.proj.weight)  # starts as the unconditional model, as GlobalBias

    def forward(self, cond: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        if size is not None and tuple(size) != tuple(cond.shape[-2:]):
            cond = F.adaptive_avg_pool2d(cond, tuple(size))
        return self.proj(cond)


def maybe_bias(channels: int, num_classes: int, cond_dim: int, cond_channels: int = 0) -> nn.Module | None:
    if cond_channels:
        return SpatialBias(channels, cond_channels)
    return GlobalBias(channels, num_classes, cond_dim) if (num_classes or cond_dim) else None


def graph_bias(g, module: nn.Module | None, cond, H: int, W: int, name: str):
    """A conditioning bias for a layer of a pixelar.nn.cache.CausalGraph at resolution H x W -> (extras, add):
    the nodes to pass to the layer's post as extras and add(y, *those extras) -> y plus the bias at y's
    positions. A global bias is one tensor added everywhere; a spatial one is a constant map of the graph, read
    at each position the cache computes."""
    if module is None:
        return [], lambda y: y
    bias = module(cond, (H, W))
    if bias.shape[-2:] == (1, 1):
        return [], lambda y: y + bias
    node = g.constant(bias, name=f"{name}.cond")
    return [node], lambda y, b: y + b
