"""Speed beside a busy core: each job idle and beside a CPU-bound competitor, at the thread count pixelar
chooses and at 1 and 2 fixed.

A laptop runs a browser or an editor beside a training run. The competitor here is one single-threaded
Python process spinning at 100% (`python -c "while True: pass"`), started before a job and stopped after it.
Jobs (the default run's model, pixelcnn_pp small on Fashion-MNIST, and its batch of 16):
- train: `train()` of the default run's settings for --steps steps (images/s over the steps after the
  first, which pays for allocations; the probe, where pixelar chooses, is outside the timed steps and said
  separately);
- eval: `evaluate()` of --eval-images test images (batch 500, the default);
- sample: `model.sample(16)` (cached; 16 images);
- compress: `pixelar.codec.compress` of 16 test images (it codes on one thread whatever the count).
For each job and machine state: images/s with threads=None (pixelar's choice, which is printed), 1 and 2.

    python -m benchmarks.load_speed [--steps 60] [--write]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import pixelar
from pixelar import codec
from pixelar.config import TrainConfig
from pixelar.data import first_images, load_dataset
from pixelar.evaluation import evaluate
from pixelar.threads import num_threads
from pixelar.training import train

from .tables import cpu_model, load_average, write_table


def competitor() -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    time.sleep(1.0)  # let it take its core
    return proc


def train_speed(steps: int, threads: int | None) -> tuple[float, int | None]:
    """(images/s over steps 2..steps, the count the run used) of the default run's settings."""
    cfg = TrainConfig(max_steps=steps, checkpoint_every=10**6, sample_n=0, test_subset=100, log_every=10**6)
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        res = train(
            cfg,
            Path(tmp) / "run",
            progress=False,
            log=lambda m: None,
            on_step=lambda s: times.append(time.perf_counter()),
            threads=threads,
        )
    return (steps - 1) * cfg.batch_size / (times[-1] - times[0]), res["threads"]


def eval_speed(model, ds, threads: int | None) -> float:
    t = time.perf_counter()
    evaluate(model, ds, batch_size=500, threads=threads)
    return len(ds) / (time.perf_counter() - t)


def sample_speed(model, threads: int | None) -> float:
    t = time.perf_counter()
    with torch.no_grad():
        model.sample(16, threads=threads)
    return 16 / (time.perf_counter() - t)


def compress_speed(model, x, threads: int | None) -> float:
    t = time.perf_counter()
    codec.compress(model, x, threads=threads)
    return len(x) / (time.perf_counter() - t)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--eval-images", type=int, default=2000)
    ap.add_argument("--jobs", default="train,eval,sample,compress")
    ap.add_argument("--write", action="store_true", help="write the table into docs/benchmarks.md")
    args = ap.parse_args(argv)
    jobs = args.jobs.split(",")
    model = pixelar.load_model("fashion_mnist-pixelcnn_pp")
    test = load_dataset("fashion_mnist", "test")
    ds = first_images(test, args.eval_images)
    x = torch.as_tensor(first_images(test, 16).images).long()
    load_before = load_average()
    rows = []
    for state in ("idle", "busy"):
        proc = competitor() if state == "busy" else None
        try:
            for job in jobs:
                cells, chosen = [], ""
                for threads in (None, 1, 2):
                    with num_threads(2):  # torch's count on a 2-core machine, whatever the shell set
                        if job == "train":
                            speed, used = train_speed(args.steps, threads)
                            chosen = f"{used}" if threads is None else chosen
                        elif job == "eval":
                            speed = eval_speed(model, ds, threads)
                        elif job == "sample":
                            speed = sample_speed(model, threads)
                        else:
                            speed = compress_speed(model, x, threads)
                    cells.append(speed)
                auto, one, two = cells
                rows.append(
                    f"| {job} | {state} | {auto:.2f}{f' ({chosen})' if chosen else ''} | {one:.2f} | {two:.2f} |"
                )
                print(rows[-1], flush=True)
        finally:
            if proc is not None:
                proc.kill()
                proc.wait()
    idle = {r.split("|")[1].strip(): float(r.split("|")[3].split()[0]) for r in rows if "| idle |" in r}
    busy = {r.split("|")[1].strip(): float(r.split("|")[3].split()[0]) for r in rows if "| busy |" in r}
    ratios = ", ".join(f"{job} {busy[job] / idle[job]:.2f}" for job in jobs if job in idle and job in busy)
    table = "\n".join(
        [
            f"Measured by `python -m benchmarks.load_speed` on {cpu_model()} ({os.cpu_count()} cores), torch "
            f"{torch.__version__}, fp32; load average {load_before} before, {load_average()} after. Busy: one "
            "single-threaded CPU-bound process beside the job. Images/s; train: the default run's settings "
            f"({args.steps} steps, after the first); eval: {len(ds)} test images; sample: 16 images, cached; "
            "compress: 16 images (coded on one thread whatever the count). The pretrained "
            "fashion_mnist-pixelcnn_pp for eval, sample and compress. In brackets: the count the run chose.",
            "",
            "| job | machine | pixelar's choice | 1 thread | 2 threads |",
            "|---|---|---|---|---|",
            *rows,
            "",
            f"Busy over idle at pixelar's choice: {ratios}.",
        ]
    )
    print(table)
    if args.write:
        write_table("load-speed", table)


if __name__ == "__main__":
    main()
