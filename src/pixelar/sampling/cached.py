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

from .naive import generate, generation_steps


def begin(model, x: torch.Tensor, cond):
    """The model's incremental state, or NotImplementedError naming the model."""
    start = getattr(model, "begin_cache", None)
    if not callable(start):
        name = getattr(model, "name", "") or type(model).__name__
        raise NotImplementedError(
            f"model {name!r} ({type(model).__name__}) has no incremental forward "
            "(begin_cache) for cached sampling; use method='naive'"
        )
    return start(x, cond)


@torch.no_grad()
def sample_cached(
    model, x: torch.Tensor, cond, temperature: float, generator, known: torch.Tensor | None
) -> torch.Tensor:
    """Fill x (n, C, H, W) int64 in generation order; known (n, H, W) bool marks pixels to keep."""
    state = begin(model, x, cond)
    if hasattr(model, "cache_graph"):  # pixelar.nn.cache's per-layer row rings run in raster order only
        steps = [(i, j) for i, j, _ in generation_steps(model)]
        H, W = model.image.height, model.image.width
        if steps != [(i, j) for i in range(H) for j in range(W)]:
            raise NotImplementedError(
                f"the per-layer cache follows raster order, but {type(model).__name__}'s "
                "generation order is another; use method='naive'"
            )
    return generate(model, x, state.params_at, temperature, generator, known)
