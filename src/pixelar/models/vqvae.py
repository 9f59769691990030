"""VQ-VAE (van den Oord, Vinyals, Kavukcuoglu 2017, "Neural Discrete Representation Learning") and its
two-level variant (Razavi, van den Oord, Vinyals 2019, "Generating Diverse High-Fidelity Images with
VQ-VAE-2").

An encoder maps an image to a map of vectors z_e (B, D, h, w), h = H / 2^num_downsamples; each vector is
replaced by its nearest codebook entry (the code k, an int in [0, num_codes)), and a decoder maps the code
vectors z_q back to the parameters of a per-pixel output distribution (pixelar.distributions: discretized
logistic mixture by default, categorical or Bernoulli for few values), so that log p(x | z) is a discrete
likelihood in nats that sums to one over all images for every code map. A prior over the code map is any
registered pixelar model over the image ImageSpec(1, h, w, num_codes) with a categorical output.

Likelihood (the LatentImageModel contract): the posterior is deterministic, a point mass at z(x) = the
nearest codes, so
    log p(x) = log sum_z p(z) p(x | z) >= log p(z(x)) + log p(x | z(x))
an exact lower bound. It is the ELBO: with a one-hot q the KL(q || p) to the prior is exactly -log p(z(x)),
the prior's code length, so `elbo(x)` gives distortion = -log p(x | z(x)) and rate = -log p(z(x)) (per level
in rate_per_layer, bottom first), and `log_prob(x)` is their negative sum; importance sampling with K samples
gives the same value for every K (`stochastic_posterior = False`: one pass whatever num_samples).

Training: `objective(x)` runs both of the paper's stages in one loop. Its gradient is that of the first
stage's loss (distortion + commitment beta ||z_e - sg(z_q)||^2, + the codebook loss ||sg(z_e) - e||^2 with
ema=False) plus the prior's -log p(z(x)) on this step's codes (constants for the prior: no gradient reaches
the encoder through them); its value is the bound alone (the commitment and codebook terms enter as
t - sg(t), zero in value), so training's bits/dim are the bound on the training batch. In training mode every
call updates the codebooks from the batch (exponential moving averages, paper appendix A.1, and restarts).
`stage1_loss(x)` gives the first stage's terms for training the stages apart.

Differences from the papers: the decoder's output is any pixelar output distribution; the codebook restarts
codes unused for `restart_after` updates from random encoder outputs (not in either paper; common practice
since, e.g. Jukebox); the prior is trained alongside the autoencoder (on the codes of the moment) rather than
afterwards on the final codes; the two-level encoder and decoder follow VQ-VAE-2's shape (the bottom
codes see the decoded top codes, the decoder reads both) with this file's plain residual stacks.

Two levels: the top prior models the top codes (given cond); the bottom prior, as in VQ-VAE-2, is conditioned on
them: the top codes are embedded, brought up to the bottom's resolution (nearest) and passed through a small
convolutional stack (the paper's "conditioning stack", here one 3x3 and one 1x1 layer), and that map (B, hidden,
h, w) is the bottom prior's cond (its `cond_channels`: every layer adds a projection of it, the Conditional
PixelCNN's V * s); the class label or cond vector enters the map as a bias. Priors that read such a map:
pixelcnn, gated_pixelcnn, pixelcnn_pp. condition_bottom=False keeps the two priors independent (every prior
kind; configs saved before the option existed are built so).
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import distributed
from ..inference import inference
from ..types import ImageSpec
from .base import ImageModel, LatentImageModel
from .conditioning import maybe_bias
from .registry import create_model, preset, register_model

# Hyperparameter presets, in the form `register_model` takes (every size has the same options and value
# types). `paper` is the VQ-VAE paper's CIFAR-10 model: 2 stride-2 4x4 convolutions and 2 residual blocks
# (ReLU, 3x3 conv, ReLU, 1x1 conv), all 256 hidden units, K = 512 codes of dimension 64, beta = 0.25, EMA
# decay 0.99; its prior and output distribution are our choice (the paper's CIFAR-10 prior is not recorded).
PRESETS = {
    "tiny": dict(
        hidden=8,
        res_hidden=4,
        num_res_blocks=1,
        num_downsamples=2,
        levels=1,
        num_codes=8,
        code_dim=4,
        beta=0.25,
        ema=True,
        decay=0.99,
        epsilon=1e-5,
        restart_after=20,
        output={"kind": "logistic_mixture", "nr_mix": 2},
        prior={"kind": "pixelcnn", "size": "tiny"},
        condition_bottom=True,
        num_classes=0,
        cond_dim=0,
    ),
    "small": dict(
        hidden=64,
        res_hidden=32,
        num_res_blocks=2,
        num_downsamples=2,
        levels=1,
        num_codes=64,
        code_dim=16,
        beta=0.25,
        ema=True,
        decay=0.99,
        epsilon=1e-5,
        restart_after=100,
        output={"kind": "logistic_mixture", "nr_mix": 5},
        prior={"kind": "pixelcnn", "size": "small"},
        condition_bottom=True,
        num_classes=0,
        cond_dim=0,
    ),
    "paper": dict(
        hidden=256,
        res_hidden=256,
        num_res_blocks=2,
        num_downsamples=2,
        levels=1,
        num_codes=512,
        code_dim=64,
        beta=0.25,
        ema=True,
        decay=0.99,
        epsilon=1e-5,
        restart_after=100,
        output={"kind": "logistic_mixture", "nr_mix": 10},
        prior={"kind": "gated_pixelcnn", "size": "small"},
        condition_bottom=True,
        num_classes=0,
        cond_dim=0,
    ),
}


# ----- the codebook ---------------------------------------------------------------------------------------------
class VectorQuantizer(nn.Module):
    """A codebook of `num_codes` vectors of size `code_dim`, nearest-neighbour quantization with a
    straight-through gradient, and its updates.

    ema=True (the paper's appendix A.1): the codebook is no parameter but a buffer updated from each training
    batch's assignments, with decay gamma:
        N_k <- gamma N_k + (1 - gamma) n_k          n_k: vectors assigned to code k in the batch
        m_k <- gamma m_k + (1 - gamma) sum_{z -> k} z
        e_k  = m_k / N~_k,  N~_k = (N_k + epsilon) / (N + K epsilon) * N,  N = sum_k N_k
    (N~ is N Laplace-smoothed, so a code that falls out of use is never divided by zero.)
    ema=False: the codebook is a parameter trained by the codebook loss ||sg(z_e) - e||^2.

    Codes that no vector of `restart_after` consecutive updates chose are restarted (0: never) at encoder
    outputs of the current batch drawn with the given generator (the global one by default), so that resumed
    training repeats them; the first update of a new codebook restarts every code it did not assign. Under
    torchrun the batch statistics are summed over the processes and the restart points are rank 0's, so every
    process keeps the same codebook.
    """

    def __init__(
        self,
        num_codes: int,
        code_dim: int,
        beta: float = 0.25,
        ema: bool = True,
        decay: float = 0.99,
        epsilon: float = 1e-5,
        restart_after: int = 0,
    ):
        super().__init__()
        if not 0 <= decay < 1:
            raise ValueError(f"decay (of the codebook's moving averages) must be in [0, 1), got {decay!r}")
        if not beta >= 0:
            raise ValueError(f"beta (the commitment weight) must be >= 0, got {beta!r}")
        if not epsilon > 0:
            raise ValueError(f"epsilon (the codebook's count smoothing) must be > 0, got {epsilon!r}")
        self.num_codes, self.code_dim = int(num_codes), int(code_dim)
        self.beta, self.ema, self.decay, self.epsilon = float(beta), bool(ema), float(decay), float(epsilon)
        self.restart_after = int(restart_after)
        init = torch.randn(num_codes, code_dim)
        if self.ema:
            self.register_buffer("embedding", init)  # (K, D) = ema_sum / smoothed ema_count
            self.register_buffer("ema_count", torch.ones(num_codes))  # (K,) N_k
            self.register_buffer("ema_sum", init.clone())  # (K, D) m_k
        else:
            self.embedding = nn.Parameter(init)
        # updates since each code was last chosen (int64, so that exact resume restores it with the weights);
        # a new codebook counts every code as long unused, so the first training update moves the codes that no
        # vector chose to encoder outputs of that batch: a data-dependent initialisation (random vectors far
        # from the encoder's outputs would otherwise leave all but a few codes unused for restart_after updates)
        self.register_buffer("unused", torch.full((num_codes,), self.restart_after, dtype=torch.long))

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """Codes of the nearest codebook vectors: z (N, D) -> (N,) int64 (ties: the lowest code)."""
        e = self.embedding.detach().to(z.dtype)
        d = (z * z).sum(1, keepdim=True) - 2 * z @ e.t() + (e * e).sum(1)[None]  # (N, K) squared distances
        return d.argmin(1)

    def quantize(self, z_e: torch.Tensor) -> torch.Tensor:
        """z_e (B, D, h, w) -> codes (B, h, w) int64."""
        B, D, h, w = z_e.shape
        return self.nearest(z_e.detach().permute(0, 2, 3, 1).reshape(-1, D)).view(B, h, w)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, h, w) -> code vectors z_q (B, D, h, w)."""
        return F.embedding(codes, self.embedding).permute(0, 3, 1, 2)

    def forward(self, z_e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """z_e (B, D, h, w) -> (z_q with the straight-through gradient (B, D, h, w), codes (B, h, w), losses).

        losses: "commitment" beta * ||z_e - sg(z_q)||^2 per image (B,), summed over positions and dims, and
        (ema=False) "codebook" ||sg(z_e) - z_q||^2 per image (B,). The forward value of z_q is the code
        vectors; its gradient goes to z_e unchanged (straight-through)."""
        codes = self.quantize(z_e)
        z_q = self.lookup(codes).to(z_e.dtype)
        losses = {"commitment": self.beta * (z_e - z_q.detach()).pow(2).flatten(1).sum(1)}
        if not self.ema:
            losses["codebook"] = (z_e.detach() - z_q).pow(2).flatten(1).sum(1)
        # z_q + (z_e - sg(z_e)): exactly z_q forward (z_e + sg(z_q - z_e) would round), identity gradient to z_e
        return z_q.detach() + (z_e - z_e.detach()), codes, losses

    # eager even inside a compiled objective (`--compile`): in-place buffer writes, data-dependent restarts and
    # their draws from torch's generator (which compiled code would replace by its own RNG) run as written
    @torch.compiler.disable
    @torch.no_grad()
    def update(self, z_e: torch.Tensor, codes: torch.Tensor, generator: torch.Generator | None = None) -> None:
        """One training update from a batch: the moving averages (ema=True), the unused counts and restarts.

        z_e (B, D, h, w) the encoder outputs and codes (B, h, w) their codes (as `forward` chose them)."""
        K, D = self.num_codes, self.code_dim
        z = z_e.detach().permute(0, 2, 3, 1).reshape(-1, D).float()  # (N, D)
        onehot = F.one_hot(codes.reshape(-1), K).float()  # (N, K)
        n = distributed.all_sum(onehot.sum(0)).float()  # (K,) vectors per code over all processes
        if self.ema:
            s = distributed.all_sum(onehot.t() @ z).float()  # (K, D) their sums
            self.ema_count.mul_(self.decay).add_(n.to(self.ema_count), alpha=1 - self.decay)
            self.ema_sum.mul_(self.decay).add_(s.to(self.ema_sum), alpha=1 - self.decay)
            self._normalise()
        self.unused.add_(1).masked_fill_(n.to(self.unused.device) > 0, 0)
        if self.restart_after:
            dead = (self.unused >= self.restart_after).nonzero().flatten()  # the same on every process
            if len(dead):
                self.restart(dead, z, generator)

    def _normalise(self) -> None:
        """e_k = m_k / N~_k with the Laplace-smoothed counts N~ (see the class docstring)."""
        total = self.ema_count.sum()
        smoothed = (self.ema_count + self.epsilon) / (total + self.num_codes * self.epsilon) * total
        self.embedding.copy_(self.ema_sum / smoothed[:, None])

    @torch.no_grad()
    def restart(self, dead: torch.Tensor, z: torch.Tensor, generator: torch.Generator | None = None) -> None:
        """Move the codes `dead` (int64 (M,)) to M encoder outputs drawn (with replacement) from z (N, D)."""
        pick = torch.randint(len(z), (len(dead),), generator=generator).to(z.device)  # on the CPU: any device
        points = distributed.gather_tensors(z[pick].contiguous())[0]  # rank 0's draws on every process
        points = points.to(self.embedding)
        self.embedding.data[dead] = points
        if self.ema:  # a fresh average of weight one at the new point
            self.ema_count[dead] = 1.0
            self.ema_sum[dead] = points
        self.unused[dead] = 0


def codebook_perplexity(codes: torch.Tensor, num_codes: int) -> float:
    """exp(entropy) of the codes' histogram: how many codes are in effective use (1 .. num_codes)."""
    p = torch.bincount(codes.reshape(-1), minlength=num_codes).double()
    p = p / p.sum()
    return math.exp(-(p[p > 0] * p[p > 0].log()).sum().item())


# ----- encoder and decoder blocks ---------------------------------------------------------------------------------
class ResidualBlock(nn.Module):
    """x + conv1x1(relu(conv3x3(relu(x)))): the paper's residual block (hidden -> res_hidden -> hidden)."""

    def __init__(self, hidden: int, res_hidden: int):
        super().__init__()
        self.conv1 = nn.Conv2d(hidden, res_hidden, 3, padding=1)
        self.conv2 = nn.Conv2d(res_hidden, hidden, 1)

    def forward(self, x):
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


def residual_stack(hidden: int, res_hidden: int, num_blocks: int) -> nn.Sequential:
    """num_blocks residual blocks, then a ReLU."""
    return nn.Sequential(*(ResidualBlock(hidden, res_hidden) for _ in range(num_blocks)), nn.ReLU())


def downsampler(c_in: int, hidden: int, res_hidden: int, num_blocks: int, num_down: int) -> nn.Sequential:
    """num_down stride-2 4x4 convolutions (each halving H and W), then the residual stack: (B, hidden, H/2^n, W/2^n)."""
    layers: list[nn.Module] = []
    for i in range(num_down):
        layers += [nn.Conv2d(c_in if i == 0 else hidden, hidden, 4, stride=2, padding=1), nn.ReLU()]
    layers.pop()  # the residual blocks start with their own ReLU
    return nn.Sequential(*layers, residual_stack(hidden, res_hidden, num_blocks))


def upsampler(c_in: int, hidden: int, res_hidden: int, num_blocks: int, num_up: int, c_out: int) -> nn.Sequential:
    """3x3 conv, the residual stack, num_up stride-2 4x4 transposed convolutions (each doubling H and W)."""
    layers: list[nn.Module] = [nn.Conv2d(c_in, hidden, 3, padding=1), residual_stack(hidden, res_hidden, num_blocks)]
    for i in range(num_up):
        last = i == num_up - 1
        layers.append(nn.ConvTranspose2d(hidden, c_out if last else hidden, 4, stride=2, padding=1))
        if not last:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


# ----- the model --------------------------------------------------------------------------------------------------
@register_model("vqvae", sizes=PRESETS, zero_ok=("restart_after",), added={"condition_bottom": False})
class VQVAE(LatentImageModel):
    """VQ-VAE with a learned prior over its codes (see the module docstring).

    Args:
        image: the images modelled.
        hidden, res_hidden, num_res_blocks: channels of the encoder and decoder, of the residual blocks'
            inner 3x3 convolution, and residual blocks per stack.
        num_downsamples: stride-2 layers: the (bottom) code map is H / 2^n x W / 2^n (rounded up: other sides
            are padded for the encoder and cropped from the decoder's output).
        levels: 1 (VQ-VAE) or 2 (VQ-VAE-2: top codes at half the bottom codes' resolution).
        num_codes, code_dim: the codebook's size K and vector size D (each level has its own codebook).
        beta, ema, decay, epsilon, restart_after: the codebook's (see VectorQuantizer).
        output: {"kind": ..., **options} of p(x | z), per pixel.
        prior: {"kind": a registered model, "size": its size (default "tiny"), **its options}: the prior over
            each level's code map, built as create_model(kind, ImageSpec(1, h, w, num_codes), size, ...) with
            a categorical output (codes are labels, not ordered values).
        condition_bottom: two levels: the bottom prior is conditioned on the top codes (VQ-VAE-2; the prior
            kind must read a map, see the module docstring); False: independent priors. Unused with one level.
        num_classes, cond_dim: class labels or a vector as cond, given to the prior(s): p(z | cond) (the
            conditioned bottom prior gets them inside its map).
    """

    stochastic_posterior = False  # z(x) is a point mass: every importance-sampling estimate is the one bound

    def __init__(
        self,
        image: ImageSpec,
        hidden: int,
        res_hidden: int,
        num_res_blocks: int,
        num_downsamples: int,
        levels: int,
        num_codes: int,
        code_dim: int,
        beta: float,
        ema: bool,
        decay: float,
        epsilon: float,
        restart_after: int,
        output: dict,
        prior: dict,
        condition_bottom: bool = False,
        num_classes: int = 0,
        cond_dim: int = 0,
    ):
        # the decoder's parameters for a pixel see only z, never other pixels: the base's distribution models
        # the channels of a pixel jointly, except the Bernoulli's, independent given z
        super().__init__(image, output, num_classes, cond_dim)
        if levels not in (1, 2):
            raise ValueError(f"levels must be 1 (VQ-VAE) or 2 (VQ-VAE-2), got {levels!r}")
        for key, v in (("hidden", hidden), ("res_hidden", res_hidden), ("num_downsamples", num_downsamples)):
            if not isinstance(v, numbers.Integral) or v < 1:
                raise ValueError(f"{key} must be an integer >= 1, got {v!r}")
        # sides that are no multiple of 2^(num_downsamples + levels - 1) are padded at the bottom and right
        # for the encoder (with mid-grey, 0 in [-1, 1]) and the decoder's output is cropped back: p(x | z) stays
        # a distribution over the H x W images
        factor = 2 ** (num_downsamples + levels - 1)
        self.padded = (-(-image.height // factor) * factor, -(-image.width // factor) * factor)
        self.levels, self.num_codes, self.code_dim = int(levels), int(num_codes), int(code_dim)
        C = image.channels
        self.code_shapes = [(self.padded[0] >> num_downsamples, self.padded[1] >> num_downsamples)]  # bottom first
        if levels == 2:
            self.code_shapes.append((self.code_shapes[0][0] // 2, self.code_shapes[0][1] // 2))
        P = self.distribution.num_params

        def quantizer():
            return VectorQuantizer(num_codes, code_dim, beta, ema, decay, epsilon, restart_after)

        self.encoder = downsampler(C, hidden, res_hidden, num_res_blocks, num_downsamples)  # (B, hidden, h, w)
        self.pre_quant = nn.Conv2d(hidden, code_dim, 1)  # -> z_e (B, D, h, w)
        self.quantizers = nn.ModuleList([quantizer()])
        if levels == 2:
            # VQ-VAE-2: the top encoder reads the bottom features; the bottom codes see the decoded top codes;
            # the decoder reads the bottom codes and the top codes brought up to the bottom's resolution
            self.encoder_top = downsampler(hidden, hidden, res_hidden, num_res_blocks, 1)  # (B, hidden, h/2, w/2)
            self.pre_quant_top = nn.Conv2d(hidden, code_dim, 1)
            self.decoder_top = upsampler(code_dim, hidden, res_hidden, num_res_blocks, 1, code_dim)  # (B, D, h, w)
            self.pre_quant = nn.Conv2d(hidden + code_dim, code_dim, 1)
            self.upsample_top = nn.ConvTranspose2d(code_dim, code_dim, 4, stride=2, padding=1)
            self.quantizers.append(quantizer())
        self.decoder = upsampler(levels * code_dim, hidden, res_hidden, num_res_blocks, num_downsamples, P)

        self.conditioned = levels == 2 and bool(condition_bottom)
        specs = [ImageSpec(1, h, w, num_codes) for h, w in self.code_shapes]
        if self.conditioned:
            # the top codes (B, h/2, w/2) -> a map (B, hidden, h, w), the bottom prior's cond (see the docstring)
            self.top_embedding = nn.Embedding(num_codes, hidden)
            self.top_stack = nn.Sequential(
                nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU(), nn.Conv2d(hidden, hidden, 1)
            )
            self.top_cond_bias = maybe_bias(hidden, num_classes, cond_dim)  # the label / vector, in the map
            bottom = self._build_prior(prior, specs[0], cond_channels=hidden)
            self.priors = nn.ModuleList([bottom, self._build_prior(prior, specs[1], num_classes, cond_dim)])
        else:
            self.priors = nn.ModuleList(self._build_prior(prior, spec, num_classes, cond_dim) for spec in specs)

    @staticmethod
    def _build_prior(
        prior: dict, spec: ImageSpec, num_classes: int = 0, cond_dim: int = 0, cond_channels: int = 0
    ) -> ImageModel:
        if not isinstance(prior, dict) or not isinstance(prior.get("kind"), str):
            raise ValueError(f"prior must be an object like {{'kind': 'pixelcnn', 'size': 'tiny'}}, got {prior!r}")
        options = dict(prior)
        name, size = options.pop("kind"), options.pop("size", "tiny")
        for key in ("num_classes", "cond_dim", "cond_channels"):
            if key in options:
                raise ValueError(f"set {key} on the VQ-VAE, not in its prior: the VQ-VAE passes it on")
        if options.get("output", "categorical") not in ("categorical", {"kind": "categorical"}):
            raise ValueError(
                f"the prior over codes needs output 'categorical' (codes are labels, not ordered values), "
                f"got {options['output']!r}"
            )
        options["output"] = "categorical"
        if cond_channels:
            if "cond_channels" not in preset(name, size):  # the prior kind reads no conditioning map
                raise ValueError(
                    f"the two-level VQ-VAE's bottom prior is conditioned on the top codes, a map that {name!r} "
                    "cannot read; use a prior of kind pixelcnn, gated_pixelcnn or pixelcnn_pp, or set "
                    "condition_bottom=false for independent priors"
                )
            options["cond_channels"] = cond_channels
        else:
            options.update(num_classes=num_classes, cond_dim=cond_dim)
        model = create_model(name, spec, size, **options)
        if model.likelihood != "exact" or model.tokenizer is not None:
            raise ValueError(
                f"the prior must model the codes themselves with an exact likelihood; {name!r} "
                + ("models tokens of its images" if model.tokenizer is not None else f"has a {model.likelihood} one")
            )
        return model

    # ----- codes ---------------------------------------------------------------------------------------------
    def _encode(self, x: torch.Tensor):
        """x int64 (B, C, H, W) -> per level (bottom first): z_e (B, D, h, w), z_q straight-through, codes,
        losses. The top level is quantized first: the bottom codes see it."""
        h = self.scale_input(x)
        H, W = self.padded
        if (H, W) != h.shape[2:]:
            h = F.pad(h, (0, W - h.shape[3], 0, H - h.shape[2]))  # (B, C, H', W'): sides multiples of 2^n
        features = self.encoder(h)  # (B, hidden, h, w)
        if self.levels == 1:
            z_e = self.pre_quant(features)
            return [(z_e, *self.quantizers[0](z_e))]
        z_e_top = self.pre_quant_top(self.encoder_top(features))  # (B, D, h/2, w/2)
        top = (z_e_top, *self.quantizers[1](z_e_top))
        z_e = self.pre_quant(torch.cat([features, self.decoder_top(top[1])], 1))  # (B, D, h, w)
        return [(z_e, *self.quantizers[0](z_e)), top]

    def _decoder_params(self, z_q: list[torch.Tensor]) -> torch.Tensor:
        """Code vectors per level (bottom first) -> parameters of p(x | z), (B, P, H, W)."""
        h = z_q[0] if self.levels == 1 else torch.cat([z_q[0], self.upsample_top(z_q[1])], 1)
        return self.decoder(h)[:, :, : self.image.height, : self.image.width]  # the padding cropped

    def _as_levels(self, codes) -> list[torch.Tensor]:
        """codes as `quantize` returns them -> a list per level (bottom first), checked."""
        levels = [codes] if self.levels == 1 else list(codes) if isinstance(codes, (tuple, list)) else None
        if levels is None or len(levels) != self.levels:
            raise ValueError("codes of a two-level VQ-VAE are a pair (bottom (B, h, w), top (B, h/2, w/2))")
        for c, (h, w) in zip(levels, self.code_shapes):
            if not isinstance(c, torch.Tensor) or c.dtype.is_floating_point or c.dim() != 3 or c.shape[1:] != (h, w):
                raise ValueError(
                    f"codes must be int64 tensors of shape (B, {h}, {w}), got "
                    f"{getattr(c, 'dtype', type(c).__name__)} {tuple(getattr(c, 'shape', ()))}"
                )
            if c.numel() and (int(c.min()) < 0 or int(c.max()) >= self.num_codes):
                raise ValueError(f"codes must be in [0, {self.num_codes}), got {int(c.min())}..{int(c.max())}")
        if len({c.shape[0] for c in levels}) != 1:
            raise ValueError("the code maps of the two levels hold different numbers of images")
        return [c.long() for c in levels]

    def quantize(self, x: torch.Tensor):
        """The codes z(x): int64 (B, h, w) for one level; (bottom (B, h, w), top (B, h/2, w/2)) for two."""
        x = self.check_input(x)
        with inference(self):
            codes = [level[2] for level in self._encode(x)]
        return codes[0] if self.levels == 1 else tuple(codes)

    def decode_codes(self, codes) -> torch.Tensor:
        """Parameters of p(x | z) for codes as `quantize` returns them, (B, P, H, W)."""
        levels = self._as_levels(codes)
        return self._decoder_params([q.lookup(c) for q, c in zip(self.quantizers, levels)])

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The decoder's most likely image given z(x) (per pixel: the mode of each channel's conditional; for
        the logistic mixture the mean of its most likely component), int64 (B, C, H, W)."""
        x = self.check_input(x)
        with inference(self):
            return self._draw_pixels(self.decode_codes(self.quantize(x)), 0.0, None)

    def _draw_pixels(self, params: torch.Tensor, temperature: float, generator) -> torch.Tensor:
        """Draw every pixel of x ~ p(x | z) at once (they are independent given z): params (B, P, H, W) ->
        int64 (B, C, H, W)."""
        B, P, H, W = params.shape
        flat = params.permute(0, 2, 3, 1).reshape(-1, P)  # (B*H*W, P)
        dist = self.distribution
        if dist.joint:
            x = dist.sample(flat, temperature, generator)  # (B*H*W, C)
        else:
            x = torch.stack([dist.sample(flat, temperature, generator, c) for c in range(self.image.channels)], 1)
        return x.view(B, H, W, -1).permute(0, 3, 1, 2).contiguous()

    def prior_cond(self, level: int, codes: list[torch.Tensor], cond):
        """The cond of a level's prior: the VQ-VAE's cond, except the conditioned bottom prior's, the map
        (B, hidden, h, w) of the top codes codes[1] (B, h/2, w/2) (codes: per level, bottom first; only the top
        is read) with the checked cond as a bias."""
        if level != 0 or not self.conditioned:
            return cond
        top = self.top_embedding(codes[1]).permute(0, 3, 1, 2)  # (B, hidden, h/2, w/2)
        m = self.top_stack(F.interpolate(top, scale_factor=2, mode="nearest"))  # (B, hidden, h, w)
        return m if self.top_cond_bias is None else m + self.top_cond_bias(cond)

    def _rates(self, codes: list[torch.Tensor], cond) -> torch.Tensor:
        """-log p(z_l | ...) per level (B, levels), bottom first, for the codes per level (B, h, w)."""
        return torch.stack(
            [
                -p.log_prob(c[:, None], self.prior_cond(k, codes, cond))
                for k, (p, c) in enumerate(zip(self.priors, codes))
            ],
            1,
        )

    def code_image(self, level: int = 0) -> ImageSpec:
        """The ImageSpec of a level's code maps (0: bottom, 1: top): ImageSpec(1, h, w, num_codes)."""
        h, w = self.code_shapes[level]
        return ImageSpec(1, h, w, self.num_codes)

    # ----- training terms ------------------------------------------------------------------------------------
    def stage1_loss(self, x: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """The first stage's loss terms, each (B,): "distortion" -log p(x | z_q(x)) in nats, "commitment"
        beta * ||z_e - sg(z_q)||^2 (summed over the levels), and with ema=False "codebook" ||sg(z_e) - z_q||^2.
        Their sum is the paper's loss without the prior's term (a constant in this stage). In training mode
        the codebooks are updated from this batch (moving averages, restarts drawn with `generator`)."""
        return self._stage1(self.check_input(x), generator)[0]

    def objective_terms(
        self, x: torch.Tensor, cond: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """Both stages in one step, each term (B,) nats: stage1_loss's terms plus "rate" -log p(z(x) | cond),
        the prior on this step's codes (constants: no gradient reaches the encoder through them). In training
        mode the codebooks are updated from this batch."""
        x = self.check_input(x)
        cond = self.check_cond(cond, x.shape[0])
        out, codes = self._stage1(x, generator)
        out["rate"] = self._rates(codes, cond).sum(1)
        return out

    def _stage1(self, x: torch.Tensor, generator) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
        """stage1_loss's terms and the codes (per level, bottom first) they were computed with."""
        levels = self._encode(x)
        params = self._decoder_params([z_q for _, z_q, _, _ in levels])
        out = {"distortion": -self.distribution.log_prob(params, x).flatten(1).sum(1)}
        for key in levels[0][3]:
            out[key] = sum(losses[key] for _, _, _, losses in levels)
        if self.training:  # after the codes were chosen: this step's codes are the ones decoded
            for q, (z_e, _, codes, _) in zip(self.quantizers, levels):
                q.update(z_e, codes, generator)
        return out, [codes for _, _, codes, _ in levels]

    def objective(self, x: torch.Tensor, cond: torch.Tensor | None = None, **kw) -> torch.Tensor:
        """What training maximises, (B,) nats: in value the bound -(distortion + rate) (the ELBO, = log_prob);
        in gradient also minus the commitment (and, with ema=False, codebook) loss, which enter as t - sg(t).
        In training mode the codebooks are updated from this batch."""
        if kw:
            raise ValueError(f"model {self.name!r} takes no further arguments {sorted(kw)} in its objective")
        terms = self.objective_terms(x, cond)
        aux = sum(terms[k] for k in ("commitment", "codebook") if k in terms)
        return -(terms["distortion"] + terms["rate"]) - (aux - aux.detach())

    # ----- the contract -------------------------------------------------------------------------------------
    def elbo_terms(self, x: torch.Tensor, cond, noise=None) -> dict[str, torch.Tensor]:
        """distortion -log p(x | z(x)), rate -log p(z(x)) (the KL of the one-hot posterior to the prior),
        rate_per_layer (B, levels) bottom first; no codebook update (whatever the mode). Nothing is drawn (the
        posterior is a point mass), so noise goes unused."""
        levels = self._encode(x)
        params = self._decoder_params([z_q for _, z_q, _, _ in levels])
        distortion = -self.distribution.log_prob(params, x).flatten(1).sum(1)
        per_level = self._rates([c for _, _, c, _ in levels], cond)
        return {"distortion": distortion, "rate": per_level.sum(1), "rate_per_layer": per_level}

    def log_weight(self, x: torch.Tensor, cond, noise=None) -> torch.Tensor:
        """log p(x | z(x)) + log p(z(x)): with log q(z(x) | x) = 0 the weight of the single draw is the bound."""
        terms = self.elbo_terms(x, cond)
        return -(terms["distortion"] + terms["rate"])

    # ----- lossless coding: the two-part code z(x), then x given z ------------------------------------------------
    def _coding_order(self) -> list[int]:
        """The levels in coding order: top first where the bottom prior reads the top codes; else bottom first
        (independent priors: any order codes; streams of such models were written so)."""
        return [1, 0] if self.conditioned else list(range(self.levels))

    def coding_priors(self) -> list[ImageModel]:
        """The priors in coding order."""
        return [self.priors[k] for k in self._coding_order()]

    def coding_latents(self, x: torch.Tensor, cond) -> list[torch.Tensor]:
        """z(x) per level in coding order, each (n, 1, h, w): the priors' images."""
        codes = [level[2][:, None] for level in self._encode(x)]
        return [codes[k] for k in self._coding_order()]

    def _by_level(self, latents: list[torch.Tensor]) -> list[torch.Tensor | None]:
        """Latents (n, 1, h, w) in coding order (the first few, or all) -> code maps (n, h, w) per level,
        bottom first, None for the levels not among them."""
        codes = [None] * self.levels
        for level, z in zip(self._coding_order(), latents):
            codes[level] = z[:, 0]
        return codes

    def coding_cond(self, k: int, latents: list[torch.Tensor], cond):
        """The cond of coding prior k given the latents coded before it (coding order, each (n, 1, h, w))."""
        return self.prior_cond(self._coding_order()[k], self._by_level(latents), cond)

    def coding_params(self, latents: list[torch.Tensor], cond) -> torch.Tensor:
        """The decoder's parameters of p(x | z), (n, P, H, W), for latents (n, 1, h, w) per level in coding
        order."""
        codes = self._by_level(latents)
        return self.decode_codes(codes[0] if self.levels == 1 else tuple(codes))

    def ancestral_sample(self, n: int, cond, temperature, generator) -> torch.Tensor:
        """Codes from each level's prior (top first, with the prior's cached sampler where it has one), then
        every pixel at once from p(x | z); temperature (one number >= 0) applies to the prior's steps and the
        pixels (0: the mode of each)."""
        return self._sample_codes_then_pixels([None] * self.levels, None, n, cond, temperature, generator)

    def ancestral_complete(self, x: torch.Tensor, known: torch.Tensor, cond, temperature, generator) -> torch.Tensor:
        """Completion through the codes: the hidden pixels are set to mid-grey (their values must not leak in)
        and the image encoded; a code is kept where every pixel it covers is kept (padding counts as kept),
        the others are drawn by its level's prior given the kept codes (top first; the prior's completion, in
        its order: a raster prior sees the kept codes above and to the left of a drawn one), then the
        hidden pixels from p(x | z). x (n, C, H, W) int64, known (n, H, W) bool -> (n, C, H, W)."""
        mid = torch.full_like(x, self.image.num_values // 2)
        codes = [level[2] for level in self._encode(torch.where(known[:, None], x, mid))]  # bottom first
        H, W = self.padded
        kept = F.pad(known, (0, W - known.shape[2], 0, H - known.shape[1]), value=True).float()[:, None]
        masks = [(-F.max_pool2d(-kept, H // h))[:, 0] > 0.5 for h, _ in self.code_shapes]  # every pixel kept
        drawn = self._sample_codes_then_pixels(codes, masks, len(x), cond, temperature, generator)
        return torch.where(known[:, None], x, drawn)

    def _sample_codes_then_pixels(self, codes, masks, n: int, cond, temperature, generator) -> torch.Tensor:
        """Each level's codes from its prior, top first (the bottom prior may read the top codes), keeping
        codes[k] where masks[k] (n, h, w) holds (masks None: draw every code); then every pixel from p(x | z)."""
        if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) or not temperature >= 0:
            raise ValueError(f"temperature must be a number >= 0, got {temperature!r}")
        if not math.isfinite(temperature):
            raise ValueError(f"temperature must be finite, got {temperature!r}")
        for k in reversed(range(self.levels)):
            prior = self.priors[k]
            keep = {} if masks is None else dict(x_known=codes[k][:, None], known=masks[k])
            c = self.prior_cond(k, codes, cond)
            codes[k] = prior.sample(n, c, temperature, generator, prior.sampling_method("auto"), **keep)[:, 0]
        params = self.decode_codes(codes[0] if self.levels == 1 else tuple(codes))
        return self._draw_pixels(params, float(temperature), generator)
