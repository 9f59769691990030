"""Exact bits/dim of a model on a dataset: every image counted, the sum kept in float64."""
from __future__ import annotations

import contextlib
import dataclasses
import math

import torch

from ..data import ImageDataset, iterate_batches

# Dynamically binarized sets are binarized afresh per batch; a fixed generator makes their evaluation a
# fixed binarization of the split, the same on every call.
EVAL_BINARIZATION_SEED = 0


def first_images(ds: ImageDataset, n: int | None) -> ImageDataset:
    """The first n images of `ds` (all of them when n is None or >= len(ds))."""
    if n is None or n >= len(ds):
        return ds
    return dataclasses.replace(ds, images=ds.images[:n], labels=None if ds.labels is None else ds.labels[:n])


@torch.no_grad()
def evaluate(model, dataset: ImageDataset, batch_size: int = 500, precision: str = "fp32",
             subset: int | None = None) -> dict:
    """Negative log-likelihood of `dataset` (or its first `subset` images) under `model`.

    Returns {"bpd": bits per sub-pixel, "nats_per_image": mean NLL per image, "num_images": N}. The nats of all
    N images (the last, partial batch included) are summed in float64 and divided once by N * D * ln 2.
    Labels are passed as cond when the model is class-conditional. precision "bf16" runs the model under
    bfloat16 autocast (the likelihood itself is still computed in fp32 by the output distribution).
    """
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if dataset.spec != model.image:
        raise ValueError(f"dataset {dataset.name!r} has images {dataset.spec} but the model expects {model.image}")
    if model.num_classes and dataset.labels is None:
        raise ValueError(f"the model is class-conditional but dataset {dataset.name!r} has no labels")
    ds = first_images(dataset, subset)
    if len(ds) == 0:
        raise ValueError(f"dataset {dataset.name!r} ({dataset.split}) has no images to evaluate")
    device = next(model.parameters()).device
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16"
                else contextlib.nullcontext())
    generator = torch.Generator().manual_seed(EVAL_BINARIZATION_SEED)
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64)
    try:
        for x, y in iterate_batches(ds, batch_size, shuffle=False, generator=generator):
            cond = y.to(device) if model.num_classes else None
            with autocast:
                lp = model.log_prob(x.to(device), cond)  # (B,) nats
            total += -lp.double().sum().cpu()
    finally:
        model.train(was_training)
    n, nats = len(ds), total.item()
    return {"bpd": nats / (n * model.image.dims * math.log(2)), "nats_per_image": nats / n, "num_images": n}
