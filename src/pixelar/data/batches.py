"""iterate_batches: mini-batches of an ImageDataset as int64 tensors.

No torch DataLoader: the data already sit in one tensor, so a batch is one index
operation, which is far faster than collating single items.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import torch
from torch import Tensor

from pixelar.data.dataset import ImageDataset


def iterate_batches(
    ds: ImageDataset,
    batch_size: int,
    shuffle: bool,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
    epoch: int = 0,
) -> Iterator[tuple[Tensor, Tensor | None]]:
    """Yield ``(x, y)`` batches covering the dataset once (one epoch).

    Args:
        ds: the dataset.
        batch_size: images per batch; the last batch may be smaller unless ``drop_last``.
        shuffle: visit the images in the order ``torch.randperm(N, generator=...)``
            instead of in stored order.
        generator: source of randomness for the shuffle and, for dynamically
            binarized sets, the Bernoulli draws. Its state advances, so consecutive
            epochs with the same generator see different orders and binarizations,
            and the output is a deterministic function of its state.
        drop_last: drop the final batch if it has fewer than ``batch_size`` images.
        epoch: only used when ``generator`` is None: a private generator seeded with
            ``torch.initial_seed() + epoch`` is used, so after ``torch.manual_seed(s)``
            the epoch's order and binarization depend only on (s, epoch) (handy for
            resuming) and differ from epoch to epoch.

    Yields:
        x: int64 (B, C, H, W) with values in [0, ds.spec.num_values).
        y: int64 (B,) labels, or None if the dataset has no labels.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if generator is None:
        generator = torch.Generator().manual_seed((torch.initial_seed() + epoch) % 2**64)

    n = len(ds)
    # Drawn up front (even when empty) so the generator advances the same way
    # regardless of how far the caller iterates.
    order = torch.randperm(n, generator=generator) if shuffle else None
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        end = min(start + batch_size, n)
        if order is None:
            # Contiguous slice: a view, no gather needed.
            x = ds.images[start:end]
            y = ds.labels[start:end] if ds.labels is not None else None
        else:
            idx = order[start:end]
            x = ds.images[idx]
            y = ds.labels[idx] if ds.labels is not None else None
        if ds.stochastic_binarize:
            x = binarize_stochastic(x, generator)
        yield x.long(), (y.clone() if y is not None else None)


def fixed_binarization(ds: ImageDataset, generator: torch.Generator, batch_size: int = 1000) -> ImageDataset:
    """A dynamically binarized dataset drawn once: every image binarized with Bernoulli(pixel / 255) in stored
    order from `generator`, as a dataset that yields those 0/1 images every time (e.g. for evaluation, so
    that any split of it into batches or processes scores the same images)."""
    if not ds.stochastic_binarize:
        return ds
    parts = [binarize_stochastic(ds.images[k : k + batch_size], generator) for k in range(0, len(ds), batch_size)]
    images = torch.cat(parts) if parts else ds.images
    return dataclasses.replace(ds, images=images, stochastic_binarize=False)


def binarize_stochastic(x: Tensor, generator: torch.Generator) -> Tensor:
    """Bernoulli(x / 255) per sub-pixel for uint8 grayscale ``x`` of any shape; returns uint8 0/1.

    Pixel 0 always gives 0 and pixel 255 always gives 1.
    """
    probs = x.to(torch.float32) / 255.0
    return torch.bernoulli(probs, generator=generator).to(torch.uint8)
