"""Naive vs cached (KV cache) sampling speed of the attention models, `small` size, colour images.

Both samplers are run through `model.sample` on the same generator for the first --rows image rows (the
rest of the image is marked known, so both skip it); the time per sampled row is extrapolated to the whole
image. The cached sampler's per-step cost grows with the number of keys for dense / local attention, so
its extrapolation from the first rows is optimistic there; the naive sampler's per-step cost is constant.
Both return the same images (checked here too).

    python -m benchmarks.attention_sampling_speed --quick     # 16x16x3, 1 row, batch 4
    python -m benchmarks.attention_sampling_speed [--size 32 --rows 2 --batch 16] [--write]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

import torch

import pixelar
from pixelar import ImageSpec

from .tables import write_table

MODELS = ("pixelsnail", "image_transformer", "image_transformer_dmol", "sparse_transformer")


def time_rows(model, n, rows, method):
    C, H, W = model.image.shape
    known = torch.zeros(n, H, W, dtype=torch.bool)
    known[:, rows:] = True  # only the first rows are sampled
    x_known = torch.zeros(n, C, H, W, dtype=torch.long)
    t = time.perf_counter()
    out = model.sample(n, generator=torch.Generator().manual_seed(0), method=method, x_known=x_known, known=known)
    return (time.perf_counter() - t) * H / rows, out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="16x16x3, 1 row, batch 4")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--rows", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument(
        "--write", action="store_true", help="write the table into docs/benchmarks.md (attention-sampling block)"
    )
    args = ap.parse_args(argv)
    size, rows, n = (16, 1, 4) if args.quick else (args.size, args.rows, args.batch)
    image = ImageSpec(3, size, size, 256)
    lines = [
        f"`small` models, {size}x{size}x3, batch {n}, time per image batch extrapolated from the first "
        f"{rows} row(s); CPU ({platform.machine()}, {torch.get_num_threads()} threads), torch {torch.__version__}.",
        "",
        "| model | params | naive s | cached s | speed-up |",
        "|---|---|---|---|---|",
    ]
    for name in MODELS:
        torch.manual_seed(0)
        model = pixelar.create_model(name, image, "small").eval()
        with torch.no_grad():  # random weights: sampling cost does not depend on them
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
        naive, a = time_rows(model, n, rows, "naive")
        cached, b = time_rows(model, n, rows, "cached")
        if not torch.equal(a, b):
            print(
                f"note: {name}: cached and naive samples differ in {int((a != b).flatten(1).any(1).sum())} of "
                f"{len(a)} images (a draw flipped by floating-point rounding; see docs/benchmarks.md)",
                file=sys.stderr,
            )
        print(f"{name}: naive {naive:.1f} s, cached {cached:.1f} s", flush=True)
        lines.append(f"| `{name}` | {model.num_parameters():,} | {naive:.1f} | {cached:.1f} | {naive / cached:.1f}x |")
    text = "\n".join(lines)
    print(text)
    if args.write:
        write_table("attention-sampling", text)


if __name__ == "__main__":
    main()
