"""Test bits/dim of PixelCNN++, PixelSNAIL, Image Transformer and Sparse Transformer (`small` sizes) on the
same colour data with the same training budget, side by side.

Data: `../shared/data/cifar10-jpeg.npz` (CIFAR-10 re-encoded as JPEG; bpd NOT comparable with published
CIFAR-10 numbers), decoded with its `unpack_cifar10_jpeg.py`, shuffled once with seed 0 (the file is ordered
by class) and written to a temporary npz with x_train / x_test. Every model: `pixelar.training.train` with
the project defaults (Adam 0.95 / 0.9995, lr 2e-3, EMA), the same seed, batch, steps, and the first
--test-subset shuffled test images; no samples.

    python -m benchmarks.attention_quality --steps 100 --test-subset 500 [--write]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from pixelar import ImageSpec, create_model
from pixelar.config import TrainConfig
from pixelar.training import train

from .tables import show_progress, write_table

MODELS = ("pixelcnn_pp", "pixelsnail", "image_transformer", "image_transformer_dmol", "sparse_transformer")
SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def prepare(shared: Path, out_dir: Path) -> Path:
    subprocess.run(
        [sys.executable, str(shared / "unpack_cifar10_jpeg.py"), str(out_dir)], check=True, capture_output=True
    )
    rng = np.random.default_rng(0)
    arrays = {}
    for split in ("train", "test"):
        with np.load(out_dir / f"cifar10-jpeg-{split}.npz") as f:
            perm = rng.permutation(len(f["x"]))
            arrays[f"x_{split}"], arrays[f"y_{split}"] = f["x"][perm], f["y"][perm]
    path = out_dir / "cifar10-jpeg-shuffled.npz"
    np.savez(path, **arrays)
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--test-subset", type=int, default=500)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--shared-data", default=str(SHARED))
    ap.add_argument(
        "--write", action="store_true", help="write the table into docs/benchmarks.md (attention-quality block)"
    )
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        data = prepare(Path(args.shared_data), Path(d))
        for name in args.models.split(","):
            cfg = TrainConfig(
                model=name,
                size="small",
                dataset=f"npz:{data}",
                batch_size=args.batch_size,
                max_steps=args.steps,
                sample_n=0,
                test_subset=args.test_subset,
                checkpoint_every=10**9,
                log_every=10**9,
            )
            t = time.perf_counter()
            res = train(cfg, f"{d}/run-{name}", progress=show_progress(), log=lambda *a: None)
            wall = time.perf_counter() - t
            params = create_model(name, ImageSpec(3, 32, 32), "small").num_parameters()
            rows.append(
                f"| `{name}` small | {params:,} | {args.steps} x {args.batch_size} | {wall / 60:.1f} min | "
                f"{res['test_bpd']:.3f} |"
            )
            print(rows[-1], flush=True)
    table = "\n".join(
        [
            f"CIFAR-10 (JPEG copy, shuffled), first {args.test_subset} test images; one shared CPU core.",
            "",
            "| model | params | steps x batch | wall time (train + test eval) | test bits/dim |",
            "|---|---|---|---|---|",
            *rows,
        ]
    )
    print(table)
    if args.write:
        write_table("attention-quality", table)


if __name__ == "__main__":
    main()
