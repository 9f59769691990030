"""Discretized mixture of logistics (Salimans et al. 2017, PixelCNN++ section 2.1-2.2; released `nn.py`).

Values v in [0, K) sit at bin centres 2v/(K-1) - 1 in [-1, 1], bin half-width 1/(K-1). The first and last
bins extend to -inf / +inf, so the K bin masses sum to exactly one. Each bin's log mass is computed in log
space (stable in both tails), so unlike the released code no density-times-width fallback is needed for
tiny masses, and the probabilities sum to one to rounding error, not only to ~1e-5.

For 3 channels, one mixture indicator is shared by R, G, B and the means are coupled linearly with the
true earlier channels: mu_G += alpha * r, mu_B += beta * r + gamma * g (coefficients through tanh).
Parameter layout per pixel, M = nr_mix: [logits (M) | per channel c: means (M), log-scales (M)
| coefficients (M) per earlier-channel pair (G<-R, B<-R, B<-G)].
"""

from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F

from ..types import ImageSpec
from .base import OutputDistribution, check_temperature, gumbel_argmax, upcast

LOG_SCALE_MIN = -7.0


class DiscretizedLogisticMixture(OutputDistribution):
    joint = True

    def __init__(self, image: ImageSpec, nr_mix: int = 10):
        super().__init__(image)
        if not isinstance(nr_mix, numbers.Integral) or isinstance(nr_mix, bool) or nr_mix < 1:
            raise ValueError(f"nr_mix (the number of logistic components) must be an integer >= 1, got {nr_mix!r}")
        self.nr_mix = int(nr_mix)
        C = image.channels
        self.pairs = [(c, p) for c in range(C) for p in range(c)]  # (G,R), (B,R), (B,G)
        self.num_params = self.nr_mix * (1 + 2 * C + len(self.pairs))
        self.half_width = 1.0 / (image.num_values - 1)
        self._edge_cache: dict = {}  # (dtype, device) -> the bin edges of value_probs

    def config(self) -> dict:
        return {"nr_mix": self.nr_mix}

    def _split(self, params: torch.Tensor):
        """params (B, P, ...) -> logits (B, M, ...), means/log_scales (B, C, M, ...), coeffs (B, npairs, M, ...)."""
        M, C = self.nr_mix, self.image.channels
        params = upcast(params)
        logits = params[:, :M]
        rest = params[:, M:]
        B = params.shape[0]
        tail = params.shape[2:]
        means = rest[:, : C * M].reshape(B, C, M, *tail)
        log_scales = rest[:, C * M : 2 * C * M].reshape(B, C, M, *tail).clamp(min=LOG_SCALE_MIN)
        coeffs = torch.tanh(rest[:, 2 * C * M :].reshape(B, len(self.pairs), M, *tail))
        return logits, means, log_scales, coeffs

    def _to_unit(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Values -> bin centres in [-1, 1]."""
        return x.to(dtype) * (2.0 / (self.image.num_values - 1)) - 1.0

    def _coupled_means(self, means, coeffs, xs):
        """Add the linear dependence on earlier channels. xs: (B, C, 1, ...) scaled values."""
        means = list(means.unbind(1))
        for k, (c, p) in enumerate(self.pairs):
            means[c] = means[c] + coeffs[:, k] * xs[:, p]
        return torch.stack(means, dim=1)

    def _bin_log_prob(self, x: torch.Tensor, means, log_scales) -> torch.Tensor:
        """log mass of the bin of x under each logistic. x int (B,C,1,..); -> (B, C, M, ...).

        The released code computes log(sigma(plus) - sigma(min)) and, where that difference underflows
        (< 1e-5), substitutes the density at the bin centre times the bin width; the substitute is not the
        bin's mass, so its K probabilities then sum to 1 only up to ~1e-5. The log-space form of
        _interval_log_mass is stable in both tails without a substitute, so every bin gets its exact mass."""
        return self._interval_log_mass(x, x, means, log_scales)

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        logits, means, log_scales, coeffs = self._split(params)  # (B,M,H,W), (B,C,M,H,W) ...
        x5 = x.unsqueeze(2)  # (B, C, 1, H, W)
        xs = self._to_unit(x5, means.dtype)
        means = self._coupled_means(means, coeffs, xs)
        lp = self._bin_log_prob(x5, means, log_scales)  # (B, C, M, H, W)
        log_mix = F.log_softmax(logits, dim=1)  # (B, M, H, W)
        # joint log p(x_0..c) for each prefix c; per-sub-pixel conditionals are successive differences
        prefix = torch.logsumexp(log_mix.unsqueeze(1) + lp.cumsum(dim=1), dim=2)  # (B, C, H, W)
        return torch.cat([prefix[:, :1], prefix[:, 1:] - prefix[:, :-1]], dim=1)

    def _interval_log_mass(self, lo, hi, means, log_scales) -> torch.Tensor:
        """log of each logistic's mass on the bins lo..hi (the end bins reach -inf / +inf), computed as
        log(sigma(a) - sigma(b)) = log sigma(a) + log(1 - sigma(b)) + log(1 - e^(b - a)): stable in both tails,
        so no small-mass fallback is needed. lo, hi int (B, C, 1, ...); -> (B, C, M, ...)."""
        K = self.image.num_values
        inv_s = torch.exp(-log_scales)
        inf = torch.tensor(float("inf"), dtype=means.dtype, device=means.device)
        a = torch.where(hi == K - 1, inf, inv_s * (self._to_unit(hi, means.dtype) + self.half_width - means))
        b = torch.where(lo == 0, -inf, inv_s * (self._to_unit(lo, means.dtype) - self.half_width - means))
        # b < a always; the clamp only keeps a vanishing difference (huge scales) away from log(0)
        return -F.softplus(-a) - F.softplus(b) + torch.log(-torch.expm1((b - a).clamp(max=-1e-12)))

    def value_log_probs(self, params, x, channel):
        """All K values of one sub-pixel at once: per component the K bin masses of channel c (means coupled
        to the true earlier channels), mixed with weights pi_m prod_{c'<c} L_mc' renormalized. (B, K)."""
        logits, means, log_scales, coeffs = self._split(params)  # (B, M), (B, C, M), ...
        x3 = x.unsqueeze(2)  # (B, C, 1)
        means = self._coupled_means(means, coeffs, self._to_unit(x3, means.dtype))  # (B, C, M)
        w = F.log_softmax(logits, dim=1)  # (B, M)
        if channel:  # the earlier channels' bin masses at their true values
            w = w + self._bin_log_prob(x3[:, :channel], means[:, :channel], log_scales[:, :channel]).sum(1)
        v = torch.arange(self.image.num_values, device=x.device)  # (K,)
        l_bin = self._interval_log_mass(v, v, means[:, channel, :, None], log_scales[:, channel, :, None])  # (B,M,K)
        return torch.logsumexp(w[:, :, None] + l_bin, dim=1) - torch.logsumexp(w, dim=1, keepdim=True)

    def value_probs(self, params, x, channel):
        """value_log_probs' probabilities (B, K), in the parameters' precision (at least float32), from each
        logistic's CDF at the K - 1 bin edges: bin v's mass is sigma(u_v) - sigma(u_(v-1)) (the end bins reach
        0 and 1), of the mixture's CDF with the weights of value_log_probs. Differences of the CDF lose
        relative precision in the tails but not absolute precision (about 1e-7 in float32), which is what a
        table of 2^16 counts keeps. A few operations per step, against the log-space
        form's dozen (a step of coding then costs about what a step of sampling does)."""
        logits, means, log_scales, coeffs = self._split(params)  # (B, M), (B, C, M), ...
        w, edges = logits, self._edges(means.dtype, means.device)  # (K - 1,)
        mean = means[:, channel]  # (B, M)
        if channel:  # the earlier channels' bin masses at their true values (channel 0 couples to nothing)
            mean, w = self._earlier_channels(means, log_scales, coeffs, x, channel, w)
        cdf = torch.sigmoid((edges - mean[:, :, None]) * torch.exp(-log_scales[:, channel, :, None]))
        cdf = torch.bmm(torch.softmax(w, dim=1)[:, None, :], cdf)[:, 0]  # (B, K - 1): the mixture's CDF
        ends = cdf.new_zeros(1).expand(cdf.shape[0], 1)
        # (B, K); the mixture's sums may round a vanishing mass a hair below 0: none is taken as 0
        return torch.diff(cdf, dim=-1, prepend=ends, append=ends + 1).clamp_(min=0)

    def _earlier_channels(self, means, log_scales, coeffs, x, channel: int, w):
        """For value_probs of `channel` > 0: its mean coupled to the true earlier values x (B, C), and the
        weights w (B, M) plus each earlier channel's log bin mass at its value (with its own coupled mean), as
        _interval_log_mass computes it, with the end bins' infinite edges read from a table.
        -> (mean (B, M), weights (B, M))."""
        edges = self._edges(means.dtype, means.device)
        inf = edges.new_full((1,), float("inf"))
        values = x[:, :channel]  # (B, c)
        xs = self._to_unit(values, means.dtype)  # (B, c)
        mus = list(means[:, : channel + 1].unbind(1))
        for k, (c, p) in enumerate(self.pairs):
            if c <= channel:
                mus[c] = mus[c] + coeffs[:, k] * xs[:, p, None]
        mu = torch.stack(mus[:channel], 1)  # (B, c, M)
        hi = torch.cat([edges, inf])[values][..., None]  # (B, c, 1): the bin's upper edge, +inf for K - 1
        lo = torch.cat([-inf, edges])[values][..., None]  # its lower edge, -inf for 0
        inv_s = torch.exp(-log_scales[:, :channel])
        a, b = inv_s * (hi - mu), inv_s * (lo - mu)
        log_mass = -F.softplus(-a) - F.softplus(b) + torch.log(-torch.expm1((b - a).clamp(max=-1e-12)))
        return mus[channel], w + log_mass.sum(1)

    def _edges(self, dtype, device) -> torch.Tensor:
        """The K - 1 inner bin edges in [-1, 1] (upper edge of value v, v < K - 1), made once per dtype and
        device (a coding step would otherwise spend a quarter of its operations on them)."""
        key = (dtype, device)
        if key not in self._edge_cache:
            v = torch.arange(self.image.num_values - 1, device=device)
            self._edge_cache[key] = self._to_unit(v, dtype) + self.half_width
        return self._edge_cache[key]

    def interval_log_prob(self, params, x, lo, hi):
        """Truncated conditionals of the RGB-coupled mixture. With L_mc the mass of x_c's bin and Z_mc the mass of
        [lo_c, hi_c] under component m (means coupled to the true earlier channels):
        p(x_c | x_<c, interval) = sum_m pi_m prod_{c'<c} L_mc' L_mc / sum_m pi_m prod_{c'<c} L_mc' Z_mc.
        A bin and a one-bin interval use the same formula, so a forced value gets probability exactly 1."""
        logits, means, log_scales, coeffs = self._split(params)  # (B,M,H,W), (B,C,M,H,W) ...
        x5 = x.unsqueeze(2)  # (B, C, 1, H, W)
        means = self._coupled_means(means, coeffs, self._to_unit(x5, means.dtype))
        l_bin = self._interval_log_mass(x5, x5, means, log_scales)  # (B, C, M, H, W)
        l_int = self._interval_log_mass(lo.unsqueeze(2), hi.unsqueeze(2), means, log_scales)
        log_mix = F.log_softmax(logits, dim=1).unsqueeze(1)  # (B, 1, M, H, W)
        earlier = torch.cat([torch.zeros_like(l_bin[:, :1]), l_bin[:, :-1].cumsum(dim=1)], dim=1)  # prod_{c'<c}
        lp = torch.logsumexp(log_mix + earlier + l_bin, dim=2) - torch.logsumexp(log_mix + earlier + l_int, dim=2)
        return lp.masked_fill((x < lo) | (x > hi), float("-inf"))  # values outside the interval: probability 0

    def sample(self, params, temperature=1.0, generator=None, channel=None):
        """params (B, P) -> (B, C). The component is drawn by Gumbel-max on logits / T, each channel by a
        logistic draw with scale * T, binned to the nearest value; later channels couple to the binned
        (not the continuous) earlier values, so sampling matches log_prob exactly at T = 1."""
        t = check_temperature(temperature)
        if channel is not None:
            raise ValueError("the logistic mixture samples whole pixels: channel must be None")
        # a step of cached sampling is a few small operations per layer, so this draw is written with few of
        # them: the chosen component's parameters come out of one gather, and every elementwise step is the
        # one of the channel-by-channel formulas, so the values are exactly theirs
        K, M, C = self.image.num_values, self.nr_mix, self.image.channels
        params = upcast(params)
        B, P = params.shape
        comp = gumbel_argmax(params.narrow(1, 0, M), t, generator)  # (B,)
        rest = params.narrow(1, M, P - M).reshape(B, -1, M)  # (B, 2C + pairs, M): means, log-scales, coefficients
        chosen = rest.gather(2, comp.view(B, 1, 1).expand(B, rest.shape[1], 1)).view(B, -1)  # (B, 2C + pairs)
        mu = chosen.narrow(1, 0, C)
        u = torch.rand(mu.shape, generator=generator, device=params.device).to(mu.dtype).clamp_(1e-7, 1.0 - 1e-7)
        # logistic noise scaled by s * T, per channel: (B, C)
        scale = torch.exp(chosen.narrow(1, C, C).clamp(min=LOG_SCALE_MIN)).mul_(t)
        spread = scale.mul_(torch.log(u).sub_(torch.log1p(u.neg_())))
        co = torch.tanh(chosen.narrow(1, 2 * C, len(self.pairs))).unbind(1) if self.pairs else ()
        values, xs = [], []
        for c, (m, s) in enumerate(zip(mu.unbind(1), spread.unbind(1))):
            for k, (cc, p) in enumerate(self.pairs):
                if cc == c:
                    m = m + co[k] * xs[p]
            # (c + 1) * 0.5 * (K - 1) as one product: halving is exact, so this rounds as the two products do
            v = (m + s).add_(1.0).mul_(0.5 * (K - 1)).round_().clamp_(0, K - 1)  # the value, as a float
            values.append(v)
            if c + 1 < C:
                xs.append(v * (2.0 / (K - 1)) - 1.0)  # _to_unit of the value
        return torch.stack(values, 1).long()
