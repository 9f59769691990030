"""Sampling throughput of PixelCNN++: naive (one full forward pass per pixel) vs cached (pixelar.nn.cache).

For each configuration: images/s of both samplers and the speedup. Both samplers do the same work per step
as `model.sample` (parameters of the pixel, `dist.sample`, write the pixel); random weights (speed does not
depend on them).

- cached: `begin_cache` (compile) plus every step of the image, measured; with --cached-rows N only the
  first N rows are measured and the image time is extrapolated (rows cost about the same).
- naive: the first --naive-steps steps are measured and extrapolated to all H*W steps (a full pass costs the
  same at every step); the table says "extrapolated from k steps".

fp32 and bf16 (torch.autocast on CPU, where it works) precisions. Prints a Markdown table.

    python benchmarks/sampling_speed.py --quick      # < 2 minutes: small (+ paper, 28x28x1, batch 1), few steps
    python benchmarks/sampling_speed.py              # small and paper, full cached images
"""
from __future__ import annotations

import argparse
import platform
import time

import torch

import pixelar
from pixelar import ImageSpec

IMAGES = {"28x28x1": ImageSpec(1, 28, 28, 256), "32x32x3": ImageSpec(3, 32, 32, 256)}


def autocast(precision: str):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")


@torch.no_grad()
def naive_step_time(model, x, steps: int, precision: str) -> float:
    """Seconds per step of the naive sampler (a joint distribution: one step per pixel), over `steps` steps."""
    dist, (C, H, W), g = model.distribution, model.image.shape, torch.Generator().manual_seed(0)
    with autocast(precision):
        model(x)  # warm-up
        t = time.perf_counter()
        for p in range(steps):
            i, j = divmod(p, W)
            x[:, :, i, j] = dist.sample(model(x)[:, :, i, j], 1.0, g)
        return (time.perf_counter() - t) / steps


@torch.no_grad()
def cached_image_time(model, x, rows: int, precision: str) -> tuple[float, float, int]:
    """(seconds per image batch, extrapolated from `rows` rows plus compile; compile seconds; cache bytes)."""
    dist, (C, H, W), g = model.distribution, model.image.shape, torch.Generator().manual_seed(0)
    with autocast(precision):
        t = time.perf_counter()
        state = model.begin_cache(x)
        compile_s = time.perf_counter() - t
        t = time.perf_counter()
        for i in range(rows):
            for j in range(W):
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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="few steps and rows; under 2 minutes on 2 CPU cores")
    ap.add_argument("--sizes", default=None, help="comma-separated model sizes (default small,paper)")
    ap.add_argument("--images", default="28x28x1,32x32x3")
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--naive-steps", type=int, default=None, help="naive steps measured (default 3 quick, 16)")
    ap.add_argument("--cached-rows", type=int, default=None, help="cached rows measured (default 1 quick, all)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = (args.sizes or "small,paper").split(",")
    naive_steps = args.naive_steps or (2 if args.quick else 16)
    batches = [int(b) for b in args.batches.split(",")]
    rows_md = []
    t0 = time.perf_counter()
    for size in sizes:
        for image_name in args.images.split(","):
            image = IMAGES[image_name]
            torch.manual_seed(0)
            model = pixelar.create_model("pixelcnn_pp", image, size).eval()
            precisions = [p for p in args.precisions.split(",") if p == "fp32" or bf16_works(model, image)]
            for batch in batches:
                if args.quick and size == "paper" and (batch > 1 or image_name != "28x28x1"):
                    continue  # quick: the paper model at batch 1 on 28x28x1 only (its naive pass is slow)
                for precision in precisions:
                    if args.quick and size == "paper" and precision != "fp32":
                        continue
                    C, H, W = image.shape
                    rows = min(H, args.cached_rows or (1 if args.quick else H))
                    x = torch.zeros(batch, *image.shape, dtype=torch.long)
                    naive_s = naive_step_time(model, x.clone(), naive_steps, precision) * H * W
                    cached_s, compile_s, mem = cached_image_time(model, x.clone(), rows, precision)
                    how = f"cached: {rows}/{H} rows + compile ({compile_s:.2f} s)" if rows < H else "cached: whole image"
                    rows_md.append(
                        f"| {size} | {image_name} | {batch} | {precision} | {batch / naive_s:.3g} | "
                        f"{batch / cached_s:.3g} | {naive_s / cached_s:.1f}x | {mem / 2**20:.1f} MiB | "
                        f"naive: {naive_steps}/{H * W} steps; {how} |")
                    print(rows_md[-1], flush=True)
    print()
    print(f"PixelCNN++ sampling, {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; extrapolated where noted ({time.perf_counter() - t0:.0f} s)")
    print()
    print("| size | image | batch | precision | naive img/s | cached img/s | speedup | cache memory | measured |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows_md:
        print(r)


if __name__ == "__main__":
    main()
