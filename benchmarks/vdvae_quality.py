"""Short CPU runs of the Very Deep VAE on Fashion-MNIST: its bounds on 500 test images and its sampling speed.

For the tiny and small vdvae: train (batch 16, lr 1e-3 with 20 warm-up steps, the default gradient clipping and
EMA), then on the first 500 test images (EMA weights) report the ELBO (KL in closed form), the single-sample
importance-weighted bound (K=1: the ELBO estimated by Monte Carlo, same expectation), and the K=64 bound, all
in bits/dim (upper bounds of -log2 p(x) per dimension); and the seconds per image of drawing 64 samples (one
decoder pass) beside the small PixelCNN++'s cached sampler in the same process (untrained weights: speed does
not depend on them).

    python -m benchmarks.vdvae_quality [--write] [--steps-tiny N] [--steps-small N]
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time

import torch

import pixelar
from pixelar.config import TrainConfig
from pixelar.data import first_images, load_dataset
from pixelar.evaluation import evaluate
from pixelar.inference import inference
from pixelar.training import train

from .tables import write_table

TEST_IMAGES = 500


def iw_bpd(model, ds, k: int, batch: int = 50) -> float:
    """The K-sample importance-weighted bound in bits/dim over ds (seeded draws)."""
    torch.manual_seed(0)
    nats = 0.0
    with inference(model):
        for i in range(0, len(ds), batch):
            x = ds.images[i : i + batch].long()
            nats -= model.log_prob(x, num_samples=k).double().sum().item()
    return nats / (len(ds) * model.image.dims * math.log(2))


def sampling_seconds(model, n: int = 64, method: str = "auto") -> float:
    g = torch.Generator().manual_seed(0)
    t = time.perf_counter()
    model.sample(n, generator=g, method=model.sampling_method(method))
    return (time.perf_counter() - t) / n


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--write", action="store_true", help="write the table into docs/benchmarks.md")
    p.add_argument("--steps-tiny", type=int, default=600)
    p.add_argument("--steps-small", type=int, default=300)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: steady on a shared machine)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    test = first_images(load_dataset("fashion_mnist", "test"), TEST_IMAGES)
    rows = []
    for size, steps in (("tiny", args.steps_tiny), ("small", args.steps_small)):
        cfg = TrainConfig(
            model="vdvae",
            size=size,
            batch_size=16,
            max_steps=steps,
            lr=1e-3,
            warmup_steps=20,
            test_subset=TEST_IMAGES,
            sample_n=0,
            eval_batch_size=50,
            checkpoint_every=10**6,
        )
        with tempfile.TemporaryDirectory() as run:
            t = time.perf_counter()
            train(cfg, run, progress=False, log=print)
            seconds = time.perf_counter() - t
            model = pixelar.load_model(run)
        res = evaluate(model, test, batch_size=50)
        iw1, iw64 = iw_bpd(model, test, 1), iw_bpd(model, test, 64)
        rows.append(
            f"| vdvae {size} | {model.num_parameters():,} | {steps} | {seconds / 60:.1f} | {res['bpd_elbo']:.3f} "
            f"({res['bpd_distortion']:.3f} + {res['bpd_rate']:.3f}) | {iw1:.3f} | {iw64:.3f} | "
            f"{1000 * sampling_seconds(model):.1f} |"
        )
        print(rows[-1], flush=True)
    pcnn = pixelar.create_model("pixelcnn_pp", test.spec, "small").eval()
    rows.append(
        f"| pixelcnn_pp small (cached sampling, for speed) | {pcnn.num_parameters():,} | | | | | | "
        f"{1000 * sampling_seconds(pcnn):.1f} |"
    )
    table = "\n".join(
        [
            f"Fashion-MNIST, first {TEST_IMAGES} test images, EMA weights; all bounds are upper bounds of bits/dim "
            f"(`python -m benchmarks.vdvae_quality`, {torch.get_num_threads()} threads).",
            "",
            "| model | parameters | steps (batch 16) | training min | ELBO bits/dim (distortion + rate) | "
            "IW K=1 | IW K=64 | ms per sample (64 drawn) |",
            "|---|---|---|---|---|---|---|---|",
            *rows,
        ]
    )
    print(table)
    if args.write:
        write_table("vdvae", table)


if __name__ == "__main__":
    main()
