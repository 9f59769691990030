"""Sampling and completion for any model of the contract (pixelar.models.base.ImageModel). Knows no model
family and imports no model: models call `sample(model, request)` to implement their `sample`."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from ..distributions.base import check_temperature
from ..inference import inference
from .cached import sample_cached
from .naive import sample_naive
from .seeded import CHUNK_IMAGES, sample_chunks, sample_seeded

METHODS = ("cached", "naive")


@dataclass
class SampleRequest:
    """The arguments of a model's `sample` (see ImageModel.sample), handed to its `_draw` hook and here."""

    n: int
    cond: torch.Tensor | None = None
    temperature: float = 1.0
    generator: torch.Generator | None = None
    method: str = "cached"
    x_known: torch.Tensor | None = None
    known: torch.Tensor | None = None
    progress: object = None  # see pixelar.progress: None/False, True (a bar), on_progress(done, total, **stats)
    threads: int | None = None  # CPU threads (None: pixelar.threads chooses); ImageModel.sample applies it

    def kwargs(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def sample(model, req: SampleRequest) -> torch.Tensor:
    """Draw req.n images (n, C, H, W) int64 from `model` with the naive or the cached sampler."""
    n, cond, temperature, generator, method, x_known, known = (
        req.n,
        req.cond,
        req.temperature,
        req.generator,
        req.method,
        req.x_known,
        req.known,
    )
    if method not in METHODS:
        raise ValueError(f"unknown sampling method {method!r}; valid: {list(METHODS)}")
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    temperature = check_temperature(temperature)
    cond = model.check_cond(cond, n)
    x, known = check_completion(model, n, x_known, known)
    with inference(model):
        if method == "cached":
            return sample_cached(model, x, cond, temperature, generator, known, req.progress)
        return sample_naive(model, x, cond, temperature, generator, known, req.progress)


def check_completion(model, n: int, x_known, known) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The image to fill and the kept pixels' mask on the model's device: (a copy of x_known (n, C, H, W),
    known (n, H, W) bool), or (zeros, None) without completion. Raises ValueError for malformed ones."""
    device = next(model.parameters()).device
    spec = model.image
    if (x_known is None) != (known is None):
        raise ValueError("completion needs both x_known (n, C, H, W) and known (n, H, W)")
    if known is None:
        return torch.zeros(n, *spec.shape, dtype=torch.long, device=device), None
    x = model.check_input(x_known).clone().to(device)
    if x.shape[0] != n:
        raise ValueError(f"x_known has {x.shape[0]} images but n={n}")
    if not isinstance(known, torch.Tensor) or known.shape != (n, spec.height, spec.width) or known.dtype != torch.bool:
        raise ValueError(
            f"known must be a bool mask of shape ({n}, {spec.height}, {spec.width}), "
            f"got {getattr(known, 'dtype', type(known).__name__)} {tuple(getattr(known, 'shape', ()))}"
        )
    return x, known.to(device)


__all__ = [
    "check_completion",
    "SampleRequest",
    "sample",
    "sample_naive",
    "sample_cached",
    "sample_seeded",
    "sample_chunks",
    "CHUNK_IMAGES",
    "METHODS",
]
