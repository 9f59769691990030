"""Frequency tables of the pixels of p(x | z) for the latent-variable models' codes: pixels are independent
given z, so one step covers one channel of every pixel, following the distribution's own per-channel
conditionals (for the discretized logistic mixture channel c given the channels < c)."""

from __future__ import annotations

import torch

from .tables import quantize


def pixel_steps(dist, params: torch.Tensor, x: torch.Tensor):
    """Yield (c, cum) per channel: cum (n*H*W, K + 1) int64 cumulative frequencies of channel c of every pixel
    (rows in (image, row, column) order) under p(x | z) with parameters params (n, P, H, W), given the channels
    < c that x (n, C, H, W) holds. The caller writes x[:, c] before the next step (coder and decoder alike, so
    both compute from the same inputs: channels < c set, the rest zeros)."""
    n, P, H, W = params.shape
    flat = params.permute(0, 2, 3, 1).reshape(-1, P)  # (n*H*W, P)
    for c in range(x.shape[1]):
        pixels = x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])  # (n*H*W, C): channels < c set, the rest zeros
        yield c, quantize(dist.value_probs(flat, pixels, c))  # (n*H*W, K + 1)
