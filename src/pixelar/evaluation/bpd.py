"""Exact bits/dim of a model on a dataset (an upper bound for latent-variable models): every image counted once,
the sum kept in float64.

What a figure depends on: the weights, the images (and labels), the batch size and the device, never the
number of processes. The images are scored in chunks of batch_size by their index in the set (chunk k:
images [k*batch_size, (k+1)*batch_size)); under torchrun each process scores a contiguous share of the chunks
(pixelar.distributed.chunks), so every image is computed in the same batch as on one process, and the chunks'
float64 sums are gathered and added exactly (math.fsum): 1, 2 or 7 processes give the same figure, to the
last digit. Another batch size rounds differently (about 1e-7 of the figure, float32 arithmetic).

A latent-variable model's random draws are tied to the image, not to the batch or the process: each image's
draws come from generators seeded from a hash of its content (its sub-pixels and label) and EVAL_LATENT_SEED
(`image_seeds`), so an image gets the same draws in any call, in any batch, beside any other images, on any
process; an image given twice gets the same value twice. Its bound then differs between batch sizes by
float rounding only."""

from __future__ import annotations

import contextlib
import hashlib
import math

import torch

from .. import distributed
from ..data import ImageDataset, first_images, fixed_binarization, iterate_batches, select
from ..errors import ArgumentValueError
from ..inference import inference
from ..models.base import check_num_samples
from ..progress import tracking
from ..threads import STEP_WORK_THRESHOLD, candidate_counts, check_threads, num_threads, probe, step_work

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


# Latent-variable models draw each image's latents from generators seeded from this and the image's content
# (image_seeds), so an evaluation gives the same bound every time, whatever the batch or the process
EVAL_LATENT_SEED = 0


def image_seeds(x: torch.Tensor, cond: torch.Tensor | None = None, seed: int = EVAL_LATENT_SEED) -> torch.Tensor:
    """One seed per image, (B,) int64 >= 0, from its content: a hash of `seed`, the image's values x[i] (the
    model's int inputs) and its cond (a label or a vector), where given. The same image and cond give the
    same seed in any call; images that differ in one sub-pixel get unrelated ones."""
    values = x.detach().to("cpu", torch.int64).contiguous().numpy()
    conds = None if cond is None else cond.detach().cpu().contiguous().numpy()
    out = []
    for i in range(len(values)):
        h = hashlib.blake2b(int(seed).to_bytes(8, "little"), digest_size=8)
        h.update(repr(values.shape[1:]).encode())
        h.update(values[i].tobytes())
        if conds is not None:  # the label (or vector) is part of what is scored: log p(x | y)
            h.update(b"cond" + str(conds.dtype).encode() + conds[i].tobytes())
        out.append(int.from_bytes(h.digest(), "little") >> 1)
    return torch.tensor(out, dtype=torch.int64)


def _check_num_samples(model, num_samples) -> int | None:
    """num_samples for a latent-variable model with a stochastic posterior (None: the ELBO); refused for a model
    with an exact likelihood, and for one with a deterministic posterior, where it changes nothing."""
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
    if not model.stochastic_posterior:
        raise ArgumentValueError(
            "num_samples",
            "num_samples",
            "",
            f" (importance samples) changes nothing for model {model.name!r}: its posterior is deterministic (one "
            "code map per image), so every importance sample is the same and the bound is the ELBO; leave it out",
        )
    return check_num_samples(num_samples)


def _elbo(model, x, cond, seeds) -> dict[str, torch.Tensor]:
    """A latent-variable model's ELBO of each image and its rate, (B,) nats each, with the KL in closed form."""
    terms = model.elbo(x, cond, seeds=seeds)
    return {"elbo": -(terms["distortion"] + terms["rate"]), "rate": terms["rate"]}


def image_log_prob(model, x: torch.Tensor, cond=None, num_samples: int | None = None) -> torch.Tensor:
    """log p(x) of each image in nats, (B,), as `evaluate` scores it (eval mode, no autograd): x are the
    model's inputs (encode data images of tokenized models first); models with several generation orders give
    the mixture over them. Latent-variable models give a lower bound: the ELBO (num_samples None or 1), or the
    importance-weighted bound with num_samples > 1, each image's draws seeded by its content (image_seeds):
    an image gets the same value in any call and beside any other images (up to float rounding of the batch)."""
    num_samples = _check_num_samples(model, num_samples)
    with inference(model):
        if model.likelihood == "bound":
            seeds = image_seeds(x, cond)
            if num_samples is None or num_samples == 1:
                return _elbo(model, x, cond, seeds)["elbo"].double()
            return model.log_prob(x, cond, num_samples=num_samples, seeds=seeds).double()
        if model.num_orders > 1:
            return order_mixture(model.log_prob_per_order(x, cond).double())
        return model.log_prob(x, cond).double()


PROBE_IMAGES = 32  # the batch a thread probe times (a few of them per candidate count)
# images per batch unless told: on 2 CPU cores 100 evaluated the default model 1.4x faster than 500 (the
# default of `pixelar eval`, TrainConfig.eval_batch_size and the probe's features alike)
EVAL_BATCH_SIZE = 100


def _eval_threads(model, ds, batch_size: int, threads, device, autocast) -> int | None:
    """The CPU thread count of an evaluation (see evaluate's `threads`); inside inference(model)."""
    if threads is not None:
        return check_threads(threads)
    if device.type != "cpu" or distributed.active() or torch.get_num_threads() == 1 or len(ds) == 0:
        return None
    n = min(batch_size, PROBE_IMAGES, len(ds))
    if step_work(model, min(batch_size, len(ds)), incremental=False) < STEP_WORK_THRESHOLD:
        return 1
    x, y = next(iterate_batches(select(ds, slice(0, n)), n, shuffle=False))
    cond = y.to(device) if model.num_classes else None
    x = (model.encode(x.to(device)) if model.tokenizer is not None else x).to(device)

    def step():
        with autocast:
            image_log_prob(model, x, cond)

    return probe(step, candidate_counts())["threads"]


def evaluate(
    model,
    dataset: ImageDataset,
    batch_size: int = EVAL_BATCH_SIZE,
    precision: str = "fp32",
    subset: int | None = None,
    progress=None,
    num_samples: int | None = None,
    threads: int | None = None,
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
    "bpd_elbo". Each image's latents are drawn from generators seeded by its content (image_seeds), so the
    numbers repeat from call to call and do not depend on the batches or the processes. num_samples is refused
    for models with an exact likelihood and for a deterministic posterior (the VQ-VAE's), where it changes
    nothing.

    threads: CPU threads. None: on a CPU in one process, the fastest of torch's count, half of it and 1 for a
    few batches of 32 images (pixelar.threads.probe; 1 without measuring where a batch is too small to gain
    from threads); a GPU or torchrun's processes keep torch's count.

    The figures depend on the weights, the images, batch_size and the CPU thread count (float rounding) and
    the device, not on the number of processes: the images are scored in chunks of batch_size by index, shared
    out as whole chunks, and the chunks' sums added exactly (see the module docstring).
    """
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    num_samples = _check_num_samples(model, num_samples)
    bound = model.likelihood == "bound"
    importance = bound and num_samples is not None and num_samples > 1
    # models over tokens (Image GPT's palette) are built for data images other than their inputs
    data_image, tokenizer = model.data_image, model.tokenizer
    if dataset.spec != data_image:
        raise ValueError(f"dataset {dataset.name!r} has images {dataset.spec} but the model expects {data_image}")
    if model.num_classes and dataset.labels is None:
        raise ValueError(f"the model is class-conditional but dataset {dataset.name!r} has no labels")
    ds = first_images(dataset, subset)
    if len(ds) == 0:
        raise ValueError(f"dataset {dataset.name!r} ({dataset.split}) has no images to evaluate")
    device = next(model.parameters()).device
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
    # one fixed binarization of a dynamically binarized split, drawn before it is shared out
    ds = fixed_binarization(ds, torch.Generator().manual_seed(EVAL_BINARIZATION_SEED))
    # this process's chunks of batch_size images by index in the set, as one contiguous run of images that starts
    # at a chunk: its batches are those chunks, the batches one process scores (some processes may get none)
    chunks = distributed.chunks(len(ds), batch_size)
    mine = select(ds, slice(chunks[0].start, chunks[-1].stop) if chunks else slice(0, 0))
    K = model.num_orders
    with_parts = model.has_parts and K == 1
    # per chunk, the float64 sums of its images: nats, images, non-finite images, the importance-weighted nats
    # and the rate (latent-variable models), the palette's reconstruction error, the parts (in the model's
    # order) and the nats per order; gathered over the processes and added exactly at the end
    rows: list[dict] = []
    done = {"nats": 0.0, "images": 0}  # this process's, for the progress bar
    dims_ln2 = model.image.dims * math.log(2)
    with (
        distributed.together("evaluating"),  # an error in one process stops all (none waits for it)
        inference(model),  # eval mode, no autograd (else every batch's graph stays alive through the sums)
        num_threads(_eval_threads(model, mine, batch_size, threads, device, autocast)),
        tracking(progress, len(mine), "evaluating", "img") as bar,
    ):
        for x, y in iterate_batches(mine, batch_size, shuffle=False):
            row = {"nats_iw": 0.0, "rate": 0.0, "non_finite": 0.0, "parts": {}, "per_order": [0.0] * K}
            cond = y.to(device) if model.num_classes else None
            if tokenizer is not None:  # data images -> tokens; how lossy that is, summed over the split
                row.update(tokenizer.reconstruction_error(x.to(device)))
                x = model.encode(x.to(device))
            x = x.to(device)
            with autocast:
                if K > 1:
                    per = model.log_prob_per_order(x, cond).double()  # (B, K) nats
                    lp = order_mixture(per)  # (B,) the mixture over orders
                    row["per_order"] = (-per.sum(0)).tolist()
                elif with_parts:
                    named = model.log_prob_parts(x, cond)  # {part: (B,) nats}, summing to log p(x)
                    row["parts"] = {name: -v.double().sum().item() for name, v in named.items()}
                    lp = sum(named.values())
                elif bound:
                    seeds = image_seeds(x, cond)  # each image's draws from its content
                    terms = _elbo(model, x, cond, seeds)  # the ELBO, KL in closed form
                    lp = terms["elbo"]
                    row["rate"] = terms["rate"].double().sum().item()
                    if importance:
                        iw = model.log_prob(x, cond, num_samples=num_samples, seeds=seeds)
                        row["nats_iw"] = -iw.double().sum().item()
                        row["non_finite"] += int((~torch.isfinite(iw)).sum())
                else:
                    lp = model.log_prob(x, cond)  # (B,) nats
            row["nats"] = -lp.double().sum().item()
            row["images"] = len(x)
            row["non_finite"] += int((~torch.isfinite(lp)).sum())
            rows.append(row)
            done["nats"] += row["nats"]
            done["images"] += len(x)
            bar.advance(len(x), bpd=done["nats"] / (done["images"] * dims_ln2))
    rows = [row for share in distributed.gather_objects(rows) for row in share]  # every chunk, in order

    def total(values) -> float:
        """The exactly rounded sum (the same whatever the order or grouping of the chunks); where a value is not
        finite, the plain sum (NaN or inf, which the check below reports)."""
        values = list(values)
        return math.fsum(values) if all(map(math.isfinite, values)) else sum(values)

    sums = {k: total(row[k] for row in rows) for k in ("nats", "images", "non_finite", "nats_iw", "rate")}
    recon = {k: total(row.get(k, 0.0) for row in rows) for k in ("sq_err_sum", "exact_pixels", "pixels", "sub_pixels")}
    parts = {k: total(row["parts"][k] for row in rows) for k in rows[0]["parts"]}
    per_order = [total(row["per_order"][k] for row in rows) for k in range(K)]
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
