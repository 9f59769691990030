"""Integer frequency tables: what the codec turns a model's probabilities into before coding. Encoder and
decoder must build identical tables, so each is a deterministic function of the probabilities (float64)
that both sides compute from the same inputs."""

from __future__ import annotations

import torch

TOTAL_BITS = 16
TOTAL = 1 << TOTAL_BITS  # frequency total of `quantize`'s tables


def quantize(probs: torch.Tensor) -> torch.Tensor:
    """Integer frequencies (..., K) summing to TOTAL, every symbol at least 1 (so any value stays codable).

    probs (..., K) non-negative, summing to about 1 (float64 recommended). Deterministic given the input:
    floor(p * (TOTAL - K)) + 1, the remainder given to the most probable symbol. Returns cumulative
    frequencies (..., K + 1) int64, starting at 0 and ending at TOTAL.
    """
    K = probs.shape[-1]
    if K > TOTAL // 2:
        raise ValueError(f"at most {TOTAL // 2} symbols per table, got {K}")
    freq = torch.floor(probs.double().clamp(min=0) * (TOTAL - K)).long() + 1
    rest = TOTAL - freq.sum(-1, keepdim=True)  # >= 0: the floors lose at most TOTAL - K in all
    freq = freq.scatter_add(-1, probs.argmax(-1, keepdim=True), rest)
    return torch.cat([torch.zeros_like(freq[..., :1]), freq.cumsum(-1)], dim=-1)
