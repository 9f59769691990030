"""Models and images shared by the codec tests."""

from __future__ import annotations

import numpy as np
import torch

import pixelar
from pixelar.codec import compress, decompress
from pixelar.codec.coders import PRECISION
from pixelar.codec.pixels import pixel_steps
from pixelar.codec.tables import TOTAL
from pixelar.threads import num_threads


def perturbed(name: str, spec, scale: float = 0.2, size: str = "tiny", **kw):
    """`name` of `size` (default tiny) for spec in eval mode, every weight moved by scale x N(0, 1) (seeded):
    random weights, since output heads and some last layers start at zero and would give flat distributions."""
    torch.manual_seed(1)
    model = pixelar.create_model(name, spec, size, **kw).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))
    return model


def random_images(spec, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, spec.num_values, (n, *spec.shape), generator=g)


def differs_on_two_threads(fn) -> bool:
    """Whether fn() (a tensor, or a list of tensors) gives other floats on 2 CPU threads than on 1: whether
    a test's model and images are large enough for torch's kernels to split their sums by the thread count."""
    outs = []
    for threads in (1, 2):
        with num_threads(threads), torch.no_grad():
            out = fn()
        outs.append(out if isinstance(out, (list, tuple)) else [out])
    return not all(torch.equal(a, b) for a, b in zip(*outs))


def round_trip_across_thread_counts(model, x: torch.Tensor, cond=None) -> bytes:
    """Compress on 1 CPU thread and on 2 (the caller's count and threads= alike): the same bytes; each stream
    decodes on the other count to x, and the caller's count is restored. -> the stream."""
    streams = []
    for threads in (1, 2):
        with num_threads(threads):
            streams.append(compress(model, x, cond, threads=threads))
            assert torch.get_num_threads() == threads
    for threads, data in zip((2, 1), streams):
        with num_threads(threads):
            assert torch.equal(decompress(model, data, cond, threads=threads), x)
    assert streams[0] == streams[1], "the bytes depend on the thread count"
    return streams[0]


def pixel_tables(model, params: torch.Tensor, x: torch.Tensor) -> list[torch.Tensor]:
    """The frequency tables of x (n, C, H, W) under p(x | z) with parameters params, as a latent-variable
    model's coder builds them (one channel of every pixel per table)."""
    work, tables = torch.zeros_like(x), []
    for c, cum in pixel_steps(model.distribution, params, work):
        tables.append(cum)
        work[:, c] = x[:, c]
    return tables


def constriction_tables(cum) -> np.ndarray:
    """The 24-bit frequencies (r, K) that constriction codes with for the integer tables cum (r, K + 1) of
    total 2^16, as pixelar.codec.coders derives them (Categorical(perfect=False) on the rows frequency / 2^16,
    exact in float64): value s gets floor(F_(s+1) * (2^24 - K)) - floor(F_s * (2^24 - K)) + 1 of 2^24, F the
    row's cumulative probabilities. test_codec.py checks this against constriction's decoder."""
    cum = np.asarray(cum.cpu() if isinstance(cum, torch.Tensor) else cum, dtype=np.int64)
    K = cum.shape[1] - 1
    edges = np.floor(cum / TOTAL * ((1 << PRECISION) - K)).astype(np.int64) + np.arange(K + 1)
    return np.diff(edges, axis=1)


def ideal_bits(cum, values, tables=constriction_tables) -> float:
    """-log2 of the probabilities of values (r,) under the tables of cum (r, K + 1): the 24-bit ones the
    coders use, or (tables=None) the integer tables' own."""
    cum = np.asarray(cum.cpu() if isinstance(cum, torch.Tensor) else cum, dtype=np.int64)
    v = np.asarray(values.cpu() if isinstance(values, torch.Tensor) else values).reshape(-1)
    rows = np.arange(len(v))
    if tables is None:
        return float(-np.log2((cum[rows, v + 1] - cum[rows, v]) / TOTAL).sum())
    return float(-np.log2(tables(cum)[rows, v] / (1 << PRECISION)).sum())
