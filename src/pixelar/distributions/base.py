"""The protocol every output distribution follows.

A backbone produces `num_params` parameter maps per pixel, (B, P, H, W). The distribution turns them into
per-sub-pixel conditional log-probabilities and samples. Two layouts exist:

- joint = True: the parameters of pixel (i, j) may depend only on earlier pixels; the distribution itself
  models the channels of one pixel jointly (e.g. the RGB-coupled logistic mixture), teacher-forced on the
  true earlier channels in `log_prob`. Sampling takes one step per pixel.
- joint = False: the parameters come in C consecutive blocks of P / C maps, block c belonging to channel
  c; block c may depend on the channels < c of the same pixel (the backbone guarantees it, e.g. with
  R/G/B masked convolutions). Sampling takes one step per sub-pixel.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..types import ImageSpec


class OutputDistribution(nn.Module):
    """Base class. Subclasses set `num_params` and `joint` and implement `log_prob` and `sample`."""

    num_params: int
    joint: bool

    def __init__(self, image: ImageSpec):
        super().__init__()
        self.image = image

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """params (B, P, H, W), x int64 (B, C, H, W) -> (B, C, H, W) log p(x_d | x_<d) in nats."""
        raise NotImplementedError

    def sample(
        self,
        params: torch.Tensor,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        channel: int | None = None,
    ) -> torch.Tensor:
        """Sample one pixel. params (B, P) of that pixel.

        joint: channel is None, returns int64 (B, C). Not joint: returns int64 (B,) for `channel`.
        temperature 0 returns the mode (of each step's conditional).
        """
        raise NotImplementedError

    def value_log_probs(self, params: torch.Tensor, x: torch.Tensor, channel: int) -> torch.Tensor:
        """log p(x_c = v | x_<c) for every value v of sub-pixel `channel` of one pixel: params (B, P) of the
        pixel, x int64 (B, C) with its earlier channels set (later ones are ignored) -> (B, K) nats.

        This generic version scores K candidate pixels with `log_prob`; subclasses compute it directly."""
        K = self.image.num_values
        cand = x.repeat_interleave(K, dim=0)  # (B*K, C): the pixel so far ...
        cand[:, channel] = torch.arange(K, device=x.device).repeat(x.shape[0])  # ... with every value in turn
        lp = self.log_prob(params.repeat_interleave(K, dim=0)[:, :, None, None], cand[:, :, None, None])
        return lp[:, channel, 0, 0].view(-1, K)

    def value_probs(self, params: torch.Tensor, x: torch.Tensor, channel: int) -> torch.Tensor:
        """The probabilities of `value_log_probs` (B, K), summing to 1 to rounding (at least float32): what the
        codec turns into frequency tables at every step. This version is the softmax of value_log_probs in
        float64; a subclass may compute them more cheaply (a step of coding should cost what a step of sampling
        does)."""
        return torch.softmax(self.value_log_probs(params, x, channel).double(), dim=-1)

    def interval_log_prob(
        self, params: torch.Tensor, x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor
    ) -> torch.Tensor:
        """Per-sub-pixel conditionals restricted to an interval of values, renormalized there:
        log p(x_d | x_<d, lo_d <= x_d <= hi_d) in nats, (B, C, H, W).

        lo, hi: int64 (B, C, H, W) with 0 <= lo <= hi < num_values; the interval of channel c may depend on
        the earlier channels of the same pixel (they are teacher-forced from x, as in `log_prob`); a value
        outside its interval gets -inf. Used by
        models whose auxiliary variable rules values out (the grayscale PixelCNN's p(x | y)).
        """
        raise NotImplementedError(f"{type(self).__name__} has no interval_log_prob")

    def config(self) -> dict:
        """JSON-serializable constructor arguments (the distribution owns its hyperparameters)."""
        return {}


def upcast(t: torch.Tensor) -> torch.Tensor:
    """Compute likelihoods in at least fp32 (bf16/fp16 parameters are upcast; fp64 stays fp64)."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def check_temperature(temperature: float) -> float:
    t = float(temperature)
    if not math.isfinite(t) or t < 0:
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
    return t


def gumbel_argmax(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> torch.Tensor:
    """Sample from softmax(logits / T) over the last dim with the Gumbel-max trick; T = 0 gives argmax.

    Always draws the same number of uniforms, so two samplers that call it in the same order on the same
    generator consume identical random streams.
    """
    u = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=torch.float32).to(
        upcast(logits).dtype
    )
    if temperature == 0:
        return logits.argmax(-1)
    g = torch.log(u.clamp_(1e-10, 1.0 - 1e-7)).neg_().log_().neg_()  # -log(-log(u)), in place (u is ours)
    scaled = upcast(logits) if temperature == 1 else upcast(logits) / temperature  # x / 1 == x exactly
    return (scaled + g).argmax(-1)
