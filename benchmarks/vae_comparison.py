"""The VAEs against PixelCNN++ at equal wall-clock training time: bits/dim (exact, or the bounds), the
importance-weighted bounds, the VQ-VAE's parts, lossless compression and sampling speed, per dataset.

For each dataset, `pixelcnn_pp`, `vdvae` and `vqvae` (one size, `small` by default) are trained by
`pixelar.training.train` with the same time budget (`minutes`: the number of steps is chosen from the speed of
the first steps, pixelar.training.budget), batch size, seed and CPU thread count, one after the other in this
process. Settings otherwise: the project defaults, except the vdvae's lr 1e-3 with 20 warm-up steps (its page's
short-run settings). Then, with the EMA weights the training loop evaluates (the run's model.safetensors):

- on the first --test-images test images: PixelCNN++'s exact bits/dim; the vdvae's ELBO (KL in closed form;
  distortion + rate) and its importance-weighted bounds with K = 1 (the ELBO by Monte Carlo) and K = 64; the
  vqvae's bound (distortion + rate), the mean squared error of `reconstruct` (the decoder's most likely image
  given z(x)) in pixel values 0..255, and the prior's bits per code position, -log2 p(z(x)) / positions;
- the vdvae's K = 1000 bound on the first --iw-images of them, beside its ELBO on the same images;
- `pixelar.codec.compress` of the first --codec-images (each stream decompressed and compared with the images):
  the stream's bits/dim, header included, beside the model's figure on the same images; "not available" where
  the codec refuses the model (NotImplementedError, e.g. a vdvae without bits-back coding);
- seconds per image of drawing --sample-n images in one call: one ancestral pass for the VAEs (the vqvae's
  prior with its cached sampler), the cached sampler for PixelCNN++;
- and, without training, the parameter counts of the `paper` sizes at 3x32x32 beside the papers' figures.

Every VAE figure is an upper bound of the bits/dim (marked "<="). Timings are ratios within one run: the
machine, threads and load average are in the caption.

    python -m benchmarks.vae_comparison [--datasets fashion_mnist,colour] [--minutes 5] [--write]
    python -m benchmarks.vae_comparison --datasets fashion_mnist --minutes 0.2 --test-images 20 \\
        --iw-images 5 --codec-images 4     # a smoke run of a few minutes

Datasets: any pixelar dataset name (`npz:PATH`, `folder:PATH` too); `colour` is `cifar10` where its files are
found (--data-dir, $PIXELAR_DATA, ...; never downloaded here), else `cifar10-jpeg`: the CIFAR-10 JPEG copy in
../shared/data (--shared-data), shuffled once (see attention_quality.py); its bits/dim are NOT comparable with
published CIFAR-10 figures.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from pathlib import Path

import torch

import pixelar
from pixelar.codec import compress, decompress
from pixelar.config import TrainConfig
from pixelar.data import DatasetNotFoundError, first_images, load_dataset
from pixelar.evaluation import evaluate
from pixelar.evaluation.bpd import image_seeds
from pixelar.inference import inference
from pixelar.threads import num_threads
from pixelar.training import train

from .attention_quality import SHARED, prepare
from .pretrained_card import final_metrics
from .tables import cpu_model, load_average, show_progress, write_table

MODELS = ("pixelcnn_pp", "vdvae", "vqvae")
# Each model's settings beside TrainConfig's defaults: the vdvae's short-run settings from docs/vdvae.md
SETTINGS = {"pixelcnn_pp": {}, "vdvae": {"lr": 1e-3, "warmup_steps": 20}, "vqvae": {}}
IW_SAMPLES = (1, 64)  # on the first --test-images
IW_LARGE = 1000  # on the first --iw-images
EVAL_BATCH = 50
# The papers' parameter counts of the `paper` sizes (docs/vdvae.md, docs/vqvae.md, papers.md)
PAPER_PARAMS = {
    "vdvae": "39M (Child 2021, CIFAR-10)",
    "vqvae": "not stated (van den Oord et al. 2017; our prior: gated_pixelcnn small)",
}
NOT_AVAILABLE = "not available"


# ----- data --------------------------------------------------------------------------------------------------
def resolve_dataset(name: str, data_dir, shared: Path, tmp: Path) -> tuple[str, str]:
    """(the dataset as TrainConfig takes it, its label in the table). `colour`: cifar10 where its files are
    at hand, else the CIFAR-10 JPEG copy; `cifar10-jpeg`: that copy, decoded and shuffled into tmp."""
    if name == "colour":
        try:
            load_dataset("cifar10", "test", data_dir=data_dir, download=False)
            return "cifar10", "cifar10"
        except DatasetNotFoundError:
            name = "cifar10-jpeg"
    if name == "cifar10-jpeg":
        if not (shared / "cifar10-jpeg.npz").is_file():
            raise SystemExit(f"no cifar10-jpeg.npz in {shared}: give --shared-data, or a dataset you have")
        return f"npz:{prepare(shared, tmp)}", "CIFAR-10 JPEG copy (shuffled)"
    return name, name


# ----- measurements ------------------------------------------------------------------------------------------
def iw_bpd(model, images: torch.Tensor, k: int, batch: int = EVAL_BATCH) -> float:
    """The K-sample importance-weighted bound, model.log_prob(x, num_samples=k), in bits/dim over images (int64
    (N, C, H, W)), each image's draws seeded by its content as evaluate seeds them. With K = 1 a Monte-Carlo
    estimate of the ELBO (evaluate's bpd_elbo has the KL in closed form)."""
    nats = 0.0
    with inference(model):
        for i in range(0, len(images), batch):
            x = images[i : i + batch]
            nats -= model.log_prob(x, num_samples=k, seeds=image_seeds(x)).double().sum().item()
    return nats / (len(images) * model.image.dims * math.log(2))


def iw_batch(model, k: int) -> int:
    """Images per log_prob call with K samples: so that one pass through the model holds about iw_batch
    images (the model splits K * images into such passes)."""
    return max(1, min(EVAL_BATCH, model.iw_batch // k))


def reconstruction_mse(model, images: torch.Tensor, batch: int = EVAL_BATCH) -> float:
    """Mean squared error, in pixel values, of model.reconstruct(x) (the decoder's most likely image)."""
    sq = 0.0
    for i in range(0, len(images), batch):
        x = images[i : i + batch]
        sq += (model.reconstruct(x) - x).double().pow(2).sum().item()
    return sq / images.numel()


def sampling_seconds(model, n: int, threads: int) -> float:
    """Seconds per image of drawing n images in one call (the model's own method: cached or ancestral), after
    a call of one image that pays for the allocations."""
    g = torch.Generator().manual_seed(0)
    method = model.sampling_method("auto")
    model.sample(1, generator=g, method=method, threads=threads)
    t = time.perf_counter()
    model.sample(n, generator=g, method=method, threads=threads)
    return (time.perf_counter() - t) / n


def codec_bpd(model, images: torch.Tensor, threads: int) -> tuple[float, float, float] | None:
    """(bits/dim of pixelar.codec.compress's stream, header included; bits/dim of images 2..n net of the
    first: the stream of all minus the stream of the first image alone, which leaves out the header and
    bits-back coding's start-up, paid by the first image; seconds per image to compress) for images (n >= 2),
    the stream decompressed and checked; None where the codec refuses the model."""
    t = time.perf_counter()
    try:
        data = compress(model, images, threads=threads)
    except NotImplementedError:
        return None
    seconds = (time.perf_counter() - t) / len(images)
    if not torch.equal(decompress(model, data, threads=threads), images):
        raise RuntimeError(f"{model.name}: decompress did not return the compressed images")
    first = compress(model, images[:1], threads=threads)
    return 8 * len(data) / images.numel(), 8 * (len(data) - len(first)) / images[1:].numel(), seconds


def measure(model, test, args) -> dict:
    """Every figure of one trained model (EMA weights) on the first test images."""
    out = {"parameters": model.num_parameters()}
    x = first_images(test, args.test_images).images.long()
    with num_threads(args.eval_threads):  # untimed: any thread count gives the same figures
        head = evaluate(model, test, EVAL_BATCH, subset=args.test_images)
        codec_ref = evaluate(model, test, EVAL_BATCH, subset=args.codec_images)
        first_ref = evaluate(model, test, EVAL_BATCH, subset=1)
        out["bpd"] = head["bpd"]
        out["codec_ref"] = codec_ref["bpd"]
        n = args.codec_images  # the model's figure on images 2..n
        out["codec_ref_rest"] = (n * codec_ref["bpd"] - first_ref["bpd"]) / (n - 1)
        if model.likelihood == "bound":
            out.update(distortion=head["bpd_distortion"], rate=head["bpd_rate"])
        if model.likelihood == "bound" and model.stochastic_posterior:
            for k in IW_SAMPLES:
                out[f"iw{k}"] = iw_bpd(model, x, k, iw_batch(model, k))
            big = evaluate(model, test, iw_batch(model, IW_LARGE), subset=args.iw_images, num_samples=IW_LARGE)
            out.update(iw_large=big["bpd_iw"], iw_large_elbo=big["bpd_elbo"])
        if hasattr(model, "code_shapes"):  # the VQ-VAE: its reconstruction and its prior's code length
            out["mse"] = reconstruction_mse(model, x)
            positions = sum(h * w for h, w in model.code_shapes)
            out["bits_per_code"] = head["bpd_rate"] * model.image.dims / positions
    out["codec"] = codec_bpd(model, first_images(test, args.codec_images).images.long(), args.threads)
    out["sample_s"] = sampling_seconds(model, args.sample_n, args.threads)
    return out


def train_and_measure(name: str, dataset: str, args, run_dir: Path) -> dict:
    cfg = TrainConfig(
        model=name,
        size=args.size,
        dataset=dataset,
        data_dir=args.data_dir,
        batch_size=args.batch_size,
        minutes=args.minutes,
        seed=args.seed,
        test_subset=args.test_images,
        eval_batch_size=EVAL_BATCH,
        sample_n=0,
        checkpoint_every=10**9,
        device="cpu",  # the caption's machine and threads, also where a GPU is at hand
        **SETTINGS[name],
    )
    train(cfg, run_dir, progress=show_progress(), log=lambda *a: None)
    final = final_metrics(run_dir)
    model = pixelar.load_model(run_dir)  # the EMA weights the loop evaluated
    test = load_dataset(dataset, "test", data_dir=args.data_dir)
    res = measure(model, test, args)
    if model.likelihood == "exact" or not model.stochastic_posterior:  # deterministic: the loop's figure again
        if abs(res["bpd"] - final["test_bpd"]) > 1e-4:
            raise RuntimeError(f"{name}: {res['bpd']} bits/dim here, {final['test_bpd']} in the training loop")
    res.update(steps=final["step"], train_s=final["train_s"], likelihood=model.likelihood)
    return res


# ----- the table ---------------------------------------------------------------------------------------------
def _f(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def row(label: str, name: str, size: str, r: dict, args) -> str:
    le = "<= " if r["likelihood"] == "bound" else ""
    parts = f"{r['distortion']:.3f} + {r['rate']:.3f}" if "distortion" in r else "-"
    large = f"<= {r['iw_large']:.3f} (ELBO {r['iw_large_elbo']:.3f})" if "iw_large" in r else "-"
    mse = f"{r['mse']:.0f} (RMSE {math.sqrt(r['mse']):.1f})" if "mse" in r else "-"
    if r["codec"] is None:
        codec = NOT_AVAILABLE
    else:
        codec = (
            f"{r['codec'][0]:.3f} ({le}{r['codec_ref']:.3f}); images 2..n: {r['codec'][1]:.3f} "
            f"({le}{r['codec_ref_rest']:.3f}); {1000 * r['codec'][2]:.0f} ms/image"
        )
    return (
        f"| {label}: `{name}` {size} | {r['parameters']:,} | {r['steps']} ({r['train_s']:.0f} s) | "
        f"{le}{r['bpd']:.3f} | {parts} | "
        + " | ".join(f"<= {r[f'iw{k}']:.3f}" if f"iw{k}" in r else "-" for k in IW_SAMPLES)
        + f" | {large} | {mse} | {_f(r.get('bits_per_code'))} | {codec} | {1000 * r['sample_s']:.1f} |"
    )


def paper_table() -> str:
    spec = pixelar.ImageSpec(3, 32, 32)
    rows = []
    for name, paper in PAPER_PARAMS.items():
        with torch.device("meta"):  # counted without allocating the weights
            n = pixelar.create_model(name, spec, "paper").num_parameters()
        rows.append(f"| `{name}` paper | {n:,} | {paper} |")
    return "\n".join(
        ["| model at 3x32x32 | parameters (pixelar) | the paper's |", "|---|---|---|", *rows]  # table
    )


def table(rows: list[str], args, datasets: list[str], load_before: str, minutes_all: float) -> str:
    k = ", ".join(f"K={k}" for k in IW_SAMPLES)
    caption = (
        f"{', '.join(datasets)}; `{args.size}` models, each trained for a budget of {args.minutes:g} min "
        f"(steps chosen from the speed of the first steps; the training seconds beside them), batch "
        f"{args.batch_size}, seed {args.seed}, {args.threads} thread(s) for training, sampling and coding "
        f"({args.eval_threads} for the bounds); {cpu_model()} ({os.cpu_count()} cores), torch "
        f"{torch.__version__}; load average {load_before} before, {load_average()} after "
        f"({minutes_all:.0f} min in all). EMA weights. Bits/dim on the first {args.test_images} test images "
        f"(<=: an upper bound); IW {k} on the same images, K={IW_LARGE} on the first {args.iw_images}; the codec "
        f"on the first {args.codec_images} (stream bits/dim, the model's figure on the same images in brackets; "
        f"then images 2..n net of the first: the stream minus the first image's own stream, which leaves out "
        f"the header and bits-back coding's start-up); "
        f"sampling: {args.sample_n} images in one call."
    )
    head = (
        "| data: model | parameters | steps (training s) | bits/dim | distortion + rate | "
        + " | ".join(f"IW K={k}" for k in IW_SAMPLES)
        + f" | IW K={IW_LARGE} (ELBO), first {args.iw_images} | reconstruction MSE, 0..255 | prior bits/code | "
        "codec bits/dim (model's) | ms per sample |"
    )
    return "\n".join([caption, "", head, "|" + "---|" * (head.count("|") - 1), *rows, "", paper_table()])


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="fashion_mnist,colour", help="comma-separated (see above)")
    ap.add_argument("--data-dir", help="where the datasets' files are")
    ap.add_argument("--shared-data", default=str(SHARED), help="the folder of cifar10-jpeg.npz")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--size", default="small")
    ap.add_argument("--minutes", type=float, default=5.0, help="each model's training budget")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads for training, sampling and coding")
    ap.add_argument("--eval-threads", type=int, help="threads for the (untimed) bounds (default: --threads)")
    ap.add_argument("--test-images", type=int, default=500)
    ap.add_argument("--iw-images", type=int, default=100, help=f"images of the K={IW_LARGE} bound")
    ap.add_argument("--codec-images", type=int, default=50)
    ap.add_argument("--sample-n", type=int, default=16, help="images drawn for the sampling time")
    ap.add_argument("--write", action="store_true", help="write the table into docs/benchmarks.md")
    args = ap.parse_args(argv)
    args.eval_threads = args.eval_threads or args.threads
    if not 1 <= args.iw_images <= args.test_images or not 2 <= args.codec_images <= args.test_images:
        ap.error("--iw-images must be between 1 and --test-images, --codec-images between 2 and it")
    return args


def main(argv=None) -> str:
    args = parse_args(argv)
    load_before, t0 = load_average(), time.perf_counter()
    rows, labels = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.datasets.split(","):
            dataset, label = resolve_dataset(name, args.data_dir, Path(args.shared_data), Path(tmp))
            labels.append(label)
            for model in args.models.split(","):
                torch.set_num_threads(args.threads)
                res = train_and_measure(model, dataset, args, Path(tmp) / f"{len(rows)}-{model}")
                rows.append(row(label, model, args.size, res, args))
                print(rows[-1], flush=True)
    text = table(rows, args, labels, load_before, (time.perf_counter() - t0) / 60)
    print(text)
    if args.write:
        write_table("vae-comparison", text)
    return text


if __name__ == "__main__":
    main()
