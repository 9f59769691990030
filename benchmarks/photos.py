"""Real photographs, losslessly: pixelar's codec against PNG, lossless WebP and lossless JPEG XL.

The photos are the colour sample images that ship inside scikit-image (install it for this benchmark only:
`pip install scikit-image`; it is no dependency of pixelar): astronaut, coffee, chelsea, rocket and
immunohistochemistry, 300x451 to 427x640 pixels. Each codec at its strongest setting, with its times:
- PNG: Pillow, optimize=True (zlib level 9 and its filter search);
- WebP: `cwebp -lossless -z 9` / `dwebp` (Debian's `webp`);
- JPEG XL: `cjxl -d 0 -e 9` / `djxl` (Debian's `libjxl-tools`);
- pixelar: `pixelar.codec.compress` / `decompress` with the model given (--model: a run directory or a
  pretrained name; a colour model, e.g. PixelCNN++ trained on the CIFAR-10 JPEG copy in ../shared/data).
Every round trip is checked to give the photo back exactly. Bits per sub-pixel (8 x bytes / (3 H W)) and
seconds per photo to compress and to decompress.

    apt-get install -y webp libjxl-tools && pip install scikit-image
    python -m benchmarks.photos --model runs/cifar-jpeg [--photos astronaut,coffee] [--write]
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import pixelar
from pixelar import codec

from .tables import cpu_model, load_average, write_table

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry")
# the other codecs' strongest lossless settings, as commands (source, output) -> argv
WEBP_ENCODE = lambda src, out: ["cwebp", "-quiet", "-lossless", "-z", "9", src, "-o", out]  # noqa: E731
WEBP_DECODE = lambda src, out: ["dwebp", "-quiet", src, "-o", out]  # noqa: E731
JXL_ENCODE = lambda src, out: ["cjxl", src, out, "-d", "0", "-e", "9", "--quiet"]  # noqa: E731
JXL_DECODE = lambda src, out: ["djxl", src, out, "--quiet"]  # noqa: E731


def photo(name: str) -> np.ndarray:
    import skimage.data

    return np.ascontiguousarray(getattr(skimage.data, name)()[..., :3])


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def png(img: np.ndarray, tmp: Path) -> tuple[int, float, float]:
    buf = io.BytesIO()
    _, enc = timed(lambda: Image.fromarray(img).save(buf, format="PNG", optimize=True))
    data = buf.getvalue()
    back, dec = timed(lambda: np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
    assert np.array_equal(back, img), "PNG round trip differs"
    return len(data), enc, dec


def external(img: np.ndarray, tmp: Path, encode, decode, ext: str) -> tuple[int, float, float]:
    """A command-line codec: encode(src, out) and decode(src, out) give the commands (PNG -> file -> PNG), both
    timed as processes."""
    src, coded, back_png = tmp / "in.png", tmp / f"out.{ext}", tmp / "back.png"
    Image.fromarray(img).save(src)
    _, enc = timed(lambda: subprocess.run(encode(str(src), str(coded)), check=True, capture_output=True))
    _, dec = timed(lambda: subprocess.run(decode(str(coded), str(back_png)), check=True, capture_output=True))
    back = np.asarray(Image.open(back_png).convert("RGB"))
    assert np.array_equal(back, img), f"{ext} round trip differs"
    return coded.stat().st_size, enc, dec


def learned(model, img: np.ndarray) -> tuple[int, float, float]:
    x = torch.from_numpy(img).permute(2, 0, 1)[None].long()
    data, enc = timed(lambda: codec.compress(model, x))
    back, dec = timed(lambda: codec.decompress(model, data))
    assert torch.equal(back, x), "pixelar round trip differs"
    return len(data), enc, dec


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="a colour model for pixelar's codec (run directory or pretrained name)")
    ap.add_argument("--photos", default=",".join(PHOTOS))
    ap.add_argument("--write", action="store_true", help="write the table into docs/benchmarks.md")
    args = ap.parse_args(argv)
    model = pixelar.load_model(args.model) if args.model else None
    load_before, rows = load_average(), []
    for name in args.photos.split(","):
        img = photo(name)
        H, W, _ = img.shape
        subpixels = 3 * H * W
        with tempfile.TemporaryDirectory() as d:
            tmp = Path(d)
            results = {
                "PNG": png(img, tmp),
                "WebP": external(img, tmp, WEBP_ENCODE, WEBP_DECODE, "webp"),
                "JPEG XL": external(img, tmp, JXL_ENCODE, JXL_DECODE, "jxl"),
            }
            if model is not None:
                try:
                    results["pixelar"] = learned(model, img)
                except ValueError as e:
                    results["pixelar"] = str(e).splitlines()[0]
        cells = []
        for codec_name in ("PNG", "WebP", "JPEG XL", "pixelar"):
            r = results.get(codec_name)
            if r is None:
                cells.append("")
            elif isinstance(r, str):
                cells.append(f"refused: {r[:80]}")
            else:
                size, enc, dec = r
                cells.append(f"{8 * size / subpixels:.3f} ({enc:.2f} s / {dec:.2f} s)")
        rows.append(f"| {name} | {W}x{H} | " + " | ".join(cells) + " |")
        print(rows[-1], flush=True)
    what = f"pixelar with `{args.model}` ({model.name}, {model.num_parameters():,} parameters)" if model else ""
    table = "\n".join(
        [
            f"Measured by `python -m benchmarks.photos` on {cpu_model()} ({os.cpu_count()} cores), torch "
            f"{torch.__version__}; load average {load_before} before, {load_average()} after. Bits per sub-pixel "
            f"(compress s / decompress s per photo); every round trip exact. {what}",
            "",
            "| photo | size | PNG (optimize) | WebP lossless -z 9 | JPEG XL -d 0 -e 9 | pixelar |",
            "|---|---|---|---|---|---|",
            *rows,
        ]
    )
    print(table)
    if args.write:
        write_table("photos", table)


if __name__ == "__main__":
    main()
