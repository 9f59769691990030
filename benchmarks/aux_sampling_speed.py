"""Sampling time of the models with auxiliary variables and LMConv against PixelCNN++: naive vs cached,
whole images.

`small` models with random weights (sampling cost does not depend on them), `model.sample` for n whole
images with each method on the same generator; the two must return the same images (checked here). The
grayscale PixelCNN draws its grey image (PixelCNN++ over 16 levels) and then the colour image given it; the
pyramid draws its coarsest level and then each finer level's new pixels. Cached: every stage keeps a few rows
per layer, the auxiliary image's embedding is computed once per stage (pixelar.nn.cache constant maps).
LMConv (its first S-curve order) computes one column of every layer per pixel from per-map buffers.

    python -m benchmarks.aux_sampling_speed --quick          # 8x8x3, batch 2: seconds
    python -m benchmarks.aux_sampling_speed [--images 28x28x1,32x32x3 --batch 4] [--write]
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

MODELS = ("pixelcnn_pp", "grayscale_pixelcnn", "pyramid_pixelcnn", "lmconv")


def time_sample(model, n: int, method: str):
    t = time.perf_counter()
    out = model.sample(n, generator=torch.Generator().manual_seed(0), method=method)
    return time.perf_counter() - t, out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="8x8x3, batch 2")
    ap.add_argument("--images", default="28x28x1,32x32x3", help="comma-separated HxWxC")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--write", action="store_true", help="write the table into docs/benchmarks.md (aux-sampling block)")
    args = ap.parse_args(argv)
    images, n = (["8x8x3"], 2) if args.quick else (args.images.split(","), args.batch)
    lines = [
        f"`small` models, random weights, {n} whole images per call; CPU ({platform.machine()}, "
        f"{torch.get_num_threads()} thread(s)), torch {torch.__version__}.",
        "",
        "| image | model | params | naive s | cached s | speed-up |",
        "|---|---|---|---|---|---|",
    ]
    for text in images:
        H, W, C = (int(v) for v in text.split("x"))
        spec = ImageSpec(C, H, W, 256)
        for name in args.models.split(","):
            torch.manual_seed(0)
            model = pixelar.create_model(name, spec, "small").eval()
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(0.05 * torch.randn_like(p))
            naive, a = time_sample(model, n, "naive")
            cached, b = time_sample(model, n, "cached")
            if not torch.equal(a, b):
                print(
                    f"note: {name} {text}: cached and naive samples differ in "
                    f"{int((a != b).flatten(1).any(1).sum())} of {len(a)} images (a draw flipped by floating-point "
                    "rounding; see docs/sampling.md)",
                    file=sys.stderr,
                )
            print(f"{text} {name}: naive {naive:.1f} s, cached {cached:.1f} s", flush=True)
            lines.append(
                f"| {text} | `{name}` | {model.num_parameters():,} | {naive:.1f} | {cached:.1f} "
                f"| {naive / cached:.1f}x |"
            )
    text = "\n".join(lines)
    print(text)
    if args.write:
        write_table("aux-sampling", text)


if __name__ == "__main__":
    main()
