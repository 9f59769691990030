"""Quality at equal steps: no augmentation vs plain augmentation vs Distribution Augmentation (Jun et al.
2020) at equal training steps on a 5,000-image Fashion-MNIST training subset. Needs quiet cores (it trains).

Three `pixelar train` runs with the same model, data, steps, batch and seed:
    none      the model on the images as they are
    plain     --augment TYPES: each image transformed by randomly drawn indices, the model not told which
    distaug   --distaug TYPES: the same draws, the model conditioned on them (one learned embedding per type)
Each row reports the exact test bits/dim of the EMA weights under the identity (the number to compare: for
DistAug it is p(x | aug = identity), the paper's protocol) and the mean bits/dim over the non-identity
settings of `pixelar eval --per-augmentation` (how well the model knows the transformed images; the
unaugmented model has never seen them).

    python -m benchmarks.distaug_quality --quick                 # smoke run: 30 steps, 200 test images
    python -m benchmarks.distaug_quality --steps 3000 --write   # the table (3 runs of ~10 min, 2 cores)

Jun et al. find DistAug helps most where a model overfits (large models, little data); with a small model and
few steps the augmented runs spend capacity on the transformed images and may score worse on the identity.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

from pixelar.augment import Augmenter, parse_transforms
from pixelar.config import TrainConfig
from pixelar.data import load_dataset
from pixelar.evaluation import evaluate, evaluate_per_augmentation
from pixelar.models import load_model
from pixelar.training import train

from .tables import show_progress, write_table


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="30 steps, 200 test images: a smoke run of the whole table")
    ap.add_argument("--model", default="pixelcnn_pp")
    ap.add_argument("--size", default="small")
    ap.add_argument("--types", default="rot90,transpose", help="transformation types (comma-separated)")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch-size", type=int, default=None, help="default: TrainConfig's")
    ap.add_argument("--dataset", default="fashion_mnist")
    ap.add_argument("--train-subset", type=int, default=5000)
    ap.add_argument(
        "--test-subset", type=int, default=None, help="identity bpd on the first N test images (default all)"
    )
    ap.add_argument(
        "--aug-test-subset",
        type=int,
        default=1000,
        help="test images for the per-transformation bits/dim (one pass per setting)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--write", action="store_true", help="write the table into docs/benchmarks.md")
    args = ap.parse_args()
    steps = 30 if args.quick else args.steps
    test_subset = 200 if args.quick and args.test_subset is None else args.test_subset
    aug_subset = 100 if args.quick else args.aug_test_subset
    types = [t.strip() for t in args.types.split(",") if t.strip()]
    base = TrainConfig(
        model=args.model,
        size=args.size,
        dataset=args.dataset,
        max_steps=steps,
        seed=args.seed,
        train_subset=args.train_subset,
        test_subset=test_subset,
        sample_n=0,
    )
    if args.batch_size:
        base = dataclasses.replace(base, batch_size=args.batch_size)
    test = load_dataset(args.dataset, "test")
    augmenter = Augmenter(parse_transforms(test.spec, types))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, kw in (("none", {}), ("plain augmentation", {"augment": types}), ("DistAug", {"distaug": types})):
            run_dir = Path(tmp) / label.split()[0]
            t = time.perf_counter()
            train(dataclasses.replace(base, **kw), run_dir, progress=show_progress(), log=lambda *a: None)
            wall = time.perf_counter() - t
            model = load_model(run_dir)
            ident = evaluate(model, test, batch_size=100, subset=test_subset)["bpd"]
            per = evaluate_per_augmentation(
                model, test, None if kw.get("distaug") else augmenter, batch_size=100, subset=aug_subset
            )
            others = [r["bpd"] for r in per if r["type"] != "identity"]
            rows.append(
                f"| {label} | {','.join(types) if kw else '-'} | {model.num_parameters() / 1e6:.2f}M | {steps} | "
                f"{wall / 60:.1f} min | **{ident:.3f}** | {sum(others) / len(others):.3f} |"
            )
            print(rows[-1], flush=True)
    n_test = test_subset or "all 10,000"
    table = "\n".join(
        [
            f"| training ({args.model} {args.size}, {args.train_subset:,} {args.dataset} images, "
            f"batch {base.batch_size}) "
            f"| types | params | steps | wall time (train + eval) | test bits/dim, identity ({n_test} images) "
            f"| mean over the {len(others)} transformed settings ({aug_subset} images) |",
            "|---|---|---|---|---|---|---|",
            *rows,
        ]
    )
    print(table)
    if args.write:
        write_table("distaug", table)


if __name__ == "__main__":
    main()
