"""Samples from a seed, the same images whatever the number of processes that draw them.

`model.sample(n, generator=g)` draws every step for all n images from one generator, so image i depends on n
and on the images drawn beside it. `sample_seeded(model, n, seed)` instead splits the n images into chunks of
`batch_size` images (CHUNK_IMAGES by default; the last one shorter) and draws chunk k with its own generator,
seeded from (seed, k) (`chunk_seed`): a chunk's images depend only on the seed, k, n, batch_size and the
arguments, never on which process draws it or which other chunks it draws. Under torchrun the chunks are
drawn in rounds, one per process (pixelar.distributed.each_in_order: chunk k on rank k % N), and every
process gets all n images, in order; so 1, 2 or 7 processes return the same images (on the same device type:
CPU and CUDA generators give different streams).

`sample_chunks(model, n, seed, use, ...)` hands the images over chunk by chunk instead, as `use(rows,
images)`, for a caller that writes them out as they come (`pixelar sample` fills its grid so): it holds one
round of chunks, never all n images.

The price is batching: one process draws its chunks one after another, batches of batch_size instead of all
n at once (on 2 CPU cores, 64 small PixelCNN++ samples at 28x28 in chunks of 16 took about 2.4 times as long as
one batch of 64), so the default chunk is large enough for the usual grid of samples in one batch; on a GPU a
larger batch_size fills the device better (it changes the images a seed gives, as any batch size does).
"""

from __future__ import annotations

import numpy as np
import torch

from .. import distributed
from ..progress import tracking

CHUNK_IMAGES = 64  # default batch_size: images drawn together from one generator, the unit shared out


def chunk_seed(seed: int, k: int) -> int:
    """The seed of stream k of `seed`: derived from (seed, k), apart from the other streams (chunk k's generator
    here; an image's k-th latent draw in pixelar.models.noise)."""
    return int(np.random.SeedSequence([int(seed), 0x5A3, int(k)]).generate_state(1, np.uint64)[0] >> 1)


def num_chunks(n: int, batch_size: int = CHUNK_IMAGES) -> int:
    return -(-n // batch_size)


def _chunk_progress(bar, index: int, count: int, n: int):
    """A chunk's on_progress, reporting into bar: every chunk takes the same number of steps, which its first
    report tells (the model's own count, e.g. both stages of the grayscale PixelCNN)."""

    def report(done: int, total: int, **stats) -> None:
        bar.set_total(total * count)
        bar.advance(index * total + done - bar.done, images=n)

    return report


def sample_seeded(
    model,
    n: int,
    seed: int,
    cond=None,
    x_known: torch.Tensor | None = None,
    known=None,
    batch_size: int = CHUNK_IMAGES,
    progress=None,
    **options,
) -> torch.Tensor:
    """n images (n, C, H, W) int64 drawn as the module docstring says; on every process under torchrun, which
    must all call it with the same arguments.

    Args:
        seed: an int; with n and batch_size it fixes the images.
        batch_size: images drawn together (one chunk); the chunks are what the processes share out.
        cond, x_known, known: as model.sample's, one row per image (each chunk gets its rows).
        options: passed to each chunk's model.sample as they are (temperature, method, threads, a model's own
            options); per-image tensors belong in cond, x_known and known.
        progress: one count over this process's chunks (pixelar.progress): each chunk's generation steps.
    """
    out = None

    def keep(rows: slice, x: torch.Tensor) -> None:
        nonlocal out
        if out is None:  # the model's image shape (tokens for a tokenized model), known from the first chunk
            out = x.new_empty((n, *x.shape[1:]))
        out[rows] = x

    sample_chunks(model, n, seed, keep, cond, x_known, known, batch_size, progress, **options)
    return out.to(next(model.parameters()).device)


def sample_chunks(
    model,
    n: int,
    seed: int,
    use,
    cond=None,
    x_known: torch.Tensor | None = None,
    known=None,
    batch_size: int = CHUNK_IMAGES,
    progress=None,
    **options,
) -> None:
    """The images of sample_seeded(model, n, seed, ...) (same arguments), handed over as they are drawn:
    use(rows, images) for each chunk in order, rows a slice of range(n) and images (rows, C, H, W) int64 on the
    CPU, on every process under torchrun (rank 0 writes them). Memory: one round of chunks (one per process),
    not n images."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    for name, t in (("cond", cond), ("x_known", x_known), ("known", known)):
        if isinstance(t, torch.Tensor) and (t.dim() == 0 or t.shape[0] != n):
            raise ValueError(f"{name} must have one row per image, n={n}; got shape {tuple(t.shape)}")
    device = next(model.parameters()).device
    count = num_chunks(n, batch_size)
    mine = len(range(distributed.rank(), count, distributed.world_size()))  # this process's chunks

    def rows_of(k: int) -> slice:
        return slice(k * batch_size, min(n, (k + 1) * batch_size))

    with tracking(progress, 0, "sampling", "step") as bar:

        def draw(k: int) -> torch.Tensor:
            rows = rows_of(k)
            g = torch.Generator(device=device).manual_seed(chunk_seed(seed, k))
            part = [t[rows] if isinstance(t, torch.Tensor) else t for t in (cond, x_known, known)]
            index = k // distributed.world_size()  # among this process's chunks
            x = model.sample(
                rows.stop - rows.start,
                cond=part[0],
                generator=g,
                x_known=part[1],
                known=part[2],
                progress=_chunk_progress(bar, index, mine, n) if bar.active else None,
                **options,
            )
            return x.cpu()

        distributed.each_in_order(count, draw, lambda k, x: use(rows_of(k), x), "sampling")
