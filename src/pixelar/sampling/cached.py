"""Cached sampler (Ramachandran et al. 2017): the naive sampler's steps, each step's parameters computed
incrementally instead of by a full forward pass.

It knows no model family. The model provides the incremental-step protocol:

    state = model.begin_cache(x, cond)   # x: the (n, C, H, W) int64 image being filled in place
    state.params_at(i, j) -> (n, P)      # == model(x, cond)[:, :, i, j] for the current x

`params_at` may assume that pixels before (i, j) in the generation order are final and, for per-channel outputs,
that the channels of (i, j) drawn so far are set; requests come in the model's generation order (raster
for the convolutional models, any order for LMConv, coarse to fine for the pyramid; pixels known in every
image are skipped). Raster-order convolutional models get this from pixelar.nn.cache, the transformers from
a KV cache (models/sequence.py), LMConv from per-pixel columns (models/lmconv.py). The draws are
exactly the naive sampler's (same `dist.sample` calls, order and shapes), so for one generator seed both
samplers return the same images.
"""

from __future__ import annotations

import torch

from .naive import generate


@torch.no_grad()
def sample_cached(
    model, x: torch.Tensor, cond, temperature: float, generator, known: torch.Tensor | None, progress=None
) -> torch.Tensor:
    """Fill x (n, C, H, W) int64 in generation order; known (n, H, W) bool marks pixels to keep; progress:
    see pixelar.progress (generation steps)."""
    state = model.begin_cache(x, cond)  # NotImplementedError naming the model where it has none
    return generate(model, x, state.params_at, temperature, generator, known, progress)
