"""Models and images shared by the codec tests."""

from __future__ import annotations

import torch

import pixelar


def perturbed(name: str, spec, scale: float = 0.2, **kw):
    """The tiny `name` for spec in eval mode, every weight moved by scale x N(0, 1) (seeded): random weights,
    since output heads and some last layers start at zero and would give flat distributions."""
    torch.manual_seed(1)
    model = pixelar.create_model(name, spec, "tiny", **kw).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))
    return model


def random_images(spec, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, spec.num_values, (n, *spec.shape), generator=g)
