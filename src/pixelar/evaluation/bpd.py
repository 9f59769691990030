"""Exact bits/dim of a model on a dataset (an upper bound for latent-variable models): every image counted once,
the sum kept in float64.

Under torchrun every process scores its own contiguous share of the images (pixelar.distributed.share) and
the float64 sums are added over the processes, so N processes report the bits/dim of one (up to the float
rounding of batches of other shapes) and the image count is checked against the dataset."""

from __future__ import annotations

import contextlib
import math

import torch

from .. import distributed
from ..data import ImageDataset, first_images, fixed_binarization, iterate_batches, select
from ..errors import ArgumentValueError
from ..inference import inference
from ..models.base import check_num_samples
from ..progress import tracking

# Printed beside every likelihood of a tokenized model (Image GPT's palette)
TOKEN_NOTE = (
    "the palette is lossy in general, so nats per token score the quantised images and are NOT comparable "
    "with bits/dim of 8-bit images"
)


def describe(res: dict) -> str:
    """One line for an evaluate() result: bits/dim, or for tokenized models nats per token, the palette's
    reconstruction error and TOKEN_NOTE; for latent-variable models the bound, marked as one."""
    if res.get("bound"):
        how = (
            f"importance-weighted, K={res['num_samples']}; ELBO {res['bpd_elbo']:.4f}"
            if "bpd_iw" in res
            else "the ELBO"
        )
        return (
            f"<= {res['bpd']:.4f} bits/dim (upper bound: {how}; {res['nats_per_image']:.2f} nats/image, "
            f"{res['num_images']} images)"
        )
    if res.get("tokenized"):
        return (
            f"{res['nats_per_token']:.4f} nats per palette token ({res['bpd']:.4f} bits per token, "
            f"{res['nats_per_image']:.2f} nats/image, {res['num_images']} images); palette reconstruction "
            f"RMSE {res['palette_rmse']:.2f} (0..255), {100 * res['palette_exact_fraction']:.1f}% of pixels exact; "
            + TOKEN_NOTE
        )
    return f"{res['bpd']:.4f} bits/dim ({res['nats_per_image']:.2f} nats/image, {res['num_images']} images)"


# Dynamically binarized sets are binarized afresh per batch; a fixed generator makes their evaluation a
# fixed binarization of the split, the same on every call.
EVAL_BINARIZATION_SEED = 0


def order_mixture(per_order: torch.Tensor) -> torch.Tensor:
    """log(1/K sum_k p_k(x)) per image from log p_k(x) (B, K) nats: the uniform mixture over K orders."""
    return torch.logsumexp(per_order, dim=1) - math.log(per_order.shape[1])


# Latent-variable models draw their latents from torch's global generator: evaluation forks it and seeds it
# with this (plus the process's rank), so an evaluation gives the same bound every time
EVAL_LATENT_SEED = 0


def _check_num_samples(model, num_samples) -> int | None:
    """num_samples for a latent-variable model (None: the ELBO); refused for a model with an exact likelihood."""
    if num_samples is None:
        return None
    if model.likelihood != "bound":
        raise ArgumentValueError(
            "num_samples",
            "num_samples",
            "",
            f" (importance samples) applies to latent-variable models; the likelihood of model {model.name!r} is "
            "exact, so leave it out",
        )
    return check_num_samples(num_samples)


@contextlib.contextmanager
def seeded_latents(model):
    """A block in which a latent-variable model's draws (from torch's generator) repeat from call to call:
    the generator forked and seeded with EVAL_LATENT_SEED + rank, the caller's state left as it was. Nothing
    for models with an exact likelihood."""
    if model.likelihood != "bound":
        yield
        return
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(EVAL_LATENT_SEED + distributed.rank())
        yield


def _elbo(model, x, cond) -> torch.Tensor:
    terms = model.elbo(x, cond)
    return -(terms["distortion"] + terms["rate"])


def image_log_prob(model, x: torch.Tensor, cond=None, num_samples: int | None = None) -> torch.Tensor:
    """log p(x) of each image in nats, (B,), as `evaluate` scores it (eval mode, no autograd): x are the
    model's inputs (encode data images of tokenized models first); models with several generation orders give
    the mixture over them. Latent-variable models give a lower bound: the ELBO (num_samples None or 1), or the
    importance-weighted bound with num_samples > 1 (each call draws afresh)."""
    num_samples = _check_num_samples(model, num_samples)
    with inference(model):
        if model.likelihood == "bound":
            if num_samples is None or num_samples == 1:
                return _elbo(model, x, cond).double()
            return model.log_prob(x, cond, num_samples=num_samples).double()
        if model.num_orders > 1:
            return order_mixture(model.log_prob_per_order(x, cond).double())
        return model.log_prob(x, cond).double()


def evaluate(
    model,
    dataset: ImageDataset,
    batch_size: int = 500,
    precision: str = "fp32",
    subset: int | None = None,
    progress=None,
    num_samples: int | None = None,
) -> dict:
    """Negative log-likelihood of `dataset` (or its first `subset` images) under `model`.

    Returns {"bpd": bits per sub-pixel, "nats_per_image": mean NLL per image, "num_images": N}. The nats of all
    N images (the last, partial batch included) are summed in float64 and divided once by N * D * ln 2.
    Labels are passed as cond when the model is class-conditional. precision "bf16" runs the model under
    bfloat16 autocast (the likelihood itself is still computed in fp32 by the output distribution).

    Order ensembles: a model with several generation orders (`num_orders` > 1, `log_prob_per_order`,
    e.g. LMConv) is scored as the uniform mixture over its orders, log(1/K sum_k p_k(x)) per image (a valid
    likelihood; averaging log-likelihoods or picking the best order per image would not be), and the result
    also has "bpd_single_order" (order 0, the one `log_prob` uses in eval mode), "bpd_per_order" and
    "num_orders".

    Models with auxiliary variables (`has_parts`, `log_prob_parts`, e.g. grayscale_pixelcnn: log p(y) and
    log p(x | y)) also get "bpd_parts": {part: bits per sub-pixel of the image}, which add up to "bpd".

    Models over tokens (a `tokenizer`, e.g. image_gpt's colour palette) score the *encoded* images: "bpd" is
    then bits per token, and the result also has "tokenized": True, "nats_per_token", and the palette's
    reconstruction error on the split, "palette_rmse" (0..255 scale) and "palette_exact_fraction" (pixels
    decoded exactly). A lossy palette models quantised images, so these numbers are not comparable with
    bits/dim of the 8-bit images (TOKEN_NOTE says so wherever they are printed).

    progress: report the images scored (pixelar.progress: True for a bar, or a callable on_progress(done,
    total, bpd=) with the bits/dim of the images so far); under torchrun each process counts its own share.

    Latent-variable models (`likelihood == "bound"`, e.g. vdvae) give upper bounds of the bits/dim: the result
    has "bound": True, "bpd_elbo" (the ELBO with its KL in closed form, always), "bpd_rate" and
    "bpd_distortion" (its two parts), and with num_samples K > 1 also "bpd_iw", the K-sample importance-weighted
    bound, and "num_samples"; "bpd" (and "nats_per_image") is the tightest of them: "bpd_iw" when K > 1, else
    "bpd_elbo". The latents are drawn from torch's generator, forked and seeded (EVAL_LATENT_SEED + rank), so
    the numbers repeat from call to call. num_samples is refused for models with an exact likelihood.
    """
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    num_samples = _check_num_samples(model, num_samples)
    bound = model.likelihood == "bound"
    importance = bound and num_samples is not None and num_samples > 1 and model.stochastic_posterior
    # models over tokens (Image GPT's palette) are built for data images other than their inputs
    data_image, tokenizer = model.data_image, model.tokenizer
    if dataset.spec != data_image:
        raise ValueError(f"dataset {dataset.name!r} has images {dataset.spec} but the model expects {data_image}")
    if model.num_classes and dataset.labels is None:
        raise ValueError(f"the model is class-conditional but dataset {dataset.name!r} has no labels")
    ds = first_images(dataset, subset)
    if len(ds) == 0:
        raise ValueError(f"dataset {dataset.name!r} ({dataset.split}) has no images to evaluate")
    if len(ds) < distributed.world_size():
        raise ValueError(f"{len(ds)} images cannot be shared by {distributed.world_size()} processes: use fewer")
    device = next(model.parameters()).device
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
    # one fixed binarization of a dynamically binarized split, drawn before it is shared out
    ds = fixed_binarization(ds, torch.Generator().manual_seed(EVAL_BINARIZATION_SEED))
    mine = select(ds, distributed.share(len(ds)))  # this process's images: every image in exactly one share
    K = model.num_orders
    with_parts = model.has_parts and K == 1
    # float64 sums of this share, added over the processes at the end: nats, images, non-finite images,
    # nats per order, the palette's reconstruction error and the parts (in the model's order of parts)
    sums = {"nats": 0.0, "images": 0.0, "non_finite": 0.0, "nats_iw": 0.0, "rate": 0.0}
    per_order = torch.zeros(K, dtype=torch.float64)
    recon = {"sq_err_sum": 0.0, "exact_pixels": 0.0, "pixels": 0.0, "sub_pixels": 0.0}
    parts: dict[str, float] = {}
    dims_ln2 = model.image.dims * math.log(2)
    with (
        inference(model),  # eval mode, no autograd (else every batch's graph stays alive through the sums)
        seeded_latents(model),
        tracking(progress, len(mine), "evaluating", "img") as bar,
    ):
        for x, y in iterate_batches(mine, batch_size, shuffle=False):
            cond = y.to(device) if model.num_classes else None
            if tokenizer is not None:  # data images -> tokens; how lossy that is, summed over the split
                for k, v in tokenizer.reconstruction_error(x.to(device)).items():
                    recon[k] += v
                x = model.encode(x.to(device))
            with autocast:
                if K > 1:
                    per = model.log_prob_per_order(x.to(device), cond).double()  # (B, K) nats
                    lp = order_mixture(per)  # (B,) the mixture over orders
                    per_order += -per.sum(0).cpu()
                elif with_parts:
                    named = model.log_prob_parts(x.to(device), cond)  # {part: (B,) nats}, summing to log p(x)
                    for name, v in named.items():
                        parts[name] = parts.get(name, 0.0) - v.double().sum().item()
                    lp = sum(named.values())
                elif bound:
                    terms = model.elbo(x.to(device), cond)  # the ELBO, KL in closed form
                    lp = -(terms["distortion"] + terms["rate"])
                    sums["rate"] += terms["rate"].double().sum().item()
                    if importance:
                        iw = model.log_prob(x.to(device), cond, num_samples=num_samples)
                        sums["nats_iw"] += -iw.double().sum().item()
                        sums["non_finite"] += int((~torch.isfinite(iw)).sum())
                else:
                    lp = model.log_prob(x.to(device), cond)  # (B,) nats
            sums["nats"] += -lp.double().sum().item()
            sums["images"] += len(x)
            sums["non_finite"] += int((~torch.isfinite(lp)).sum())
            bar.advance(len(x), bpd=sums["nats"] / (sums["images"] * dims_ln2))
    packed = torch.tensor([*sums.values(), *recon.values(), *parts.values()], dtype=torch.float64)
    packed = distributed.all_sum(torch.cat([packed, per_order]))
    values = iter(packed.tolist())
    sums = {k: next(values) for k in sums}
    recon = {k: next(values) for k in recon}
    parts = {k: next(values) for k in parts}
    per_order = list(values)
    n, nats, non_finite = len(ds), sums["nats"], int(sums["non_finite"])
    if int(sums["images"]) != n:  # every image scored exactly once, whatever the number of processes
        raise RuntimeError(f"evaluation scored {int(sums['images'])} images of {n}: the processes' shares are wrong")
    if non_finite or not math.isfinite(nats):
        raise ValueError(
            f"the model gave a non-finite log-likelihood (NaN or inf) for {non_finite} of {n} images of "
            f"dataset {dataset.name!r} ({dataset.split}): its weights are broken (e.g. a diverged run), "
            "so there is no bits/dim to report"
        )
    scale = n * model.image.dims * math.log(2)
    res = {"bpd": nats / scale, "nats_per_image": nats / n, "num_images": n}
    if bound:
        res.update(
            bound=True,
            bpd_elbo=nats / scale,
            bpd_rate=sums["rate"] / scale,
            bpd_distortion=(nats - sums["rate"]) / scale,
        )
        if importance:
            iw = sums["nats_iw"]
            res.update(bpd=iw / scale, nats_per_image=iw / n, bpd_iw=iw / scale, num_samples=num_samples)
    if tokenizer is not None:
        res.update(
            tokenized=True,
            nats_per_token=nats / (n * model.image.dims),
            palette_rmse=math.sqrt(recon["sq_err_sum"] / recon["sub_pixels"]),
            palette_exact_fraction=recon["exact_pixels"] / recon["pixels"],
        )
    if parts:
        res["bpd_parts"] = {name: v / scale for name, v in parts.items()}
    if K > 1:
        res.update(
            num_orders=K,
            bpd_single_order=per_order[0] / scale,
            bpd_per_order=[v / scale for v in per_order],
        )
    return res
