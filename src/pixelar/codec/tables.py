"""Integer frequency tables: what the codec turns a model's probabilities into before coding. Encoder and
decoder must build identical tables, so each is a deterministic function of the probabilities (float64)
that both sides compute from the same inputs."""

from __future__ import annotations

import numpy as np
import torch

TOTAL_BITS = 16
TOTAL = 1 << TOTAL_BITS  # frequency total of `quantize`'s tables


def frequencies(probs) -> np.ndarray:
    """Integer frequencies (..., K) int64 summing to TOTAL, every symbol at least 1 (so any value stays codable).

    probs (..., K) non-negative (tensor or array), summing to about 1 (computed in float64). Deterministic
    given the input: floor(p * (TOTAL - K)) + 1, the remainder given to the most probable symbol (the first
    of equal ones)."""
    return _frequencies(probs).astype(np.int64)


def coder_rows(probs) -> np.ndarray:
    """frequencies(probs) / TOTAL, float64 (..., K): the rows constriction codes with (coders.rows), in one
    go. Valid by construction (every count >= 1, total TOTAL), so unchecked: a coding step's table is a few
    small numpy operations, each far cheaper than torch's on a step's few rows."""
    return _frequencies(probs) * (1.0 / TOTAL)  # exact: a power of two


def _frequencies(probs) -> np.ndarray:
    """frequencies(probs) as float64 (exact integers below 2^17)."""
    p = probs.detach().cpu().numpy() if isinstance(probs, torch.Tensor) else np.asarray(probs)
    p = p.astype(np.float64, copy=False)
    K = p.shape[-1]
    if K > TOTAL // 2:
        raise ValueError(f"at most {TOTAL // 2} symbols per table, got {K}")
    freq = np.maximum(p, 0)
    freq *= TOTAL - K
    np.floor(freq, out=freq)
    freq += 1
    flat = freq.reshape(-1, K)  # a view: the remainder (>= 0: the floors lose at most TOTAL - K in all) goes
    flat[np.arange(len(flat)), p.reshape(-1, K).argmax(-1)] += TOTAL - flat.sum(-1)  # to the first likeliest
    return freq


def quantize(probs: torch.Tensor) -> torch.Tensor:
    """`frequencies` as cumulative frequencies (..., K + 1) int64 (a tensor), starting at 0 and ending at
    TOTAL."""
    freq = torch.from_numpy(frequencies(probs))
    return torch.cat([torch.zeros_like(freq[..., :1]), freq.cumsum(-1)], dim=-1)
