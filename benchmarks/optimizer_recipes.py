"""Optimizer recipes at equal steps: does a model train better with its family's usual settings than with the
shared defaults (tuned for PixelCNN++)?

For each model: `pixelar.training.train` with the same data, steps, batch and seed under each recipe, then
exact test bits/dim of the EMA weights. Recipes (Adam throughout; lr decays by --lr-decay per step):

- pixelcnn_pp: the shared defaults, PixelCNN++'s released settings with a higher lr for short runs:
  lr 2e-3, betas (0.95, 0.9995), no warm-up;
- transformer: the attention papers' Adam (betas (0.9, 0.98), Image Transformer; Sparse Transformer and
  Image GPT warm up linearly), lr 1e-3 with a linear warm-up over the first tenth of the steps;
- transformer_low_lr: the same at lr 5e-4.

    python -m benchmarks.optimizer_recipes --quick
    python -m benchmarks.optimizer_recipes --models image_transformer_dmol,sparse_transformer --steps 400 [--write]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from pixelar.config import TrainConfig
from pixelar.training import train

from .tables import show_progress, write_table

RECIPES = {
    "pixelcnn_pp": dict(lr=2e-3, betas=(0.95, 0.9995), warmup_fraction=0.0),
    "transformer": dict(lr=1e-3, betas=(0.9, 0.98), warmup_fraction=0.1),
    "transformer_low_lr": dict(lr=5e-4, betas=(0.9, 0.98), warmup_fraction=0.1),
}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny models, 20 steps, 100 test images")
    ap.add_argument("--models", default="image_transformer_dmol,sparse_transformer,image_transformer")
    ap.add_argument("--recipes", default=",".join(RECIPES))
    ap.add_argument("--size", default="small")
    ap.add_argument("--dataset", default="fashion_mnist")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--lr-decay", type=float, default=0.9995)
    ap.add_argument("--test-subset", type=int, default=1000)
    ap.add_argument(
        "--write", action="store_true", help="write the table into docs/benchmarks.md (optimizer-recipes block)"
    )
    args = ap.parse_args(argv)
    size, steps, test_subset = ("tiny", 20, 100) if args.quick else (args.size, args.steps, args.test_subset)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            for recipe in args.recipes.split(","):
                r = RECIPES[recipe]
                cfg = TrainConfig(
                    model=model,
                    size=size,
                    dataset=args.dataset,
                    max_steps=steps,
                    batch_size=args.batch_size,
                    lr=r["lr"],
                    betas=r["betas"],
                    lr_decay=args.lr_decay,
                    warmup_steps=round(r["warmup_fraction"] * steps),
                    test_subset=test_subset,
                    sample_n=0,
                    checkpoint_every=10**9,
                )
                t = time.perf_counter()
                out = train(cfg, Path(tmp) / f"{model}-{recipe}", progress=show_progress(), log=lambda *a: None)
                wall = time.perf_counter() - t
                rows.append(
                    f"| `{model}` | {recipe} | {r['lr']:g} | {r['betas'][0]}, {r['betas'][1]} | "
                    f"{cfg.warmup_steps} | {wall / 60:.1f} min | {out['test_bpd']:.3f} |"
                )
                print(rows[-1], flush=True)
    table = "\n".join(
        [
            f"{args.dataset}, `{size}` models, {steps} steps x batch {args.batch_size}, lr decay {args.lr_decay} per "
            f"step, same seed; test bits/dim of the EMA weights on the first {test_subset} test images; "
            f"{torch.get_num_threads()} thread(s).",
            "",
            "| model | recipe | lr | Adam betas | warm-up steps | wall time (train + eval) | test bits/dim |",
            "|---|---|---|---|---|---|---|",
            *rows,
        ]
    )
    print(table)
    if args.write:
        write_table("optimizer-recipes", table)


if __name__ == "__main__":
    main()
