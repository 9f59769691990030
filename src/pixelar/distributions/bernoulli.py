"""Bernoulli output for binarized images (num_values = 2): one logit per sub-pixel, log p = x*l - softplus(l)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..types import ImageSpec
from .base import OutputDistribution, check_temperature, upcast


class Bernoulli(OutputDistribution):
    joint = False

    def __init__(self, image: ImageSpec):
        if image.num_values != 2:
            raise ValueError(
                f"the bernoulli output needs binary images (num_values=2), got num_values={image.num_values}; "
                "use output 'categorical' or 'logistic_mixture'"
            )
        super().__init__(image)
        self.num_params = image.channels

    def log_prob(self, params, x):
        logits = upcast(params)
        # log sigmoid(l) for x=1, log sigmoid(-l) for x=0
        return -F.softplus(torch.where(x.bool(), -logits, logits))

    def interval_log_prob(self, params, x, lo, hi):
        # an interval of {0, 1} is either both values (the plain conditional) or one value (probability 1)
        point = torch.where(x == lo, 0.0, float("-inf")).to(upcast(params).dtype)
        return torch.where(lo == hi, point, self.log_prob(params, x))

    def sample(self, params, temperature=1.0, generator=None, channel=None):
        t = check_temperature(temperature)
        if channel is None:
            raise ValueError("Bernoulli samples one channel at a time: pass channel=")
        logit = upcast(params[:, channel])
        u = torch.rand(logit.shape, generator=generator, device=params.device).to(logit.dtype)
        if t == 0:
            return (logit > 0).long()
        return (u < torch.sigmoid(logit / t)).long()
