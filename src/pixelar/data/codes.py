"""codes_dataset: the discrete code maps of a dataset's images under a model with a codebook (the VQ-VAE), as
an ImageDataset, so that a prior over them trains like any pixelar model.

It asks the model only for `quantize(x)` (codes, int64 (B, h, w), or a per-level tuple), `code_image(level)`,
`levels`, `num_codes` and `image`, so the data package still imports no model."""

from __future__ import annotations

import torch

from pixelar.data.dataset import ImageDataset


def codes_dataset(model, dataset: ImageDataset, batch_size: int = 256, level: int = 0) -> ImageDataset:
    """The code maps z(x) of every image of `dataset` at one level (0: bottom, 1: top), as an ImageDataset
    over model.code_image(level) (labels kept). A VQ-VAE-2 bottom prior conditioned on the top codes also needs
    their map as its cond (model.prior_cond(0, codes, cond)), which a dataset of code maps does not hold."""
    if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level < model.levels:
        raise ValueError(f"level must be 0 (bottom){' or 1 (top)' if model.levels == 2 else ''}, got {level!r}")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if model.num_codes > 256:
        raise ValueError(
            f"an ImageDataset holds uint8 values, so at most 256 codes; this model has num_codes={model.num_codes}"
        )
    if dataset.spec != model.image or dataset.stochastic_binarize:
        raise ValueError(f"dataset holds {dataset.spec} images (fixed values), the model takes {model.image}")
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(dataset), batch_size):
        codes = model.quantize(dataset.images[i : i + batch_size].long().to(device))
        out.append((codes if model.levels == 1 else codes[level]).to(torch.uint8).cpu())
    spec = model.code_image(level)
    images = torch.cat(out)[:, None] if out else torch.zeros(0, *spec.shape, dtype=torch.uint8)
    return ImageDataset(
        images=images,
        labels=dataset.labels,
        spec=spec,
        num_classes=dataset.num_classes,
        name=f"{dataset.name}:codes{level}",
        split=dataset.split,
    )
