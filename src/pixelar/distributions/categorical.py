"""Categorical output: a softmax over `num_values` values per sub-pixel (PixelRNN/PixelCNN, Image GPT).

Works for any number of values: 256 for 8-bit images, 2 for binarized images, 2**b for b-bit images.
With `joint=True` (for backbones whose features see only earlier pixels, like PixelCNN++) the channels of
one pixel are coupled autoregressively inside the distribution: the logits of channel c get a learned
additive term for each value of every earlier channel c' < c of the same pixel, table (K, K) per pair.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..types import ImageSpec
from .base import OutputDistribution, check_temperature, gumbel_argmax, upcast


class Categorical(OutputDistribution):
    def __init__(self, image: ImageSpec, joint: bool = False):
        super().__init__(image)
        self.joint = bool(joint)
        C, K = image.channels, image.num_values
        self.num_params = C * K
        self.pairs = [(c, p) for c in range(C) for p in range(c)] if self.joint else []
        # coupling[k]: (K, K) logit offsets for channel c given earlier channel p's value; zero init.
        self.coupling = nn.Parameter(torch.zeros(len(self.pairs), K, K)) if self.pairs else None

    def config(self) -> dict:
        return {}

    def _logits(self, params: torch.Tensor, x: torch.Tensor | None) -> torch.Tensor:
        """params (B, C*K, H, W) -> logits (B, C, H, W, K), adding the coupling terms given x."""
        B, _, H, W = params.shape
        C, K = self.image.channels, self.image.num_values
        logits = upcast(params).view(B, C, K, H, W).permute(0, 1, 3, 4, 2)
        if self.pairs:
            extra = [torch.zeros_like(logits[:, 0]) for _ in range(C)]
            for k, (c, p) in enumerate(self.pairs):
                extra[c] = extra[c] + self.coupling[k][x[:, p]]  # (B, H, W, K)
            logits = logits + torch.stack(extra, dim=1)
        return logits

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        logits = self._logits(params, x)
        return F.log_softmax(logits, dim=-1).gather(-1, x.unsqueeze(-1)).squeeze(-1)

    def value_log_probs(self, params, x, channel):
        logits = self._logits(params[:, :, None, None], x[:, :, None, None])  # (B, C, 1, 1, K)
        return F.log_softmax(logits[:, channel, 0, 0], dim=-1)

    def interval_log_prob(self, params, x, lo, hi):
        logits = self._logits(params, x)  # (B, C, H, W, K), coupled to the true earlier channels
        v = torch.arange(logits.shape[-1], device=logits.device)
        outside = (v < lo.unsqueeze(-1)) | (v > hi.unsqueeze(-1))
        logits = logits.masked_fill(outside, float("-inf"))
        return F.log_softmax(logits, dim=-1).gather(-1, x.unsqueeze(-1)).squeeze(-1)

    def sample(self, params, temperature=1.0, generator=None, channel=None):
        t = check_temperature(temperature)
        B = params.shape[0]
        C, K = self.image.channels, self.image.num_values
        logits = upcast(params).view(B, C, K)
        if not self.joint:
            if channel is None:
                raise ValueError("Categorical(joint=False) samples one channel at a time: pass channel=")
            return gumbel_argmax(logits[:, channel], t, generator)
        out = torch.zeros(B, C, dtype=torch.long, device=params.device)
        for c in range(C):
            lc = logits[:, c]
            for k, (cc, p) in enumerate(self.pairs):
                if cc == c:
                    lc = lc + self.coupling[k][out[:, p]]
            out[:, c] = gumbel_argmax(lc, t, generator)
        return out
