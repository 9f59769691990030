"""How the time of one generation step depends on the thread count, for steps of growing work: the measurement
behind pixelar.threads (one thread below STEP_WORK_THRESHOLD, torch's setting above).

PixelCNN++ small on 32x32x3 images, random weights. A step is what the samplers do per pixel: the pixel's
parameters (the incremental forward of cached sampling, or a full forward pass of naive sampling) and the
draw. Its work is pixelar.threads.step_work: images x parameters x positions computed (1 cached, H*W naive).
For each configuration the thread counts take turns (1, 2, 1, 2, ...) in one process, each turn timing
`--steps` steps, and the best turn of each count is kept, so that load from other processes, which comes and
goes, biases neither count.

    python -m benchmarks.sampling_threads            # about 3 minutes on 2 cores
    python -m benchmarks.sampling_threads --write    # the table into docs/benchmarks.md and docs/sampling.md
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch
from tqdm import tqdm

import pixelar
from pixelar import ImageSpec
from pixelar.threads import STEP_WORK_THRESHOLD, auto_threads, step_work

from .tables import PAGE, load_average, progress, write_table

IMAGE = ImageSpec(3, 32, 32, 256)
CONFIGS = [("cached", b) for b in (1, 16, 64, 256, 1024)] + [("naive", b) for b in (1, 4, 16)]


@torch.no_grad()
def step_seconds(model, method: str, batch: int, steps: int) -> float:
    """Seconds per generation step over `steps` steps from a fresh image (steps cost the same at every pixel)."""
    dist, W, g = model.distribution, IMAGE.width, torch.Generator().manual_seed(0)
    x = torch.zeros(batch, *IMAGE.shape, dtype=torch.long)
    params_at = model.begin_cache(x).params_at if method == "cached" else (lambda i, j: model(x)[:, :, i, j])
    params_at(0, 0)  # warm-up
    t = time.perf_counter()
    for p in range(steps):
        i, j = divmod(p, W)
        x[:, :, i, j] = dist.sample(params_at(i, j), 1.0, g)
    return (time.perf_counter() - t) / steps


def measure(model, method: str, batch: int, counts: list[int], turns: int, steps: int) -> dict[int, float]:
    """{threads: best seconds per step over `turns` alternating turns}."""
    best = {c: float("inf") for c in counts}
    before = torch.get_num_threads()
    try:
        for _ in range(turns):
            for c in counts:
                torch.set_num_threads(c)
                best[c] = min(best[c], step_seconds(model, method, batch, steps))
    finally:
        torch.set_num_threads(before)
    return best


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--turns", type=int, default=3, help="alternating turns per thread count (best is kept)")
    ap.add_argument("--cached-steps", type=int, default=64, help="steps timed per turn, cached")
    ap.add_argument("--naive-steps", type=int, default=4, help="steps timed per turn, naive")
    ap.add_argument("--write", action="store_true", help="write the table into docs/benchmarks.md and sampling.md")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    model = pixelar.create_model("pixelcnn_pp", IMAGE, "small").eval()
    counts = [1, 2]
    load_before, t0 = load_average(), time.perf_counter()
    rows = []
    for method, batch in progress(CONFIGS):
        steps = args.cached_steps if method == "cached" else args.naive_steps
        s = measure(model, method, batch, counts, args.turns, steps)
        work = step_work(model, batch, incremental=method == "cached")
        chosen = auto_threads(work) or "default"
        faster = min(s, key=s.get)
        rows.append(
            f"| {method} | {batch} | {work:.2g} | {1e3 * s[1]:.2f} | {1e3 * s[2]:.2f} | {s[1] / s[2]:.2f} | "
            f"{faster} | {chosen} |"
        )
        tqdm.write(rows[-1])
    table = "\n".join(
        [
            f"PixelCNN++ small, 32x32x3, random weights; {platform.processor() or platform.machine()}, "
            f"{os.cpu_count()} cores, torch {torch.__version__}; best of {args.turns} alternating turns of "
            f"{args.cached_steps} cached / {args.naive_steps} naive steps; load average {load_before} before, "
            f"{load_average()} after ({time.perf_counter() - t0:.0f} s in all). Work: images x parameters x positions "
            f"per step; pixelar.threads chooses 1 thread below {STEP_WORK_THRESHOLD:.2g}.",
            "",
            "| sampler | images | work per step | ms/step, 1 thread | ms/step, 2 threads | 1 thread / 2 threads "
            "| faster | chosen |",
            "|---|---|---|---|---|---|---|---|",
            *rows,
        ]
    )
    print()
    print(table)
    if args.write:
        write_table("sampling-threads", table)
        write_table("sampling-threads", table, PAGE.parent / "sampling.md")


if __name__ == "__main__":
    main()
