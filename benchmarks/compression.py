"""Lossless compression with a trained model (pixelar.codec) against general-purpose image formats.

The first --n test images of the run's dataset are compressed in batches of --batch with `codec.compress`,
decompressed and checked to be identical. Reported, in bits per sub-pixel (bits/dim): the compressed files
(header included), the model's exact -log2 p(x) on the same images (the ideal the coder approaches), PNG
(Pillow, optimize=True, one file per image), WebP lossless (method 6) where Pillow has it, and gzip -9 of
the raw uint8 pixels of all images together; plus the coder's speed.

    python -m benchmarks.compression --run RUN_DIR [--n 100] [--write]
    python -m benchmarks.compression --steps 300 --n 20          # trains a small PixelCNN++ first
"""

from __future__ import annotations

import argparse
import gzip
import io
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, features

import pixelar
from pixelar.codec import compress, decompress
from pixelar.config import TrainConfig
from pixelar.data import load_dataset
from pixelar.io import read_json
from pixelar.training import train

from .tables import show_progress, write_table


def image_bytes(arr: np.ndarray, fmt: str, **kw) -> int:
    """Size of one uint8 image (H, W, C) written by Pillow in `fmt`."""
    buf = io.BytesIO()
    Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).save(buf, format=fmt, **kw)
    return buf.tell()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", help="a trained run directory (default: train one with --steps)")
    ap.add_argument("--steps", type=int, default=300, help="training steps when no --run is given")
    ap.add_argument("--n", type=int, default=100, help="test images to compress")
    ap.add_argument("--batch", type=int, help="images per compressed stream (default: all --n in one stream)")
    ap.add_argument("--write", action="store_true", help="write the table into docs/benchmarks.md (compression block)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # the table's timings are one thread's (the codec's own choice for these steps)
    with tempfile.TemporaryDirectory() as tmp:
        run = args.run
        if run is None:
            run = str(Path(tmp) / "run")
            train(
                TrainConfig(max_steps=args.steps, sample_n=0, test_subset=100),
                run,
                progress=show_progress(),
                log=lambda *a: None,
            )
        model = pixelar.load_model(run).eval()
        train_cfg = read_json(Path(run) / "config.json", "run config").get("train", {})
        dataset = train_cfg.get("dataset", "fashion_mnist")
        test = load_dataset(dataset, "test", data_dir=train_cfg.get("data_dir"))
        x = test.images[: args.n].long()  # (n, C, H, W) of the data image
        if model.num_classes:
            raise SystemExit("class-conditional runs need their labels as side information; use an unconditional run")
        dims = x.numel()
        args.batch = args.batch or args.n
        t = time.perf_counter()
        bar = show_progress()
        streams = [compress(model, x[k : k + args.batch], progress=bar) for k in range(0, args.n, args.batch)]
        t_enc = time.perf_counter() - t
        t = time.perf_counter()
        back = torch.cat([decompress(model, s, progress=bar) for s in streams])
        t_dec = time.perf_counter() - t
        if not torch.equal(back, x):
            raise SystemExit("decompressed images differ from the originals")
        with torch.no_grad():
            nats = -sum(model.log_prob(model.encode(x[k : k + 100])).sum().item() for k in range(0, args.n, 100))
        spec = model.data_image
        arr = (x * 255 // (spec.num_values - 1)).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        rows = [
            ("pixelar codec (this model)", 8 * sum(len(s) for s in streams) / dims),
            ("the model's -log2 p(x) (ideal)", nats / math.log(2) / dims),
            ("PNG (optimize)", 8 * sum(image_bytes(a, "PNG", optimize=True) for a in arr) / dims),
        ]
        if features.check("webp"):
            rows.append(("WebP lossless", 8 * sum(image_bytes(a, "WEBP", lossless=True, method=6) for a in arr) / dims))
        rows.append(("gzip -9 of the raw pixels", 8 * len(gzip.compress(arr.tobytes(), 9)) / dims))
    source = f"run {Path(run).name}" if args.run else f"trained here for {args.steps} steps"
    lines = [
        f"`{model.name}` ({model.num_parameters():,} parameters, {source}), the first {args.n} "
        f"{dataset} test images, {args.batch} per stream; one CPU thread: compress {args.n / t_enc:.1f} "
        f"images/s, decompress {args.n / t_dec:.1f} images/s; every image decompressed identical.",
        "",
        "| method | bits/dim | vs raw 8 bits |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {bpd:.3f} | {bpd / 8:.1%} |" for name, bpd in rows]
    text = "\n".join(lines)
    print(text)
    if args.write:
        write_table("compression", text)


if __name__ == "__main__":
    main()
