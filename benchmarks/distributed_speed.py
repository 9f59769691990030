"""Training throughput of one process against several under torchrun on this machine (the overhead of the
process group and the gradient averaging).

Each row is `torchrun --standalone --nproc_per_node=N -m pixelar train` (PixelCNN++, Fashion-MNIST) at the same
global batch; the threads per process are the machine's cores shared out (`OMP_NUM_THREADS`), so the rows use
the same cores. Images/s is the mean of the run's metrics lines after the first (warm-up) one.

    python -m benchmarks.distributed_speed [--sizes tiny,small --steps 60 --batch-size 16] [--write]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from .tables import write_table


def run(n: int, threads: int, size: str, steps: int, batch: int, tmp: Path) -> float:
    """Images/s of one training run by n processes of `threads` threads each."""
    out = tmp / f"{size}-{n}x{threads}"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}", "-m", "pixelar"]
    cmd += ["train", "--size", size, "--steps", str(steps), "--batch-size", str(batch), "--sample-n", "0"]
    cmd += ["--test-subset", str(max(n, 10)), "--checkpoint-every", str(steps), "--no-progress", "--run-dir", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rates = [r["images_per_s"] for r in lines if "images_per_s" in r][1:]
    return sum(rates) / len(rates)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="tiny,small")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--write", action="store_true", help="write the table into docs/benchmarks.md")
    args = ap.parse_args(argv)
    cores = os.cpu_count() or 1
    setups = [(1, 1), (1, cores)] + [(n, max(1, cores // n)) for n in (2, 4) if n <= cores]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes.split(","):
            base = None
            for n, threads in setups:
                rate = run(n, threads, size, args.steps, args.batch_size, Path(tmp))
                base = base or rate
                rows.append(f"| {size} | {n} | {threads} | {rate:.1f} | {rate / base:.2f}x |")
                print(rows[-1], flush=True)
    text = "\n".join(
        [
            f"`pixelcnn_pp` on Fashion-MNIST, global batch {args.batch_size}, {args.steps} steps per run; "
            f"{platform.machine()}, {cores} cores, torch {torch.__version__}, gloo.",
            "",
            "| size | processes | threads each | images/s | vs 1 process, 1 thread |",
            "|---|---|---|---|---|",
            *rows,
        ]
    )
    print(text)
    if args.write:
        write_table("distributed-speed", text)


if __name__ == "__main__":
    main()
