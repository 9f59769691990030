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

    Order ensembles: a model with several generation orders (`num_orders` > 1 and `log_prob_per_order`,
    e.g. LMConv) is scored as the uniform mixture over its orders, log(1/K sum_k p_k(x)) per image (a valid
    likelihood; averaging log-likelihoods or picking the best order per image would not be), and the result
    also has "bpd_single_order" (order 0, the one `log_prob` uses in eval mode), "bpd_per_order" and
    "num_orders".

    Models with auxiliary variables (`log_prob_parts`, e.g. grayscale_pixelcnn: log p(y) and log p(x | y))
    also get "bpd_parts": {part: bits per sub-pixel of the image}, which add up to "bpd".
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
    K = int(getattr(model, "num_orders", 1)) if callable(getattr(model, "log_prob_per_order", None)) else 1
    total = torch.zeros((), dtype=torch.float64)
    per_order = torch.zeros(K, dtype=torch.float64)
    parts_fn = getattr(model, "log_prob_parts", None) if K == 1 else None
    parts: dict[str, float] = {}
    try:
        for x, y in iterate_batches(ds, batch_size, shuffle=False, generator=generator):
            cond = y.to(device) if model.num_classes else None
            with autocast:
                if K > 1:
                    per = model.log_prob_per_order(x.to(device), cond).double()  # (B, K) nats
                    lp = torch.logsumexp(per, dim=1) - math.log(K)  # (B,) the mixture over orders
                    per_order += -per.sum(0).cpu()
                elif callable(parts_fn):
                    named = parts_fn(x.to(device), cond)  # {part: (B,) nats}, summing to log p(x)
                    for name, v in named.items():
                        parts[name] = parts.get(name, 0.0) - v.double().sum().item()
                    lp = sum(named.values())
                else:
                    lp = model.log_prob(x.to(device), cond)  # (B,) nats
            total += -lp.double().sum().cpu()
    finally:
        model.train(was_training)
    n, nats = len(ds), total.item()
    scale = n * model.image.dims * math.log(2)
    res = {"bpd": nats / scale, "nats_per_image": nats / n, "num_images": n}
    if parts:
        res["bpd_parts"] = {name: v / scale for name, v in parts.items()}
    if K > 1:
        res.update(num_orders=K, bpd_single_order=per_order[0].item() / scale,
                   bpd_per_order=[v / scale for v in per_order.tolist()])
    return res
