"""How much rounding Image GPT's float colour centres to 8-bit colours changes the tokens.

The released tokenizer (and transformers' processor) encodes a pixel, scaled to [-1, 1], to the nearest of
512 float centres; pixelar's default palette encodes to the nearest of the centres rounded to 8-bit colours.
For each set of 512 centres and each image set: the fraction of pixels whose nearest centre changes when the
centres are rounded, and the fraction where transformers' float32 search (|a|^2 - 2ab + |b|^2) differs from
pixelar's float64 one (`Palette(float_centres=True)`).

Centres: k-means (pixelar's Palette.fit with float centres) of the CIFAR-10 JPEG copy's training pixels, as
iGPT's are of ImageNet's, and uniform draws in [-1, 1] (the random clusters of the converter's tests).
Images: Fashion-MNIST's test set as RGB, the CIFAR-10 JPEG copy's test set, random and smooth (4x4 upsampled)
32x32 images. Data: `../shared/data/cifar10-jpeg.npz`, decoded with its `unpack_cifar10_jpeg.py`.

    python -m benchmarks.palette_rounding [--draws 3]     # about 10 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from pixelar.data import load_dataset
from pixelar.models.palette import Palette

from .attention_quality import SHARED


def distinct(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (N, 3, H, W) -> their distinct colours as images (D, 3, 1, 1) and each one's count (D,)."""
    p = images.permute(0, 2, 3, 1).reshape(-1, 3).long()
    colours, counts = torch.unique(p, dim=0, return_counts=True)
    return colours.view(-1, 3, 1, 1), counts


def transformers_tokens(colours: torch.Tensor, clusters: torch.Tensor) -> torch.Tensor:
    """transformers' color_quantize in float32: argmin of |x|^2 - 2 x.c + |c|^2, x = colour / 127.5 - 1."""
    x, c = colours.view(-1, 3).float() / 127.5 - 1, clusters.float()
    out = []
    for i in range(0, len(x), 1 << 16):
        a = x[i : i + (1 << 16)]
        out.append(((a * a).sum(1, keepdim=True) - 2 * a @ c.T + (c * c).sum(1)).argmin(1))
    return torch.cat(out)


def images(shared: Path, out_dir: Path) -> dict[str, torch.Tensor]:
    subprocess.run([sys.executable, str(shared / "unpack_cifar10_jpeg.py"), str(out_dir)], check=True)
    cifar = {s: np.load(out_dir / f"cifar10-jpeg-{s}.npz")["x"] for s in ("train", "test")}
    fashion = load_dataset("fashion_mnist", "test").images.repeat(1, 3, 1, 1)  # grey as RGB
    g = torch.Generator().manual_seed(0)
    low = torch.rand(1000, 3, 4, 4, generator=g) * 255
    smooth = torch.nn.functional.interpolate(low, size=(32, 32), mode="bilinear", align_corners=True)
    return {
        "cifar train": torch.from_numpy(cifar["train"]).permute(0, 3, 1, 2),
        "Fashion-MNIST test as RGB": fashion,
        "CIFAR-10 (JPEG copy) test": torch.from_numpy(cifar["test"]).permute(0, 3, 1, 2),
        "random 32x32": torch.randint(0, 256, (1000, 3, 32, 32), generator=g, dtype=torch.uint8),
        "smooth 32x32": smooth.round().clamp(0, 255).to(torch.uint8),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--draws", type=int, default=3, help="uniform draws of 512 centres")
    ap.add_argument("--shared-data", default=str(SHARED))
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        data = images(Path(args.shared_data), Path(tmp))
    train = data.pop("cifar train")
    centres = {"k-means of CIFAR-10 (JPEG copy) train": Palette(512, 3, float_centres=True).fit(train).clusters}
    for s in range(args.draws):
        g = torch.Generator().manual_seed(s)
        centres[f"uniform in [-1, 1], draw {s}"] = torch.rand(512, 3, generator=g) * 2 - 1
    sets = {name: distinct(x) for name, x in data.items()}
    print("| centres (512) | images | pixels | nearest centre changed by rounding | transformers' float32 != float64 |")
    print("|---|---|---|---|---|")
    for cname, c in centres.items():
        exact = Palette(512, 3, float_centres=True).set_centres(c.double())
        rounded = Palette(512, 3).set_centres(c.double())  # pixelar's default: 8-bit centres
        for iname, (colours, counts) in sets.items():
            want = exact.encode(colours).flatten()
            moved = counts[rounded.encode(colours).flatten() != want].sum() / counts.sum()
            hf = counts[transformers_tokens(colours, c) != want].sum() / counts.sum()
            print(f"| {cname} | {iname} | {int(counts.sum()):,} | {moved:.2%} | {hf:.5%} |")


if __name__ == "__main__":
    main()
