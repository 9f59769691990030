"""Very Deep VAE (Child 2021, "Very Deep VAEs Generalize Autoregressive Models and Can Outperform Them on Images").

A top-down hierarchical VAE. The bottom-up encoder is a stack of bottleneck residual blocks at falling
resolutions (for 32x32: 32, 16, 8, 4, 1), average-pooled between them; it keeps the activation of the last block
at each resolution. The top-down decoder starts from a learned constant at 1x1 and climbs the resolutions again,
nearest-upsampling its state at each step up; each of its blocks holds one diagonal-Gaussian latent layer z_i
(zdim channels at the block's resolution):

    prior      p(z_i | z_<i) = N(m_p, s_p)       [m_p, log s_p, h] = prior(state)       state += h
    posterior  q(z_i | x, z_<i) = N(m_q, s_q)    [m_q, log s_q] = posterior(concat(state, encoder activation))
    state += proj(z_i);  state = resnet(state)

with z_i drawn from q when encoding and from p when sampling. The state at full resolution, scaled and shifted
per channel, goes through a 1x1 convolution to the parameters of any pixelar output distribution (the paper's
discretized logistic mixture by default), which models the pixels independently given z. The ELBO uses the
KL of each layer in closed form given the sampled ancestors, as the paper does. Blocks: 1x1, 3x3, 3x3, 1x1
convolutions (3x3 replaced by 1x1 at resolutions of 2 and below) with GELU before each, on a bottleneck of
width * bottleneck channels; the last convolution of every residual block and the latent projection are
scaled by sqrt(1 / number of blocks) of their stack at initialisation, the prior's last convolution starts
at zero (so p starts as N(0, 1) and adds nothing to the state), and all biases start at zero.

Resolutions follow the image: starting from (H, W), halve while both sides are even and the smaller is at
least 8, then add 1x1 (32 -> 32, 16, 8, 4, 1; 28 -> 28, 14, 7, 1; 64 -> 64, 32, 16, 8, 4, 1; 4 -> 4, 1).
`enc_blocks` and `dec_blocks` give the number of blocks per resolution from the top (full resolution) down,
the last entry belonging to 1x1; an image with fewer resolutions drops entries just before the last, one with
more repeats the entry before the last. Going down, the last encoder block of a resolution pools to the next.

Differences from the released code (openai/vdvae): the per-resolution block lists replace its block strings
(the paper size reproduces the CIFAR-10 string "32x11,32d2,16x6,16d2,8x6,8d2,4x3,4d4,1x3" /
"1x1,4m1,4x2,8m4,8x5,16m8,16x10,32m16,32x21"); downsampling is average pooling to the next resolution's size
(the same as its pooling by the rate where that divides); the output distribution is pixelar's (its mixture
computes bin masses in log space); class labels or a conditioning vector, where given, add a learned bias to
the top-down state at the top. The released code normalises the encoder's input per dataset (a shift and scale
of the 0..255 values): `input_mean` and `input_std` do the same on the [-1, 1] scale (the converter of its
checkpoints sets them, pixelar.converters.openai_vdvae); its likelihood's targets are the [-1, 1] values, as
here.
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..distributions.base import upcast
from ..types import ImageSpec
from .base import LatentImageModel
from .conditioning import maybe_bias
from .registry import register_model

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def resolutions(height: int, width: int) -> list[tuple[int, int]]:
    """The (h, w) of each level from the top: halve while both are even and min(h, w) >= 8, then 1x1."""
    out = [(height, width)]
    h, w = height, width
    while h % 2 == 0 and w % 2 == 0 and min(h, w) >= 8:
        h, w = h // 2, w // 2
        out.append((h, w))
    if out[-1] != (1, 1):
        out.append((1, 1))
    return out


def blocks_per_level(counts: list[int], levels: int, what: str = "block counts") -> list[int]:
    """Per-level block counts for `levels` resolutions from a list given from the top, last entry = 1x1."""
    if len(counts) < 2 or min(counts) < 1:
        raise ValueError(f"{what} must list at least 2 block counts >= 1 (the last one for 1x1), got {counts}")
    if levels == 1:
        return [counts[-1]]
    inner = list(counts[:-1])[: levels - 1]
    inner += [inner[-1]] * (levels - 1 - len(inner))
    return inner + [counts[-1]]


def _conv(c_in: int, c_out: int, k: int) -> nn.Conv2d:
    conv = nn.Conv2d(c_in, c_out, k, padding=k // 2)
    nn.init.zeros_(conv.bias)
    return conv


class Block(nn.Module):
    """Bottleneck block: 1x1 -> k x k -> k x k -> 1x1 convolutions, GELU before each; x + f(x) when residual.
    (B, c_in, h, w) -> (B, c_out, h, w)."""

    def __init__(
        self,
        c_in: int,
        c_mid: int,
        c_out: int,
        residual: bool,
        use_3x3: bool,
        last_scale: float = 1.0,
        zero_last: bool = False,
    ):
        super().__init__()
        k = 3 if use_3x3 else 1
        self.c1, self.c2, self.c3, self.c4 = (
            _conv(c_in, c_mid, 1),
            _conv(c_mid, c_mid, k),
            _conv(c_mid, c_mid, k),
            (_conv(c_mid, c_out, 1)),
        )
        self.residual = residual
        with torch.no_grad():
            if zero_last:
                self.c4.weight.zero_()
            else:
                self.c4.weight.mul_(last_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c1(F.gelu(x))
        h = self.c2(F.gelu(h))
        h = self.c3(F.gelu(h))
        h = self.c4(F.gelu(h))
        return x + h if self.residual else h


class Encoder(nn.Module):
    """The bottom-up pass: x scaled to [-1, 1] (B, C, H, W) -> the activation at each level, [(B, width, h, w)].
    The input is first normalised to (x - input_mean) / input_std (the identity by default)."""

    def __init__(
        self,
        channels: int,
        width: int,
        mid: int,
        levels: list[tuple[int, int]],
        counts: list[int],
        input_mean: float = 0.0,
        input_std: float = 1.0,
    ):
        super().__init__()
        self.input_mean, self.input_std = input_mean, input_std
        self.in_conv = _conv(channels, width, 3)
        scale = math.sqrt(1.0 / sum(counts))
        self.blocks = nn.ModuleList()
        self.plan: list[tuple[int, tuple[int, int] | None]] = []  # per block: (level, size it pools to or None)
        for i, (size, n) in enumerate(zip(levels, counts)):
            for j in range(n):
                self.blocks.append(Block(width, mid, width, True, min(size) > 2, last_scale=scale))
                self.plan.append((i, levels[i + 1] if j == n - 1 and i + 1 < len(levels) else None))
        self.num_levels = len(levels)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        # normalised here, not folded into in_conv: its zero padding pads the normalised input with zeros
        x = self.in_conv((x - self.input_mean) / self.input_std)
        acts: list[torch.Tensor | None] = [x] + [None] * (self.num_levels - 1)
        for block, (i, down) in zip(self.blocks, self.plan):
            x = block(x)
            if down is None:
                acts[i] = x
            else:  # the last block of a level: its output, pooled, is where the next level starts
                x = F.adaptive_avg_pool2d(x, down)
                acts[i + 1] = x
        return acts


class DecBlock(nn.Module):
    """One top-down block with its latent layer z (B, zdim, h, w) (see the module docstring)."""

    def __init__(self, width: int, mid: int, zdim: int, use_3x3: bool, scale: float):
        super().__init__()
        self.zdim = zdim
        self.posterior = Block(2 * width, mid, 2 * zdim, False, use_3x3)
        self.prior = Block(width, mid, 2 * zdim + width, False, use_3x3, zero_last=True)
        self.z_proj = _conv(zdim, width, 1)
        with torch.no_grad():
            self.z_proj.weight.mul_(scale)
        self.resnet = Block(width, mid, width, True, use_3x3, last_scale=scale)

    def prior_step(self, x: torch.Tensor):
        """state -> (prior mean, prior log-std, the state with the prior's residual feature added)."""
        feats = self.prior(x)
        z = self.zdim
        return feats[:, :z], feats[:, z : 2 * z], x + feats[:, 2 * z :]

    def posterior_params(self, x: torch.Tensor, act: torch.Tensor):
        q = self.posterior(torch.cat([x, act], dim=1))
        return q[:, : self.zdim], q[:, self.zdim :]

    def update(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.resnet(x + self.z_proj(z))


def gaussian_log_density(z: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """log N(z; mean, exp(log_std)^2) elementwise."""
    return -HALF_LOG_2PI - log_std - 0.5 * ((z - mean) * torch.exp(-log_std)) ** 2


def gaussian_kl(qm, qlogs, pm, plogs) -> torch.Tensor:
    """KL(N(qm, exp(qlogs)^2) || N(pm, exp(plogs)^2)) elementwise, in closed form."""
    return plogs - qlogs + 0.5 * (torch.exp(2 * qlogs) + (qm - pm) ** 2) * torch.exp(-2 * plogs) - 0.5


@register_model(
    "vdvae",
    sizes={
        # tiny: 2 latent layers on 4x4 images (4 and 1 px), for the brute-force checks
        "tiny": dict(
            width=16,
            zdim=4,
            bottleneck=0.25,
            enc_blocks=[1, 1, 1],
            dec_blocks=[1, 1, 1],
            output={"kind": "logistic_mixture", "nr_mix": 2},
            num_classes=0,
            cond_dim=0,
            input_mean=0.0,
            input_std=1.0,
        ),
        # small: a few minutes of CPU training on Fashion-MNIST (28, 14, 7, 1 px: 10 latent layers)
        "small": dict(
            width=64,
            zdim=8,
            bottleneck=0.25,
            enc_blocks=[3, 2, 2, 2, 2],
            dec_blocks=[4, 3, 2, 2, 1],
            output={"kind": "logistic_mixture", "nr_mix": 5},
            num_classes=0,
            cond_dim=0,
            input_mean=0.0,
            input_std=1.0,
        ),
        # the paper's CIFAR-10 model: width 384, zdim 16, 43 latent layers (1, 3, 6, 11, 22 at 1, 4, 8, 16, 32 px)
        "paper": dict(
            width=384,
            zdim=16,
            bottleneck=0.25,
            enc_blocks=[12, 7, 7, 4, 3],
            dec_blocks=[22, 11, 6, 3, 1],
            output={"kind": "logistic_mixture", "nr_mix": 10},
            num_classes=0,
            cond_dim=0,
            input_mean=0.0,
            input_std=1.0,
        ),
    },
    added={"input_mean": 0.0, "input_std": 1.0},
)
class VDVAE(LatentImageModel):
    """Very Deep VAE (see the module docstring).

    Args:
        width: channels of the encoder and of the top-down state.
        zdim: channels of each latent layer.
        bottleneck: the blocks' inner width, as a fraction of width (0.25 in the paper).
        enc_blocks, dec_blocks: blocks per resolution from the top down, the last for 1x1 (see the module
            docstring for how they adapt to the image); each decoder block holds one latent layer.
        output: the pixel distribution p(x | z), {"kind": ..., **options}.
        num_classes, cond_dim: conditioning (a learned bias of the top-down state at the top).
        input_mean, input_std: the encoder sees (x - input_mean) / input_std, x scaled to [-1, 1]: the data's
            mean and standard deviation on that scale normalise it, as the released code does per dataset
            (0 and 1, the default, leave it as it is). p(x | z) is unaffected.
    """

    def __init__(
        self,
        image: ImageSpec,
        width: int,
        zdim: int,
        bottleneck: float,
        enc_blocks: list,
        dec_blocks: list,
        output: dict,
        num_classes: int = 0,
        cond_dim: int = 0,
        input_mean: float = 0.0,
        input_std: float = 1.0,
    ):
        super().__init__(image, output, num_classes, cond_dim)
        if not input_std > 0:
            raise ValueError(f"input_std (the encoder input's standard deviation) must be > 0, got {input_std}")
        if not 0 < bottleneck <= 1:
            raise ValueError(
                f"bottleneck (the blocks' inner width as a fraction of width) must be in (0, 1], got {bottleneck}"
            )
        mid = max(1, int(width * bottleneck))
        self.levels = resolutions(image.height, image.width)
        enc = blocks_per_level(list(enc_blocks), len(self.levels), "enc_blocks")
        dec = blocks_per_level(list(dec_blocks), len(self.levels), "dec_blocks")
        self.encoder = Encoder(image.channels, width, mid, self.levels, enc, input_mean, input_std)
        scale = math.sqrt(1.0 / sum(dec))
        # decoder: levels from 1x1 up to full resolution; self.dec_level[k] is the level of block k
        self.dec_blocks = nn.ModuleList()
        self.dec_level: list[int] = []
        for i in reversed(range(len(self.levels))):
            for _ in range(dec[i]):
                self.dec_blocks.append(DecBlock(width, mid, zdim, min(self.levels[i]) > 2, scale))
                self.dec_level.append(i)
        # the learned constant each level's state starts from (the lower level's state is added, upsampled)
        self.start = nn.ParameterList([nn.Parameter(torch.zeros(1, width, h, w)) for h, w in self.levels])
        self.cond_bias = maybe_bias(width, num_classes, cond_dim)
        self.gain = nn.Parameter(torch.ones(1, width, 1, 1))
        self.bias = nn.Parameter(torch.zeros(1, width, 1, 1))
        self.out = _conv(width, self.distribution.num_params, 1)
        self.zdim = zdim

    @property
    def num_latent_layers(self) -> int:
        return len(self.dec_blocks)

    def shard_units(self) -> list[nn.Module]:
        """For sharded training: the modules called through their forward (a DecBlock's parts are, the DecBlock
        is not); the learned constants, gain and bias stay with the root."""
        units: list[nn.Module] = [self.encoder.in_conv, *self.encoder.blocks]
        for block in self.dec_blocks:
            units += [block.posterior, block.prior, block.z_proj, block.resnet]
        units += [m for m in (self.cond_bias, self.out) if m is not None]
        return units

    # ----- the top-down pass --------------------------------------------------------------------------------
    def _top_down(self, n: int, cond, choose, acts=None) -> torch.Tensor:
        """Run the decoder for n images; at latent layer k (top first) z_k = choose(k, (prior mean, log-std),
        (posterior mean, log-std) or None), all (n, zdim, h, w); the posterior comes from acts (the encoder's
        activations), where given. Returns the output parameters (n, P, H, W)."""
        x, level = None, None
        for k, (block, i) in enumerate(zip(self.dec_blocks, self.dec_level)):
            if i != level:  # a new resolution: its constant, plus the state below, upsampled (nearest)
                start = self.start[i].expand(n, -1, -1, -1)
                if x is None:
                    x = start if self.cond_bias is None else start + self.cond_bias(cond)
                else:
                    x = start + F.interpolate(x, size=self.levels[i], mode="nearest")
                level = i
            posterior = block.posterior_params(x, acts[i]) if acts is not None else None
            pm, plogs, x = block.prior_step(x)
            x = block.update(x, choose(k, (pm, plogs), posterior))
        return self.out(x * self.gain + self.bias)

    def _encode_decode(self, x: torch.Tensor, cond, noise):
        """z ~ q(z | x) layer by layer, its standard normal draws from noise (a LatentNoise): (output params, per
        layer (z, posterior mean, log-std, prior mean, log-std))."""
        layers = []

        def draw(k, prior, posterior):
            qm, qlogs = posterior
            z = qm + torch.exp(qlogs) * noise.randn(qm)
            layers.append((z, qm, qlogs, *prior))
            return z

        acts = self.encoder(self.scale_input(x))
        return self._top_down(x.shape[0], cond, draw, acts), layers

    # ----- the contract -------------------------------------------------------------------------------------
    def elbo_terms(self, x: torch.Tensor, cond, noise) -> dict[str, torch.Tensor]:
        params, layers = self._encode_decode(x, cond, noise)
        distortion = -self.distribution.log_prob(params, x).flatten(1).sum(1)
        per_layer = torch.stack(
            [
                gaussian_kl(*(upcast(t) for t in (qm, qlogs, pm, plogs))).flatten(1).sum(1)
                for _, qm, qlogs, pm, plogs in layers
            ],
            dim=1,
        )  # (B, L)
        return {"distortion": distortion, "rate": per_layer.sum(1), "rate_per_layer": per_layer}

    def log_weight(self, x: torch.Tensor, cond, noise) -> torch.Tensor:
        params, layers = self._encode_decode(x, cond, noise)
        lw = self.distribution.log_prob(params, x).flatten(1).sum(1)
        for z, qm, qlogs, pm, plogs in layers:
            z, qm, qlogs, pm, plogs = (upcast(t) for t in (z, qm, qlogs, pm, plogs))
            lw = lw + (gaussian_log_density(z, pm, plogs) - gaussian_log_density(z, qm, qlogs)).flatten(1).sum(1)
        return lw

    def ancestral_sample(self, n: int, cond, temperature, generator) -> torch.Tensor:
        """z from the prior layer by layer, each std scaled by its temperature (one number for all layers, or a
        list of num_latent_layers numbers, top first); x from p(x | z) at temperature 1."""
        temps = _layer_temperatures(temperature, self.num_latent_layers)

        def draw(k, prior, posterior):
            pm, plogs = prior
            eps = torch.randn(pm.shape, generator=generator, device=pm.device, dtype=torch.float32).to(pm.dtype)
            return pm + torch.exp(plogs) * temps[k] * eps

        return self.sample_output(self._top_down(n, cond, draw), generator)

    def coding_top_down(self, n: int, cond, choose, x: torch.Tensor | None = None) -> torch.Tensor:
        """Bits-back coding's pass (see LatentImageModel.coding_top_down): the caller chooses every z."""
        acts = None if x is None else self.encoder(self.scale_input(x))
        return self._top_down(n, cond, choose, acts)


def _layer_temperatures(temperature, layers: int) -> list[float]:
    values = list(temperature) if isinstance(temperature, (list, tuple)) else [temperature] * layers
    if len(values) != layers:
        raise ValueError(
            f"temperature must be one number or a list of {layers} (one per latent layer, top first), got "
            f"{len(values)} numbers"
        )
    for t in values:
        if isinstance(t, bool) or not isinstance(t, numbers.Real) or not math.isfinite(t) or t < 0:
            raise ValueError(f"temperature must be finite numbers >= 0, got {temperature!r}")
    return [float(t) for t in values]
