"""Sampling throughput of PixelCNN++: naive (one full forward pass per pixel) vs cached (pixelar.nn.cache).

For each configuration: images/s of both samplers and the speedup. Both samplers do the same work per step
as `model.sample` (parameters of the pixel, `dist.sample`, write the pixel); random weights (speed does not
depend on them).

- cached: `begin_cache` (compile) plus every step of the image, measured; with --cached-rows N only the
  first N rows are measured and the image time is extrapolated (rows cost about the same).
- naive: the first --naive-steps steps are measured and extrapolated to all H*W steps (a full pass costs the
  same at every step); the table says "extrapolated from k steps".

fp32 and bf16 (torch.autocast on CPU, where it works) precisions. Every configuration is measured at 1 and
2 threads and at the default, the count `model.sample` chooses (pixelar.threads: one thread for small steps,
torch's setting for large ones), each in a fresh process; the speed-up column compares cached with naive
sampling at the default. Prints a Markdown table.

    python -m benchmarks.sampling_speed --quick      # < 2 minutes: small (+ paper, 28x28x1, batch 1), few steps
    python -m benchmarks.sampling_speed              # small and paper, full cached images
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time

import torch
from tqdm import tqdm

import pixelar
from pixelar import ImageSpec
from pixelar.threads import step_work, threads_for

from .tables import load_average, progress, write_table

IMAGES = {"28x28x1": ImageSpec(1, 28, 28, 256), "32x32x3": ImageSpec(3, 32, 32, 256)}


def autocast(precision: str):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")


@torch.no_grad()
def naive_step_time(model, x, steps: int, precision: str) -> float:
    """Seconds per step of the naive sampler (a joint distribution: one step per pixel), over `steps` steps."""
    dist, W, g = model.distribution, model.image.width, torch.Generator().manual_seed(0)
    with autocast(precision):
        model(x)  # warm-up
        t = time.perf_counter()
        for p in range(steps):
            i, j = divmod(p, W)
            x[:, :, i, j] = dist.sample(model(x)[:, :, i, j], 1.0, g)
        return (time.perf_counter() - t) / steps


@torch.no_grad()
def cached_image_time(model, x, rows: int, precision: str) -> tuple[float, float, int]:
    """(seconds per image batch, extrapolated from `rows` rows' worth of pixels plus compile; compile seconds; cache
    bytes). The pixels are taken in the model's generation order (raster for most; LMConv's cache refuses any other
    order than its own)."""
    dist, (C, H, W), g = model.distribution, model.image.shape, torch.Generator().manual_seed(0)
    pixels = (model.generation_order()[::C] % (H * W))[: rows * W].tolist()  # a pixel's channels are listed together
    with autocast(precision):
        t = time.perf_counter()
        state = model.begin_cache(x)
        compile_s = time.perf_counter() - t
        t = time.perf_counter()
        for p in pixels:
            i, j = divmod(p, W)
            x[:, :, i, j] = dist.sample(state.params_at(i, j), 1.0, g)
        rows_s = time.perf_counter() - t
    return compile_s + rows_s * H / rows, compile_s, state.memory_bytes()


def bf16_works(model, image) -> bool:
    try:
        with torch.no_grad(), autocast("bf16"):
            x = torch.zeros(1, *image.shape, dtype=torch.long)
            model(x)
            model.begin_cache(x).params_at(0, 0)
        return True
    except Exception as e:  # noqa: BLE001 - report and skip
        print(f"bf16 autocast unavailable: {type(e).__name__}: {e}")
        return False


def run_one(spec: dict) -> dict:
    """One configuration in this (fresh) process, so its peak resident memory is its own. threads: a count for
    both samplers, or "default": each sampler on the count model.sample chooses for it."""
    if spec["threads"] != "default":
        torch.set_num_threads(int(spec["threads"]))
    image = IMAGES[spec["image"]]
    torch.manual_seed(0)
    model = pixelar.create_model("pixelcnn_pp", image, spec["size"]).eval()
    precision = spec["precision"]
    if precision == "bf16" and not bf16_works(model, image):
        return {"skipped": "bf16 autocast unavailable"}
    C, H, W = image.shape
    x = torch.zeros(spec["batch"], *image.shape, dtype=torch.long)
    chosen = None if spec["threads"] == "default" else int(spec["threads"])
    with threads_for(chosen, step_work(model, spec["batch"], incremental=False)) as naive_threads:
        naive_s = naive_step_time(model, x.clone(), spec["naive_steps"], precision) * H * W
    with threads_for(chosen, step_work(model, spec["batch"], incremental=True)) as cached_threads:
        cached_s, compile_s, mem = cached_image_time(model, x.clone(), min(H, spec["rows"]), precision)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    return dict(
        naive_s=naive_s,
        cached_s=cached_s,
        compile_s=compile_s,
        cache_bytes=mem,
        peak_bytes=peak,
        naive_threads=naive_threads,
        cached_threads=cached_threads,
    )


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="few steps and rows; under 2 minutes on 2 CPU cores")
    ap.add_argument("--sizes", default=None, help="comma-separated model sizes (default small,paper)")
    ap.add_argument("--images", default="28x28x1,32x32x3")
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--naive-steps", type=int, default=None, help="naive steps measured (default 2 quick, 16)")
    ap.add_argument("--cached-rows", type=int, default=None, help="cached rows measured (default 1 quick, all)")
    ap.add_argument("--paper-naive-steps", type=int, default=4, help="naive steps measured for the paper size")
    ap.add_argument("--paper-cached-rows", type=int, default=4, help="cached rows measured for the paper size")
    ap.add_argument(
        "--thread-counts",
        default="1,2,default",
        help="thread settings measured: counts, and 'default' (what model.sample chooses); the last is the "
        "speed-up column's",
    )
    ap.add_argument("--write", action="store_true", help="write the table into docs/benchmarks.md")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: one configuration as JSON
    args = ap.parse_args(argv)
    if args.one:
        print("RESULT " + json.dumps(run_one(json.loads(args.one))), flush=True)
        return
    sizes = (args.sizes or "small,paper").split(",")
    batches = [int(b) for b in args.batches.split(",")]
    settings = args.thread_counts.split(",")
    configs = []
    for size in sizes:
        for image_name in args.images.split(","):
            H = IMAGES[image_name].height
            for batch in batches:
                if args.quick and size == "paper" and (batch > 1 or image_name != "28x28x1"):
                    continue  # quick: the paper model at batch 1 on 28x28x1 only (its naive pass is slow)
                for precision in args.precisions.split(","):
                    if args.quick and size == "paper" and precision != "fp32":
                        continue
                    paper = size == "paper"
                    naive_steps = (args.paper_naive_steps if paper else args.naive_steps) or (2 if args.quick else 16)
                    rows = min(H, (args.paper_cached_rows if paper else args.cached_rows) or (1 if args.quick else H))
                    configs.append(
                        dict(
                            size=size,
                            image=image_name,
                            batch=batch,
                            precision=precision,
                            naive_steps=naive_steps,
                            rows=rows,
                        )
                    )
    rows_md = []
    load_before, t0 = load_average(), time.perf_counter()
    for one in progress(configs):
        res = {}
        for threads in settings:  # each in a fresh process: its own thread pool and peak memory
            res[threads] = measure({**one, "threads": threads})
            if res[threads] is None:
                break
        if any(r is None for r in res.values()) or any("skipped" in r for r in res.values()):
            continue
        rows_md.append(_row(one, res, settings))
        tqdm.write(rows_md[-1])
    table = "\n".join(
        [
            f"PixelCNN++ sampling, {platform.processor() or platform.machine()}, torch {torch.__version__}; naive "
            "and cached img/s at 1 thread, 2 threads and the default (the count model.sample chooses for the "
            "step's work, docs/sampling.md#threads; the last column says which), each setting in a fresh process;"
            f" the speed-up is cached over naive at {settings[-1]} threads; extrapolated where the "
            f"last column says; load average {load_before} before, {load_average()} after "
            f"({time.perf_counter() - t0:.0f} s in all). Peak memory: the process measuring the last setting.",
            "",
            f"| size | image | batch | precision | naive img/s ({' / '.join(settings)}) | cached img/s "
            f"({' / '.join(settings)}) | speed-up | cache memory | peak memory | measured |",
            "|---|---|---|---|---|---|---|---|---|---|",
            *rows_md,
        ]
    )
    print()
    print(table)
    if args.write:
        write_table("sampling-speed", table)


def measure(one: dict) -> dict | None:
    """run_one in a fresh process: its result, or None (the failure printed)."""
    proc = subprocess.run(
        [sys.executable, "-m", __spec__.name, "--one", json.dumps(one)], capture_output=True, text=True
    )
    line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
    if line is None:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        tqdm.write(f"{one['size']} {one['image']} {one['batch']} {one['precision']} {one['threads']}: failed ({last})")
        return None
    r = json.loads(line[len("RESULT ") :])
    if "skipped" in r:
        tqdm.write(f"{one['size']} {one['image']} {one['precision']}: skipped ({r['skipped']})")
    return r


def _row(one: dict, res: dict, settings: list[str]) -> str:
    H, W = IMAGES[one["image"]].shape[1:]
    batch, rows, last = one["batch"], one["rows"], res[settings[-1]]
    how = f"cached: {rows}/{H} rows + cache set-up ({last['compile_s']:.2f} s)" if rows < H else "cached: whole image"
    default = res.get("default")
    chosen = (
        f"; default: naive {default['naive_threads']} thread(s), cached {default['cached_threads']}" if default else ""
    )
    naive = " / ".join(f"{batch / res[t]['naive_s']:.3g}" for t in settings)
    cached = " / ".join(f"{batch / res[t]['cached_s']:.3g}" for t in settings)
    return (
        f"| {one['size']} | {one['image']} | {batch} | {one['precision']} | {naive} | {cached} | "
        f"{last['naive_s'] / last['cached_s']:.1f}x | {last['cache_bytes'] / 2**20:.1f} MiB | "
        f"{last['peak_bytes'] / 2**30:.2f} GiB | naive: {one['naive_steps']}/{H * W} steps; {how}{chosen} |"
    )


if __name__ == "__main__":
    main()
