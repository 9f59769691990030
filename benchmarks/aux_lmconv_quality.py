"""Quality at equal steps: PixelCNN++ vs LMConv with 1 and 8 orders at equal training steps, plus an
inpainting picture of a centre hole. Needs quiet cores (it trains; wall times depend on the machine).

For each model: `pixelar train` with the same data, steps, batch and seed, then exact test bits/dim of the EMA
weights. For LMConv with K orders the table shows the mixture over the K orders (the model's likelihood)
and the single-order bpd beside it (order 0, the base S-curve). Finally the 8-order LMConv completes the
centre hole of a few test images (`centre_hole.png`: original, kept pixels, completions) and prints the
hidden region's conditional bits/dim.

    python -m benchmarks.aux_lmconv_quality --quick            # ~minutes: 50 steps, 500 test images
    python -m benchmarks.aux_lmconv_quality --steps 1000 --test-subset 2000 [--write]
    python -m benchmarks.aux_lmconv_quality --dataset cifar10-jpeg --steps 500 --test-subset 500 [--write]

`--dataset cifar10-jpeg` is the colour data in ../shared/data (CIFAR-10 re-encoded as JPEG, shuffled once;
bits/dim NOT comparable with published CIFAR-10 numbers), prepared as in attention_quality.py. The
docs/benchmarks.md block is `aux-lmconv` for Fashion-MNIST and `aux-lmconv-colour` for the colour data.

Rows for the grayscale and pyramid PixelCNN (Kolesnikov & Lampert) are added automatically once models named
`grayscale_pixelcnn` / `pyramid_pixelcnn` are registered. For models with auxiliary variables the "parts"
column splits the bits/dim (grayscale: grey image + image given grey; pyramid: each level's new pixels), and
for every model the time to draw --sample-n images is measured (the cached sampler where the model
has one, else the naive one; one thread per process is not forced, so run on quiet cores).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import tempfile
import time
from pathlib import Path

import torch

import pixelar
from pixelar.config import TrainConfig
from pixelar.data import iterate_batches, load_dataset
from pixelar.evaluation import evaluate
from pixelar.image_files import save_grid
from pixelar.models import load_model
from pixelar.sampling.complete import complete
from pixelar.training import train

from .attention_quality import SHARED, prepare
from .tables import show_progress, write_table


def runs(available: list[str]) -> list[tuple[str, dict]]:
    rows = [("pixelcnn_pp", {}), ("lmconv", {"num_orders": 1}), ("lmconv", {"num_orders": 8})]
    rows += [(name, {}) for name in ("grayscale_pixelcnn", "pyramid_pixelcnn") if name in available]
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="50 steps, 500 test images: a smoke run of the whole table")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--dataset", default="fashion_mnist")
    ap.add_argument("--size", default="small")
    ap.add_argument("--test-subset", type=int, default=None)
    ap.add_argument(
        "--sample-n", type=int, default=None, help="images drawn for the sampling time (default 16; 4 with --quick)"
    )
    ap.add_argument("--out", default="benchmarks/out", help="where centre_hole.png goes")
    ap.add_argument("--write", action="store_true", help="write the table into docs/benchmarks.md")
    args = ap.parse_args()
    steps = 50 if args.quick else args.steps
    test_subset = 500 if args.quick and args.test_subset is None else args.test_subset
    sample_n = args.sample_n or (4 if args.quick else 16)
    tmp = tempfile.TemporaryDirectory()
    dataset = args.dataset
    if dataset == "cifar10-jpeg":
        dataset = f"npz:{prepare(SHARED, Path(tmp.name))}"
    base = TrainConfig(
        dataset=dataset,
        size=args.size,
        max_steps=steps,
        test_subset=test_subset,
        sample_n=0,
        checkpoint_every=10**9,
        log_every=10**9,
    )
    rows, lmconv8 = [], None
    for name, overrides in runs(pixelar.list_models()):
        cfg = dataclasses.replace(base, model=name, model_overrides=overrides)
        run_dir = Path(tmp.name) / f"{name}-{len(rows)}"
        t = time.perf_counter()
        train(cfg, run_dir, progress=show_progress(), log=lambda *a: None)
        wall = time.perf_counter() - t
        model = load_model(run_dir)
        test = load_dataset(dataset, "test")
        res = evaluate(model, test, batch_size=100, subset=test_subset)
        single = f"{res['bpd_single_order']:.3f}" if "num_orders" in res else "-"
        label = f"{name} {args.size}" + (f", {overrides['num_orders']} order(s)" if "num_orders" in overrides else "")
        parts = " + ".join(f"{k} {v:.3f}" for k, v in res["bpd_parts"].items()) if "bpd_parts" in res else "-"
        sampling = sampling_time(model, sample_n)
        rows.append(
            f"| {label} | {model.num_parameters() / 1e6:.2f}M | {steps} | {wall / 60:.1f} min | "
            f"{res['bpd']:.3f} | {single} | {parts} | {sampling} |"
        )
        print(rows[-1], flush=True)
        if name == "lmconv" and overrides.get("num_orders") == 8:
            lmconv8 = model
    n_test = test_subset or "all"
    table = "\n".join(
        [
            f"{args.dataset}, {steps} steps x batch {base.batch_size}, same seed; one CPU core per run.",
            "",
            f"| model | params | steps | wall time (train + eval) | test bits/dim ({n_test} images) "
            f"| single order | parts (bits/dim) | sampling {sample_n} images |",
            "|---|---|---|---|---|---|---|---|",
            *rows,
        ]
    )
    print(table)
    if lmconv8 is not None:
        inpaint(lmconv8, dataset, Path(args.out))
    if args.write:
        write_table("aux-lmconv" if args.dataset == "fashion_mnist" else "aux-lmconv-colour", table)
    tmp.cleanup()


def sampling_time(model, n: int) -> str:
    """Wall time of drawing n images: the cached sampler where the model has one, else the naive reference."""
    for method in ("cached", "naive"):
        t = time.perf_counter()
        try:
            model.sample(n, cond=None, generator=torch.Generator().manual_seed(0), method=method)
        except NotImplementedError:
            continue
        return f"{time.perf_counter() - t:.1f} s ({method})"
    return "-"


def inpaint(model, dataset: str, out: Path, n_images: int = 4, n: int = 4) -> None:
    """Complete the centre hole (half the height and width) of the first test images with the 8-order LMConv."""
    spec = model.image
    keep = torch.ones(spec.height, spec.width, dtype=torch.bool)
    keep[spec.height // 4 : 3 * spec.height // 4, spec.width // 4 : 3 * spec.width // 4] = False
    x_all, _ = next(
        iterate_batches(
            load_dataset(dataset, "test"), n_images, shuffle=False, generator=torch.Generator().manual_seed(0)
        )
    )  # (n_images, C, H, W) model values
    tiles = []
    g = torch.Generator().manual_seed(0)
    hidden_dims = int((~keep).sum()) * spec.channels
    bits = []
    for k in range(n_images):
        x = x_all[k]
        with torch.no_grad():
            bits.append(-model.conditional_log_prob(x[None], keep).item() / (hidden_dims * math.log(2)))
        tiles += [x[None], (x * keep)[None], complete(model, x, keep, n=n, generator=g, method="naive")]
    out.mkdir(parents=True, exist_ok=True)
    save_grid(torch.cat(tiles), spec, out / "centre_hole.png", nrow=n + 2)
    print(
        f"centre hole: conditional bits/dim of the hidden region {sum(bits) / len(bits):.3f} "
        f"(mean over {n_images} test images); picture: {out / 'centre_hole.png'}"
    )


if __name__ == "__main__":
    main()
