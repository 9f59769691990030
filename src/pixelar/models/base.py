"""ARImageModel: a backbone that maps an image to distribution parameters, plus an output distribution.

Subclasses implement `forward(x, cond) -> params (B, P, H, W)` (with the causality their docstring states)
and call `super().__init__(image, hparams, output)`. Everything else - input checks, log_prob, the
generation order, sampling, saving - lives here and in sampling/, so every model gets it the same way.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..distributions import OutputDistribution, make_distribution
from ..tracing import is_tracing
from ..types import ImageSpec

CONFIG_FORMAT = "pixelar-model"
CONFIG_VERSION = 1


class ARImageModel(nn.Module):
    """Base class of every autoregressive image model.

    Args:
        image: the images the model handles.
        hparams: the full, JSON-serializable constructor arguments (saved with the checkpoint).
        output: {"kind": ..., **options} of the output distribution.
        grouped: True when the backbone gives per-channel parameter groups that may see earlier channels of
            the same pixel (PixelCNN-style R/G/B masks); False when its parameters see only earlier pixels.
        num_classes: number of class labels accepted as `cond` (0: none).
        cond_dim: size of a global float conditioning vector accepted as `cond` (0: none).
    """

    name: str = ""  # registry name, set by the registry
    # False for models whose likelihood is no product of per-sub-pixel conditionals of x (e.g. p(y) p(x | y) with
    # y = f(x)): their log_prob(reduce=False) and generation_order() raise NotImplementedError
    factorizes: bool = True

    def __init__(
        self, image: ImageSpec, hparams: dict, output: dict, grouped: bool, num_classes: int = 0, cond_dim: int = 0
    ):
        super().__init__()
        if not isinstance(image, ImageSpec):
            raise ValueError(f"image must be a pixelar.ImageSpec, got {type(image).__name__}")
        if num_classes and cond_dim:
            raise ValueError("a model takes either class labels (num_classes) or a vector (cond_dim) as cond, not both")
        self.image = image
        self.hparams = dict(hparams)
        self.num_classes = int(num_classes)
        self.cond_dim = int(cond_dim)
        output = dict(output)
        kind = output.pop("kind", None)
        self.distribution: OutputDistribution = make_distribution(image, kind, joint=not grouped, **output)
        self.grouped = grouped
        # Models over *tokens* of the data images (Image GPT's colour palette) set a tokenizer, a module with
        # fit(images, seed), encode(images) -> x, decode(x) -> images and fitted, and data_image, the images
        # they are built for (saved in config.json). Without a tokenizer both sides are `image`.
        self.tokenizer: nn.Module | None = None
        self.data_image = image

    # ----- what subclasses provide -------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """x int64 (B, C, H, W) -> distribution parameters (B, P, H, W)."""
        raise NotImplementedError

    # ----- data images <-> model inputs (identity unless the model has a tokenizer) ------------------------------
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Data images (B, C, H, W) of `data_image` -> the model's input x of `image` (int64)."""
        return images if self.tokenizer is None else self.tokenizer.encode(images)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """The model's images x (e.g. samples) -> data images of `data_image` (int64)."""
        return x if self.tokenizer is None else self.tokenizer.decode(x)

    # ----- input handling ----------------------------------------------------------------------------------
    def scale_input(self, x: torch.Tensor) -> torch.Tensor:
        """Values in [0, K) -> floats in [-1, 1], the input every backbone sees."""
        dtype = next(self.parameters()).dtype
        return x.to(dtype) * (2.0 / (self.image.num_values - 1)) - 1.0

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
        """Validate `cond`: None, int64 labels (B,) when num_classes, float (B, cond_dim) when cond_dim."""
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
        if cond is not None:
            raise ValueError(
                "this model is unconditional: cond must be None (build it with num_classes=... or cond_dim=...)"
            )
        return None

    # ----- likelihood --------------------------------------------------------------------------------------
    def log_prob(self, x: torch.Tensor, cond: torch.Tensor | None = None, reduce: bool = True) -> torch.Tensor:
        """log p(x | cond) in nats: (B,) when reduce, else (B, C, H, W) per-sub-pixel conditionals."""
        x = self.check_input(x)
        cond = self.check_cond(cond, x.shape[0])
        params = self(x, cond)
        lp = self.distribution.log_prob(params, x)
        return lp.flatten(1).sum(1) if reduce else lp

    def generation_order(self) -> torch.Tensor:
        """Flat indices into (C, H, W): pixels in raster order, R, G, B within a pixel. (C*H*W,) int64."""
        C, H, W = self.image.shape
        c = torch.arange(C).view(1, C)
        pix = torch.arange(H * W).view(H * W, 1)
        return (c * (H * W) + pix).reshape(-1)

    # ----- sampling ----------------------------------------------------------------------------------------
    @property
    def has_cached_sampler(self) -> bool:
        """Whether sample(method="cached") works: the model has an incremental forward (`begin_cache`), or
        overrides this where its own sample() caches (e.g. the grayscale PixelCNN's two stages)."""
        return callable(getattr(self, "begin_cache", None))

    def sample(
        self,
        n: int,
        cond=None,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        method: str = "cached",
        x_known: torch.Tensor | None = None,
        known: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Draw n images, int64 (n, C, H, W).

        Args:
            cond: labels (n,) or vectors (n, cond_dim) for conditional models.
            temperature: 1 samples the model; lower sharpens every step; 0 takes the mode of each step.
            generator: a torch.Generator for reproducible samples.
            method: "cached" (fast, per-layer caches) or "naive" (full forward pass per step; the reference).
            x_known, known: for completion, values (n, C, H, W) and a bool mask (n, H, W) of pixels to keep.
        """
        from ..sampling import sample as _sample  # sampling/ depends on models' interface, not vice versa

        return _sample(
            self,
            n,
            cond=cond,
            temperature=temperature,
            generator=generator,
            method=method,
            x_known=x_known,
            known=known,
        )

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
        from .persistence import save_model_dir

        save_model_dir(self, path)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
