"""Bits-back coding with ANS (Townsend, Bird and Barber 2019, "Practical lossless compression with latent
variables using bits back coding"; hierarchical latents as in Townsend et al. 2020, HiLLoC) for latent-variable
models whose latent layers are diagonal Gaussians generated top-down (coding scheme "bits-back": vdvae).

Latents are discretised as in the papers: each dimension of layer k is cut into B = 2^LATENT_BITS buckets of
equal mass under its prior p(z_k | z_<k) (edges at the prior's quantiles j / B) and stands for the prior quantile
at the bucket's middle. Every bucket then has prior probability 1 / B (LATENT_BITS bits exactly), and
posterior probability the mass of q(z_k | x, z_<k) in it (quantised to 2^16). Coder and decoder know the
buckets of layer k once they know z_<k, so the hierarchy is coded layer by layer.

Per image, on one ANS stack (coders.Stack: constriction's, over a fixed pseudo-random pool), the coder:
  1. pops z_k with q(z_k | x, z_<k) for each layer, top first: it draws z from q with the bits on the stack;
  2. pushes x with p(x | z), one channel of all pixels at a time (pixels.py), the last channel first;
  3. pushes z with the prior (uniform buckets), the bottom layer first.
The decoder undoes each step in reverse: pops z with the prior (top first), pops x, then pushes z back with q
(which it can compute now it has x), restoring the bits the coder popped: those belong to the image before.
Images are coded in order and decoded last first. An image costs -log2 p(x | z) - log2 p(z) + log2 q(z | x)
bits, in expectation its negative ELBO under the discretised latents. The first image of a segment pops from an
empty stack (the pool of coders.py): those bits are not sent, but not given back either, a one-off start-up cost
of about the entropy of its posterior (LATENT_BITS bits for every latent dimension q leaves at the prior), which
is why a segment of this scheme holds many images (images.SEGMENT_IMAGES_BITS_BACK).

The model runs on one image at a time, as coder and decoder, so both see the same floats (the decoder's first
pass, without x, computes the priors exactly as the coder's pass with x does).
"""

from __future__ import annotations

import numpy as np
import torch

from .coders import Stack
from .pixels import pixel_steps
from .tables import quantize

LATENT_BITS = 8  # buckets per latent dimension: 2^8 of equal prior mass
_B = 1 << LATENT_BITS
_EDGES = torch.special.ndtri(torch.arange(_B + 1, dtype=torch.float64) / _B)  # (B + 1,), -inf ... inf
_MIDDLES = torch.special.ndtri((torch.arange(_B, dtype=torch.float64) + 0.5) / _B)  # (B,)


def _posterior_table(prior, posterior) -> np.ndarray:
    """Cumulative frequencies (r, B + 1) int64 of total 2^16 of each bucket under the posterior, for the r
    dimensions of a layer (flattened in (image, channel, row, column) order)."""
    pm, plogs, qm, qlogs = (t.detach().double().reshape(-1, 1) for t in (*prior, *posterior))
    # the posterior in the prior's standard units, where the bucket edges are fixed
    a = (_EDGES.to(pm.device) - (qm - pm) * torch.exp(-plogs)) * torch.exp(plogs - qlogs)  # (r, B + 1)
    # float64 differences of the CDF are exact to ~1e-16, far below the tables' 2^-16
    return quantize(torch.diff(torch.special.ndtr(a), dim=1)).cpu().numpy()


def _values(prior, buckets: np.ndarray) -> torch.Tensor:
    """The latent values of buckets (r,) for a layer with prior (mean, log-std), in the prior's shape and dtype."""
    pm, plogs = prior
    mid = _MIDDLES.to(pm.device)[torch.from_numpy(buckets).to(pm.device)].view(pm.shape)
    return (pm.double() + torch.exp(plogs.double()) * mid).to(pm.dtype)


def encode_segment(model, images: torch.Tensor, cond, bar) -> bytes:
    """Code images (m, C, H, W) int64 in order on one stack -> its bytes. cond: (m, ...) or None. bar counts
    sub-pixels (pixelar.progress)."""
    stack = Stack()
    for j in range(len(images)):
        _encode_image(model, stack, images[j : j + 1], _one(cond, j))
        bar.advance(images[j].numel())
    return stack.to_bytes()


def _encode_image(model, stack: Stack, x: torch.Tensor, cond) -> None:
    """Steps 1-3 of the module docstring for one image x (1, C, H, W)."""
    buckets: list[np.ndarray] = []

    def pop_posterior(k, prior, posterior):
        buckets.append(stack.pop(_posterior_table(prior, posterior)))
        return _values(prior, buckets[-1])

    params = model.coding_top_down(1, cond, pop_posterior, x)
    tables, work = [], torch.zeros_like(x)
    for c, cum in pixel_steps(model.distribution, params, work):  # as the decoder will fill x
        tables.append((cum, x[:, c].reshape(-1)))
        work[:, c] = x[:, c]
    for cum, values in reversed(tables):  # the decoder pops channel 0 first
        stack.push(cum, values)
    for b in reversed(buckets):  # the decoder pops the top layer first
        stack.push_uniform(b, LATENT_BITS)


def decode_segment(model, data: bytes, m: int, cond, device, bar) -> torch.Tensor:
    """The m images (m, C, H, W) int64 that encode_segment coded into data. Raises ValueError for a damaged
    stack (it runs out of words, or does not end where the coder started)."""
    stack = Stack(data)
    out: list[torch.Tensor] = [None] * m
    for j in reversed(range(m)):  # the last image coded is on top
        out[j] = _decode_image(model, stack, _one(cond, j), device)
        bar.advance(out[j].numel())
    if not stack.check_start():
        raise ValueError("the bits-back stack does not end where its coder started")
    return torch.cat(out)


def _decode_image(model, stack: Stack, cond, device) -> torch.Tensor:
    """The inverse of _encode_image: z with the prior, x given z, then z pushed back with q. -> (1, C, H, W)"""
    buckets: list[np.ndarray] = []

    def pop_prior(k, prior, posterior):
        buckets.append(stack.pop_uniform(prior[0].numel(), LATENT_BITS))
        return _values(prior, buckets[-1])

    params = model.coding_top_down(1, cond, pop_prior)
    x = torch.zeros(1, *model.image.shape, dtype=torch.long, device=device)
    for c, cum in pixel_steps(model.distribution, params, x):
        x[:, c] = torch.from_numpy(stack.pop(cum)).to(device).view(x[:, c].shape)
    tables: list[np.ndarray] = []

    def known(k, prior, posterior):
        tables.append(_posterior_table(prior, posterior))
        return _values(prior, buckets[k])

    model.coding_top_down(1, cond, known, x)
    for cum, b in zip(reversed(tables), reversed(buckets)):  # give the coder's popped bits back
        stack.push(cum, b)
    return x


def _one(cond, j: int):
    return None if cond is None else cond[j : j + 1]
