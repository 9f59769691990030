"""Reference sampler: one full forward pass per generation step. Slow and obviously correct.

It asks the model only for `forward`, `distribution` and `image`, so it serves every model family. A step
is a pixel (joint distributions) or a sub-pixel (per-channel distributions). Steps whose pixel is known in
every image (completion) are skipped; in other steps known pixels keep their value after the draw, so a
faster sampler that makes the same draws in the same order returns identical images.
"""
from __future__ import annotations

import torch


@torch.no_grad()
def sample_naive(model, x: torch.Tensor, cond, temperature: float, generator, known: torch.Tensor | None) -> torch.Tensor:
    """Fill x (n, C, H, W) int64 in generation order; known (n, H, W) bool marks pixels to keep."""
    dist = model.distribution
    C, H, W = model.image.shape
    for i in range(H):
        for j in range(W):
            keep = known[:, i, j] if known is not None else None
            if keep is not None and bool(keep.all()):
                continue
            if dist.joint:
                params = model(x, cond)[:, :, i, j]  # (n, P)
                new = dist.sample(params, temperature, generator)  # (n, C)
                x[:, :, i, j] = new if keep is None else torch.where(keep[:, None], x[:, :, i, j], new)
            else:
                for c in range(C):
                    params = model(x, cond)[:, :, i, j]
                    new = dist.sample(params, temperature, generator, channel=c)  # (n,)
                    x[:, c, i, j] = new if keep is None else torch.where(keep, x[:, c, i, j], new)
    return x
