"""The model contract (ImageModel) and the base class of the autoregressive models (ARImageModel).

`ImageModel` is what every pixelar model offers and all that the rest of the library (training, evaluation,
sampling, the codec, the CLI) may ask of one: the likelihood and its kind, the generation order and the
order for completing given pixels, per-order and per-part likelihoods, an incremental sampling state,
features, a tokenizer, conditioning, sampling, saving. Optional abilities have a default here (a neutral
value, or NotImplementedError that says which models have them), so callers ask the contract instead of
probing for attributes. docs/design.md lists it in full.

`ARImageModel` is a backbone that maps an image to distribution parameters, plus an output distribution:
subclasses implement `forward(x, cond) -> params (B, P, H, W)` (with the causality their docstring states) and
call `super().__init__(image, output, grouped, num_classes, cond_dim)`; input checks, log_prob, the raster
generation order, sampling and saving come from here and sampling/. Their constructor arguments are captured
as `hparams` by the registry and saved with the weights, so no model repeats them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import numbers

import torch
import torch.nn as nn

from ..distributions import OutputDistribution, make_distribution
from ..errors import ArgumentValueError
from ..inference import inference
from ..nn.orders import raster_order
from ..sampling import METHODS as SAMPLING_METHODS
from ..sampling import SampleRequest, check_completion
from ..sampling import sample as sample_images
from ..threads import step_work, threads_for
from ..tracing import is_tracing
from ..types import ImageSpec
from .noise import LatentNoise, check_seeds
from .persistence import CONFIG_FORMAT, CONFIG_VERSION, save_model_dir


class ImageModel(nn.Module):
    """What every pixelar model offers (see the module docstring); defaults for the optional abilities.

    Every model has `image` (its inputs' ImageSpec), `data_image` and `tokenizer` (the images it is built for
    and the module mapping them to its inputs; `image` and None unless it models tokens), `num_classes` /
    `cond_dim` / `cond_channels` (its conditioning) and `hparams` (its constructor arguments, saved in
    config.json).
    """

    name: str = ""  # the registry name, set by the registry
    # "exact": log_prob is log p(x); "bound": a lower bound of it (latent-variable models)
    likelihood: str = "exact"
    # False for models whose likelihood is no product of per-sub-pixel conditionals of x (e.g. p(y) p(x | y) with
    # y = f(x)): their log_prob(reduce=False) and generation_order() raise NotImplementedError, and they cannot
    # drive the arithmetic coder
    factorizes: bool = True
    num_orders: int = 1  # generation orders the model mixes over in evaluation (log_prob_per_order)
    has_parts: bool = False  # whether log_prob_parts splits the likelihood into named parts
    num_feature_layers: int = 0  # layers whose features() a linear probe can read
    augmenter = None  # the transformations a Distribution Augmentation model is conditioned on
    embeds_positions: bool = False  # whether learned embeddings of coordinates enter (positions_from works)

    def __init__(self, image: ImageSpec, num_classes: int = 0, cond_dim: int = 0, cond_channels: int = 0):
        super().__init__()
        if not isinstance(image, ImageSpec):
            raise ValueError(f"image must be a pixelar.ImageSpec, got {type(image).__name__}")
        if sum(map(bool, (num_classes, cond_dim, cond_channels))) > 1:
            raise ValueError(
                "a model takes one kind of cond: class labels (num_classes), a vector (cond_dim) or a map "
                "(cond_channels), not several"
            )
        self.image = image
        self.num_classes = int(num_classes)
        self.cond_dim = int(cond_dim)
        # a spatial map (B, cond_channels, H, W) at the image's resolution, known before generation (e.g. a
        # VQ-VAE-2 bottom prior's view of the top codes): every position may read all of it
        self.cond_channels = int(cond_channels)
        self.hparams: dict = {}  # the registry replaces it with the constructor's arguments

    # ----- data images <-> model inputs (identity unless the model has a tokenizer) ------------------------------
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Data images (B, C, H, W) of `data_image` -> the model's input x of `image` (int64)."""
        return images if self.tokenizer is None else self.tokenizer.encode(images)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """The model's images x (e.g. samples) -> data images of `data_image` (int64)."""
        return x if self.tokenizer is None else self.tokenizer.decode(x)

    # ----- input handling ----------------------------------------------------------------------------------
    def check_input(self, x: torch.Tensor) -> torch.Tensor:
        spec = self.image
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"x must be a torch.Tensor of int64 values, got {type(x).__name__}")
        if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
            raise ValueError(
                f"x must hold integer values in [0, {spec.num_values}) (int64), got dtype {x.dtype}; "
                "convert images with x.long() instead of scaling them to floats"
            )
        if x.dim() != 4 or tuple(x.shape[1:]) != spec.shape:
            raise ValueError(
                f"x must have shape (B, {spec.channels}, {spec.height}, {spec.width}) for {spec}, got {tuple(x.shape)}"
            )
        if x.numel() and not is_tracing() and (int(x.min()) < 0 or int(x.max()) >= spec.num_values):
            raise ValueError(f"x values must be in [0, {spec.num_values}), got min {int(x.min())} max {int(x.max())}")
        return x.long()

    def check_cond(self, cond, batch: int):
        """Validate `cond`: None, int64 labels (B,) when num_classes, float (B, cond_dim) when cond_dim, float
        (B, cond_channels, H, W) when cond_channels."""
        if self.num_classes:
            if cond is None:
                raise ValueError(
                    f"this model is class-conditional: pass cond as int64 labels (B,) in [0, {self.num_classes})"
                )
            if not isinstance(cond, torch.Tensor) or cond.dtype.is_floating_point or cond.shape != (batch,):
                raise ValueError(
                    f"cond must be int64 class labels of shape ({batch},), got "
                    f"{getattr(cond, 'dtype', type(cond).__name__)} {tuple(getattr(cond, 'shape', ()))}"
                )
            if cond.numel() and not is_tracing() and (int(cond.min()) < 0 or int(cond.max()) >= self.num_classes):
                raise ValueError(
                    f"class labels must be in [0, {self.num_classes}), got {cond.min().item()}..{cond.max().item()}"
                )
            return cond.long()
        if self.cond_dim:
            if (
                not isinstance(cond, torch.Tensor)
                or not cond.dtype.is_floating_point
                or cond.shape != (batch, self.cond_dim)
            ):
                raise ValueError(
                    f"cond must be a float tensor of shape ({batch}, {self.cond_dim}), got "
                    f"{getattr(cond, 'dtype', type(cond).__name__)} {tuple(getattr(cond, 'shape', ()))}"
                )
            return cond.to(next(self.parameters()).dtype)
        if self.cond_channels:
            shape = (batch, self.cond_channels, self.image.height, self.image.width)
            if not isinstance(cond, torch.Tensor) or not cond.dtype.is_floating_point or tuple(cond.shape) != shape:
                raise ValueError(
                    f"this model is conditioned on a map: cond must be a float tensor of shape {shape}, got "
                    f"{getattr(cond, 'dtype', type(cond).__name__)} {tuple(getattr(cond, 'shape', ()))}"
                )
            return cond.to(next(self.parameters()).dtype)
        if cond is not None:
            raise ValueError(
                "this model is unconditional: cond must be None (build it with num_classes=... or cond_dim=...)"
            )
        return None

    # ----- likelihood --------------------------------------------------------------------------------------
    def log_prob(self, x: torch.Tensor, cond: torch.Tensor | None = None, reduce: bool = True) -> torch.Tensor:
        """log p(x | cond) in nats: (B,) when reduce, else (B, C, H, W) per-sub-pixel conditionals."""
        raise NotImplementedError

    def objective(self, x: torch.Tensor, cond: torch.Tensor | None = None, **kw) -> torch.Tensor:
        """What training maximises, (B,) nats per image: log_prob(x) for the exact models; the ELBO (its
        analytic-KL form) for latent-variable models. kw: further log_prob arguments (DistAug's aug)."""
        return self.log_prob(x, cond, **kw)

    def log_prob_per_order(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """log p_k(x) under each of the model's `num_orders` generation orders, (B, num_orders) nats."""
        return self.log_prob(x, cond)[:, None]

    def log_prob_parts(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """{part: (B,) nats}, summing to log_prob(x), where `has_parts`."""
        raise NotImplementedError(
            f"model {self.name!r} has no likelihood parts; the auxiliary-variable models (grayscale_pixelcnn, "
            "pyramid_pixelcnn) have"
        )

    def conditional_log_prob(
        self, x: torch.Tensor, known: torch.Tensor, cond: torch.Tensor | None = None
    ) -> torch.Tensor:
        """log p(x_hidden | x_known) in nats, (B,), for a bool mask known (H, W) of given pixels."""
        raise NotImplementedError(
            f"model {self.name!r} cannot score a hidden region given the rest (it generates in one fixed order); "
            "lmconv can"
        )

    # ----- generation order --------------------------------------------------------------------------------
    def generation_order(self) -> torch.Tensor:
        """Flat indices into (C, H, W) in the order the sub-pixels are generated, (C*H*W,) int64."""
        raise NotImplementedError

    def completing(self, known: torch.Tensor | None):
        """A context in which the model generates in an order suited to completing the pixels `known` (n, H, W)
        (bool, True where given): generation_order(), the forward pass and begin_cache follow it. The default
        keeps the model's order (the samplers then keep the known pixels and draw the rest)."""
        return contextlib.nullcontext()

    def positions_from(self, units: torch.Tensor):
        """A context in which input sub-pixel d of image b gets the positional embeddings of sub-pixel
        units[b, d] (int64 (B, C*H*W) flat indices) instead of its own, for everything the model computes
        inside it (forward, log_prob, sampling): a wrapper that moves sub-pixels keeps their original
        coordinates with it (DistAug's permute_embeddings). Only models with `embeds_positions` have it."""
        raise NotImplementedError(
            f"model {self.name!r} embeds no coordinates, so there is nothing to move; the transformers "
            "(sparse_transformer, image_transformer, image_gpt) do"
        )

    # ----- incremental evaluation (cached sampling, the codec) --------------------------------------------------
    def begin_cache(self, x: torch.Tensor, cond=None):
        """A state whose params_at(i, j) equals forward(x, cond)[:, :, i, j] for the image x being filled in
        place in generation order (see pixelar.sampling.cached)."""
        raise NotImplementedError(
            f"model {self.name!r} ({type(self).__name__}) has no incremental forward (begin_cache) for cached "
            "sampling; use method='naive'"
        )

    @property
    def has_incremental_forward(self) -> bool:
        """Whether begin_cache is implemented."""
        return type(self).begin_cache is not ImageModel.begin_cache

    @property
    def has_cached_sampler(self) -> bool:
        """Whether sample(method="cached") works: an incremental forward, or a sample() that caches itself (e.g.
        the grayscale PixelCNN's two stages)."""
        return self.has_incremental_forward

    def sampling_method(self, method: str = "auto") -> str:
        """ "auto": "cached" where the model has a cached sampler, else "naive" (the reference); others as given."""
        if method != "auto":
            return method
        return "cached" if self.has_cached_sampler else "naive"

    def stepwise(self, cond, n: int) -> tuple[ImageModel, torch.Tensor | None]:
        """(model, its checked cond) whose generation steps give this model's conditionals for n images in their
        own layout (a wrapper answers with its base, e.g. DistAug under the identity): what the codec drives."""
        return self, self.check_cond(cond, n)

    # ----- lossless coding (pixelar.codec) ---------------------------------------------------------------------
    def coding_scheme(self) -> str:
        """How the codec codes this model's images losslessly at its likelihood:

        - "stepwise": every sub-pixel with the conditionals of `stepwise(cond, n)`, in generation order;
        - "latent": a two-part code, exact where the posterior is a point mass z(x): the latents z(x)
          (`coding_latents`) with the stepwise conditionals of their priors (`coding_priors`), then x given
          them with the output distribution's per-sub-pixel conditionals (`coding_params`).

        Raises NotImplementedError, saying why, for a model the codec cannot drive."""
        if not self.factorizes:
            raise NotImplementedError(
                f"{self.name} does not factor into one conditional per sub-pixel, so it cannot "
                "drive the arithmetic coder; use a model with a generation order"
            )
        return "stepwise"

    # ----- sharded training ---------------------------------------------------------------------------------
    def shard_units(self) -> list[nn.Module]:
        """The submodules that sharded training (FSDP, `train(..., shard=True)`) gathers and frees one at a
        time: each must use its parameters only inside its own forward. Default: the top-level children with
        parameters, module lists and dicts (which have no forward) replaced by their elements, nested ones
        too; parameters left out (the model's own, an output distribution's) are gathered for the whole
        step."""
        units, todo = [], list(self.children())
        while todo:
            m = todo.pop(0)
            if isinstance(m, (nn.ModuleList, nn.ModuleDict)):  # containers have no forward: their elements
                todo[:0] = list(m.children())
            elif m is not getattr(self, "distribution", None) and any(True for _ in m.parameters()):
                units.append(m)
        return units

    # ----- features -----------------------------------------------------------------------------------------
    def features(self, x: torch.Tensor, cond=None, layers=None) -> dict[int, torch.Tensor]:
        """Average-pooled features {layer: (B, d)} of model inputs x, for layers in [0, num_feature_layers)."""
        raise NotImplementedError(f"model {self.name!r} has no features() for a linear probe; image_gpt has")

    # ----- sampling ----------------------------------------------------------------------------------------
    def sample(
        self,
        n: int,
        cond=None,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        method: str = "cached",
        x_known: torch.Tensor | None = None,
        known: torch.Tensor | None = None,
        progress=None,
        threads: int | None = None,
        **options,
    ) -> torch.Tensor:
        """Draw n images, int64 (n, C, H, W).

        Args:
            cond: labels (n,) or vectors (n, cond_dim) for conditional models.
            temperature: 1 samples the model; lower sharpens every step; 0 takes the mode of each step.
            generator: a torch.Generator for reproducible samples.
            method: "cached" (fast, per-layer caches) or "naive" (full forward pass per step; the reference).
            x_known, known: for completion, values (n, C, H, W) and a bool mask (n, H, W) of pixels to keep.
            progress: report the generation steps (pixelar.progress: True for a bar, or a callable
                on_progress(done, total, images=n)); the images do not depend on it.
            threads: CPU threads for the sampling, restored after; None chooses (pixelar.threads: one for the
                small steps of cached sampling, torch's setting for large ones).
            options: what a model adds (DistAug: `aug`, the transformation to sample under).
        """
        req = SampleRequest(n, cond, temperature, generator, method, x_known, known, progress, threads)
        images = n if isinstance(n, int) and n > 0 else 1  # n itself is checked by the sampler
        work = step_work(self, images, incremental=method == "cached")
        with threads_for(threads, work, next(self.parameters()).device) as count:
            # the count in force goes with the request, so a model's inner sampler (a stage) keeps it
            return self._draw(dataclasses.replace(req, threads=count), **options)

    def _draw(self, req: SampleRequest) -> torch.Tensor:
        """The hook that models override where sampling differs: by default the samplers of pixelar.sampling
        in the model's order, or the order `completing(known)` chooses."""
        with self.completing(req.known):
            return sample_images(self, req)

    # ----- persistence -------------------------------------------------------------------------------------
    def config(self) -> dict:
        return {
            "format": CONFIG_FORMAT,
            "version": CONFIG_VERSION,
            "model": self.name,
            "image": self.data_image.to_dict(),
            "hparams": self.hparams,
        }

    def save(self, path) -> None:
        """Write `path/config.json` and `path/model.safetensors` (each to a temp file, then renamed)."""
        save_model_dir(self, path)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


class ARImageModel(ImageModel):
    """Base class of the autoregressive models: a backbone `forward(x, cond) -> params` and a distribution.

    Args:
        image: the images the model handles.
        output: {"kind": ..., **options} of the output distribution.
        grouped: True when the backbone gives per-channel parameter groups that may see earlier channels of
            the same pixel (PixelCNN-style R/G/B masks); False when its parameters see only earlier pixels.
        num_classes: number of class labels accepted as `cond` (0: none).
        cond_dim: size of a global float conditioning vector accepted as `cond` (0: none).
        cond_channels: channels of a float conditioning map (B, cond_channels, H, W) accepted as `cond` (0:
            none), for the backbones that read one (their constructors take it).
    """

    def __init__(
        self,
        image: ImageSpec,
        output: dict,
        grouped: bool,
        num_classes: int = 0,
        cond_dim: int = 0,
        cond_channels: int = 0,
    ):
        super().__init__(image, num_classes, cond_dim, cond_channels)
        output = dict(output)
        kind = output.pop("kind", None)
        self.distribution: OutputDistribution = make_distribution(image, kind, joint=not grouped, **output)
        self.grouped = grouped
        # Models over *tokens* of the data images (Image GPT's colour palette) set a tokenizer, a module with
        # fit(images, seed), encode(images) -> x, decode(x) -> images and fitted, and data_image, the images
        # they are built for (saved in config.json). Without a tokenizer both sides are `image`.
        self.tokenizer: nn.Module | None = None
        self.data_image = image

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """x int64 (B, C, H, W) -> distribution parameters (B, P, H, W)."""
        raise NotImplementedError

    def scale_input(self, x: torch.Tensor) -> torch.Tensor:
        """Values in [0, K) -> floats in [-1, 1], the input every backbone sees."""
        dtype = next(self.parameters()).dtype
        return x.to(dtype) * (2.0 / (self.image.num_values - 1)) - 1.0

    def log_prob(self, x: torch.Tensor, cond: torch.Tensor | None = None, reduce: bool = True) -> torch.Tensor:
        """log p(x | cond) in nats: (B,) when reduce, else (B, C, H, W) per-sub-pixel conditionals."""
        x = self.check_input(x)
        cond = self.check_cond(cond, x.shape[0])
        params = self(x, cond)
        lp = self.distribution.log_prob(params, x)
        return lp.flatten(1).sum(1) if reduce else lp

    def generation_order(self) -> torch.Tensor:
        """Flat indices into (C, H, W): pixels in raster order, R, G, B within a pixel. (C*H*W,) int64."""
        return raster_order(self.image, "subpixel")


def check_num_samples(num_samples) -> int:
    """num_samples of an importance-weighted bound: an integer >= 1."""
    if isinstance(num_samples, bool) or not isinstance(num_samples, numbers.Integral) or num_samples < 1:
        raise ArgumentValueError(
            "num_samples",
            "num_samples",
            "",
            f" (importance samples per image) must be an integer >= 1, got {num_samples!r}",
        )
    return int(num_samples)


class LatentImageModel(ImageModel):
    """Base class of the latent-variable models (VAEs): p(x) = E_z p(x | z) p(z), scored through bounds.

    `likelihood` is "bound": `log_prob(x, num_samples=K)` is the log of the K-sample importance-weighted
    estimate log (1/K sum_k p(x, z_k) / q(z_k | x)), z_k ~ q(z | x) (Burda et al. 2016): its exp is an unbiased
    estimate of p(x), so in expectation it is a lower bound of log p(x) that rises with K. `elbo(x)` gives the
    evidence lower bound in parts, {"distortion": -log p(x | z), "rate": KL(q || p) in total, "rate_per_layer":
    (B, L)}, all nats, with the KL in closed form where the model has it; `objective(x)` (what training
    maximises) is -(distortion + rate). The model does not factorize x into per-sub-pixel conditionals, so
    there is no reduce=False, generation order or incremental forward; sampling is ancestral, one pass through
    the decoder. Lossless coding: a deterministic posterior allows an exact two-part code (`coding_scheme`
    "latent": z(x) with its prior, then x given z); a stochastic one with Gaussian latent layers is coded by
    bits-back coding (`coding_top_down`).

    A subclass calls `super().__init__(image, output, num_classes, cond_dim)` (output: {"kind": ..., **options}
    of the decoder's pixel distribution p(x | z), `self.distribution`) and implements, on checked inputs:

    - `log_weight(x, cond, noise) -> (B,)`: log p(x, z) - log q(z | x) for one draw z ~ q(z | x) per image, its
      standard normal draws from `noise.randn(like)` (a LatentNoise: per-image generators where the caller
      gave seeds, else torch's). A model with a deterministic posterior (VQ-VAE) sets
      `stochastic_posterior = False`: log_prob then draws once, whatever num_samples.
    - `elbo_terms(x, cond, noise) -> dict` as `elbo` returns it, its draws from `noise` likewise.
    - `ancestral_sample(n, cond, temperature, generator) -> (n, C, H, W)` int64: z from the prior, x from
      p(x | z); temperature is what the model accepts (a number, or e.g. a per-layer list), checked there.
    """

    likelihood = "bound"
    factorizes = False
    stochastic_posterior = True
    # images per batch of importance samples: K samples of B images run as ceil(K * B / IW_BATCH) passes
    iw_batch = 512

    def __init__(self, image: ImageSpec, output: dict, num_classes: int = 0, cond_dim: int = 0):
        super().__init__(image, num_classes, cond_dim)
        output = dict(output)
        kind = output.pop("kind", None)
        # p(x | z) factorizes over pixels given z: the mixture and the categorical model a pixel's channels
        # jointly; the Bernoulli (for binary images) takes independent per-channel logits
        self.distribution: OutputDistribution = make_distribution(image, kind, joint=kind != "bernoulli", **output)
        self.tokenizer: nn.Module | None = None
        self.data_image = image

    def scale_input(self, x: torch.Tensor) -> torch.Tensor:
        """Values in [0, K) -> floats in [-1, 1], what the encoder sees."""
        dtype = next(self.parameters()).dtype
        return x.to(dtype) * (2.0 / (self.image.num_values - 1)) - 1.0

    # ----- to implement -------------------------------------------------------------------------------------
    def log_weight(self, x: torch.Tensor, cond: torch.Tensor | None, noise: LatentNoise) -> torch.Tensor:
        raise NotImplementedError

    def elbo_terms(self, x: torch.Tensor, cond: torch.Tensor | None, noise: LatentNoise) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def ancestral_sample(self, n: int, cond, temperature, generator) -> torch.Tensor:
        raise NotImplementedError

    # ----- the bounds ---------------------------------------------------------------------------------------
    def log_prob(
        self,
        x: torch.Tensor,
        cond: torch.Tensor | None = None,
        reduce: bool = True,
        num_samples: int = 1,
        seeds=None,
    ) -> torch.Tensor:
        """log (1/K sum_k p(x, z_k) / q(z_k | x)), z_k ~ q(z | x), K = num_samples: (B,) nats, a stochastic lower
        bound of log p(x | cond) (its exp is unbiased for p(x)). The draws come from torch's global generator,
        or with seeds (one integer >= 0 per image) sample k of image i from a generator of its own seeded from
        (seeds[i], 1 + k): then an image's value depends on its seed, not on the batch (pixelar.models.noise)."""
        if not reduce:
            raise NotImplementedError(
                f"model {self.name!r} is a latent-variable model: its likelihood has no per-sub-pixel "
                "conditionals log p(x_d | x_<d), so log_prob(reduce=False) does not exist"
            )
        K = check_num_samples(num_samples)  # checked also where it changes nothing
        if not self.stochastic_posterior:  # a point-mass posterior: every draw is the same
            K = 1
        x = self.check_input(x)
        cond = self.check_cond(cond, x.shape[0])
        B = x.shape[0]
        seeds = check_seeds(seeds, B)
        per_pass = max(1, min(K, self.iw_batch // max(B, 1)))  # samples per pass through the model
        weights, done = [], 0
        while done < K:
            m = min(per_pass, K - done)
            xr = x.repeat(m, 1, 1, 1)  # (m*B, C, H, W), sample-major
            cr = None if cond is None else cond.repeat(m, *([1] * (cond.dim() - 1)))
            weights.append(self.log_weight(xr, cr, LatentNoise.for_samples(seeds, done, m)).float().view(m, B))
            done += m
        return torch.logsumexp(torch.cat(weights), dim=0) - math.log(K)  # (B,)

    def elbo(self, x: torch.Tensor, cond: torch.Tensor | None = None, seeds=None) -> dict[str, torch.Tensor]:
        """The evidence lower bound in parts, nats: {"distortion": (B,) -log p(x | z), "rate": (B,) the total KL,
        "rate_per_layer": (B, L) the KL of each latent layer}; ELBO = -(distortion + rate) <= log p(x). z is drawn
        from torch's global generator, or with seeds (one integer >= 0 per image) image i's from a generator of
        its own seeded from (seeds[i], 0)."""
        x = self.check_input(x)
        seeds = check_seeds(seeds, x.shape[0])
        noise = LatentNoise() if seeds is None else LatentNoise(seeds, torch.zeros_like(seeds))
        return self.elbo_terms(x, self.check_cond(cond, x.shape[0]), noise)

    def objective(self, x: torch.Tensor, cond: torch.Tensor | None = None, **kw) -> torch.Tensor:
        """The ELBO, -(distortion + rate), (B,) nats: what training maximises."""
        if kw:
            raise ValueError(f"model {self.name!r} takes no further arguments {sorted(kw)} in its objective")
        terms = self.elbo(x, cond)
        return -(terms["distortion"] + terms["rate"])

    # ----- lossless coding ----------------------------------------------------------------------------------
    def coding_scheme(self) -> str:
        """ "latent" for a model with a deterministic posterior that implements the three methods below;
        "bits-back" for a stochastic posterior over diagonal-Gaussian latent layers that implements
        `coding_top_down` (z is coded with bits taken from q(z | x), docs/codec.md); else refused."""
        if not self.stochastic_posterior:
            return "latent"
        if type(self).coding_top_down is LatentImageModel.coding_top_down:
            raise NotImplementedError(
                f"{self.name} is a latent-variable model with a stochastic posterior that does not expose its "
                "latent layers (coding_top_down), so it cannot drive bits-back coding; compress with an "
                "autoregressive model or a VQ-VAE"
            )
        return "bits-back"

    def coding_top_down(self, n: int, cond, choose, x: torch.Tensor | None = None) -> torch.Tensor:
        """The generative pass with the caller choosing every latent, for bits-back coding: for n images, at
        latent layer k (in the prior's order, top first) z_k = choose(k, prior, posterior), prior = (mean,
        log-std) of the diagonal Gaussian p(z_k | z_<k), posterior = (mean, log-std) of q(z_k | x, z_<k), or
        None when x is None (a receiver that does not know x yet); all (n, *layer shape). Returns the
        parameters of p(x | z) (n, P, H, W) of `self.distribution`. The same choices must give the same floats
        with and without x (the codec calls it on one image at a time, as coder and decoder)."""
        raise NotImplementedError(f"model {self.name!r} does not expose its latent layers")

    def coding_priors(self) -> list[ImageModel]:
        """The models of the latents, in the order they are coded: each an ordinary pixelar model with stepwise
        conditionals, given its `coding_cond`."""
        raise NotImplementedError(f"model {self.name!r} does not code its latents")

    def coding_cond(self, k: int, latents: list[torch.Tensor], cond):
        """The cond of coding prior k, which may read the latents coded before it (`latents`, the first k of
        `coding_latents`) and the model's checked cond. Default: the model's cond (independent priors)."""
        return cond

    def coding_latents(self, x: torch.Tensor, cond) -> list[torch.Tensor]:
        """z(x) for checked images x (n, C, H, W): one int64 image (n, *prior.image.shape) per coding prior."""
        raise NotImplementedError(f"model {self.name!r} does not code its latents")

    def coding_params(self, latents: list[torch.Tensor], cond) -> torch.Tensor:
        """Parameters of p(x | z) for latents as `coding_latents` gives them, (n, P, H, W) of
        `self.distribution`. The codec calls it on the same latents in the same batch when coding and
        decoding, so both see the same floats."""
        raise NotImplementedError(f"model {self.name!r} does not code its latents")

    # ----- abilities a VAE does not have ----------------------------------------------------------------------
    def generation_order(self) -> torch.Tensor:
        raise NotImplementedError(
            f"model {self.name!r} is a latent-variable model: it generates all sub-pixels at once from its latents, "
            "in no order"
        )

    def conditional_log_prob(self, x, known, cond=None):
        raise NotImplementedError(
            f"model {self.name!r} is a latent-variable model: it cannot score a hidden region given the rest "
            "(lmconv can)"
        )

    def begin_cache(self, x, cond=None):
        raise NotImplementedError(
            f"model {self.name!r} is a latent-variable model: it samples in one pass through its decoder and has "
            "no incremental forward"
        )

    @property
    def has_incremental_forward(self) -> bool:
        return False

    @property
    def has_cached_sampler(self) -> bool:
        return False

    def sampling_method(self, method: str = "auto") -> str:
        """ "ancestral" (one pass through the decoder), whatever was asked: the cached and naive samplers of the
        autoregressive models have nothing to do here."""
        return "ancestral"

    # ----- sampling ------------------------------------------------------------------------------------------
    def _draw(self, req: SampleRequest) -> torch.Tensor:
        """Ancestral sampling: z from the prior (temperature scales its standard deviations), x from p(x | z);
        with kept pixels, the model's `ancestral_complete` where it has one."""
        completing = req.known is not None or req.x_known is not None
        if completing and type(self).ancestral_complete is LatentImageModel.ancestral_complete:
            raise NotImplementedError(
                f"model {self.name!r} is a latent-variable model with a stochastic posterior: completing an image "
                "from kept pixels needs inference over its latents given part of an image, which pixelar does "
                "not do; autoregressive models and the VQ-VAE (through its codes) complete images"
            )
        if req.method not in (*SAMPLING_METHODS, "ancestral"):
            raise ValueError(f"unknown sampling method {req.method!r}; valid: {[*SAMPLING_METHODS, 'ancestral']}")
        if isinstance(req.n, bool) or not isinstance(req.n, int) or req.n < 1:
            raise ValueError(f"n must be a positive int, got {req.n!r}")
        cond = self.check_cond(req.cond, req.n)
        if not completing:
            with inference(self):
                return self.ancestral_sample(req.n, cond, req.temperature, req.generator)
        x, known = check_completion(self, req.n, req.x_known, req.known)
        with inference(self):
            return self.ancestral_complete(x, known, cond, req.temperature, req.generator)

    def ancestral_complete(self, x: torch.Tensor, known: torch.Tensor, cond, temperature, generator) -> torch.Tensor:
        """Complete the images x (n, C, H, W) int64, keeping the pixels where known (n, H, W) is True and drawing
        the rest; models with a way to do it through their latents override this (the VQ-VAE)."""
        raise NotImplementedError

    def sample_output(self, params: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw x from p(x | z): params (n, P, H, W) of the decoder -> int64 (n, C, H, W); pixels independent
        given z, at temperature 1."""
        n, P, H, W = params.shape
        flat = params.permute(0, 2, 3, 1).reshape(n * H * W, P)
        dist = self.distribution
        if dist.joint:
            pix = dist.sample(flat, 1.0, generator)  # (n*H*W, C)
        else:
            pix = torch.stack([dist.sample(flat, 1.0, generator, channel=c) for c in range(self.image.channels)], 1)
        return pix.view(n, H, W, -1).permute(0, 3, 1, 2).contiguous()
