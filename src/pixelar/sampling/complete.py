"""Completion (inpainting in generation order): keep the given pixels, sample the rest."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import ArgumentValueError
from ..image_files import load_mask
from .seeded import sample_seeded

KEEP_PRESETS = ("top-half", "left-half")


def keep_mask(keep: str, height: int, width: int, convert: bool = False, notes: list | None = None) -> torch.Tensor:
    """Which pixels to keep, bool (H, W): "top-half", "left-half", or a mask image (white = keep: grey level
    >= 128). A mask image is read as strictly as the images (pixelar.image_files.load_mask: convert, and the
    conversions made are appended to notes)."""
    mask = torch.zeros(height, width, dtype=torch.bool)
    if keep == "top-half":
        mask[: height // 2] = True
        return mask
    if keep == "left-half":
        mask[:, : width // 2] = True
        return mask
    path = Path(keep)
    if not path.is_file():
        raise ArgumentValueError(
            "keep", "keep", "", f" must be one of {list(KEEP_PRESETS)} or a mask image file; {keep!r} is neither"
        )
    m, made = load_mask(path, height, width, convert=convert)
    if notes is not None:
        notes.extend(made)
    return m


def complete(
    model, x: torch.Tensor, keep: torch.Tensor, n: int = 1, seed: int | None = None, **options
) -> torch.Tensor:
    """Complete one image x (C, H, W) n times, keeping the pixels where keep (H, W) is True. -> (n, C, H, W).
    options: model.sample's (cond, temperature, generator, method, ...). With a seed (and no generator) the
    completions are drawn by sample_seeded: the same on any number of processes, which must all call this."""
    x_known = x.unsqueeze(0).expand(n, *x.shape).clone()
    known = keep.unsqueeze(0).expand(n, *keep.shape).clone()
    if seed is not None:
        if options.get("generator") is not None:
            raise ValueError("pass a seed or a generator, not both")
        options.pop("generator", None)
        return sample_seeded(model, n, seed, x_known=x_known, known=known, **options)
    return model.sample(n, x_known=x_known, known=known, **options)
