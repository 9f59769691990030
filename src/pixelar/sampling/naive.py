"""Reference sampler: one full forward pass per generation step. Slow and obviously correct.

It asks the model only for `forward`, `distribution`, `image` and `generation_order()`, so it serves every
model family. A step is a pixel (joint distributions) or a sub-pixel (per-channel distributions), taken in
the model's generation order (raster for the PixelCNN family; any order for LMConv). Steps whose pixel is
known in every image (completion) are skipped; in other steps known pixels keep their value after the
draw, so a faster sampler that makes the same draws in the same order returns identical images.
"""

from __future__ import annotations

import torch

from ..progress import tracking


def pixel_order(model) -> list[tuple[int, int]]:
    """The pixels (i, j) in the order `model.generation_order()` lists them (raster for most models; block
    by block for the Image Transformer's local 2D attention). The sub-pixels of a pixel must follow each other
    in channel order, since a step draws a whole pixel or its channels in turn."""
    C, H, W = model.image.shape
    order = model.generation_order().view(-1, C)  # (HW, C): the C sub-pixels of each pixel, in turn
    pix = order[:, 0]
    if C > 1 and not torch.equal(order, pix.view(-1, 1) + torch.arange(C).view(1, C) * H * W):
        raise ValueError(
            f"{type(model).__name__}.generation_order() must list the channels of each pixel "
            "together, in channel order, for the samplers"
        )
    return [(int(p) // W, int(p) % W) for p in pix]


@torch.no_grad()
def generate(
    model, x: torch.Tensor, params_at, temperature: float, generator, known: torch.Tensor | None, progress=None
) -> torch.Tensor:
    """The generation loop every sampler shares, so their draws line up exactly.

    Fills x (n, C, H, W) int64 in generation order (generation_steps); `params_at(i, j)` returns the (n, P)
    distribution parameters of pixel (i, j) for the current x; known (n, H, W) bool marks pixels to keep.
    progress (pixelar.progress): counts the steps, skipped ones (known in every image) included.
    """
    dist = model.distribution
    steps = generation_steps(model)
    with tracking(progress, len(steps), "sampling", "step") as bar:
        bar.update(images=x.shape[0])
        for i, j, channels in steps:
            _step(dist, x, params_at, i, j, channels, temperature, generator, known)
            bar.advance()
    return x


def _step(dist, x, params_at, i: int, j: int, channels: list[int], temperature, generator, known) -> None:
    """Draw pixel (i, j) of every image (its channels in turn for a per-channel distribution)."""
    keep = known[:, i, j] if known is not None else None
    if keep is not None and bool(keep.all()):
        return
    if dist.joint:
        new = dist.sample(params_at(i, j), temperature, generator)  # (n, C)
        x[:, :, i, j] = new if keep is None else torch.where(keep[:, None], x[:, :, i, j], new)
    else:
        for c in channels:
            new = dist.sample(params_at(i, j), temperature, generator, channel=c)  # (n,)
            x[:, c, i, j] = new if keep is None else torch.where(keep, x[:, c, i, j], new)


def generation_steps(model) -> list[tuple[int, int, list[int]]]:
    """`model.generation_order()` as steps (i, j, channels): runs of consecutive sub-pixels of one pixel.

    For the default raster order: (0, 0, [0, .., C-1]), (0, 1, [0, .., C-1]), ... row by row. A joint
    distribution draws a whole pixel at once, so its model's order must keep each pixel's channels together.
    """
    C, H, W = model.image.shape
    steps: list[tuple[int, int, list[int]]] = []
    for d in model.generation_order().tolist():  # flat indices into (C, H, W)
        c, p = divmod(d, H * W)
        if steps and steps[-1][:2] == (p // W, p % W):
            steps[-1][2].append(c)
        else:
            steps.append((p // W, p % W, [c]))
    if model.distribution.joint and len(steps) != H * W:
        raise ValueError(
            f"{type(model).__name__}.generation_order() splits a pixel's channels, but its output "
            "distribution draws whole pixels; keep each pixel's channels adjacent in the order"
        )
    return steps


@torch.no_grad()
def sample_naive(
    model, x: torch.Tensor, cond, temperature: float, generator, known: torch.Tensor | None, progress=None
) -> torch.Tensor:
    """Reference: a full forward pass for every step's parameters."""
    return generate(model, x, lambda i, j: model(x, cond)[:, :, i, j], temperature, generator, known, progress)
