"""Images <-> PNG files: grids of samples, and reading an image into a model's value range."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..types import ImageSpec


def to_uint8(images: torch.Tensor, image: ImageSpec) -> np.ndarray:
    """int64 (N, C, H, W) in [0, K) -> uint8 (N, H, W, C) in [0, 255]."""
    x = images.detach().cpu().long() * 255 // (image.num_values - 1)
    return x.clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def save_grid(images: torch.Tensor, image: ImageSpec, path, nrow: int = 8, pad: int = 2) -> None:
    """Write images (N, C, H, W) as one PNG grid, nrow images per row, `pad` grey pixels between them."""
    if not isinstance(nrow, int) or isinstance(nrow, bool) or nrow < 1:
        raise ValueError(f"nrow (images per row of the grid) must be an integer >= 1, got {nrow!r}")
    if not isinstance(pad, int) or isinstance(pad, bool) or pad < 0:
        raise ValueError(f"pad (pixels between the images) must be an integer >= 0, got {pad!r}")
    arr = to_uint8(images, image)
    N, H, W, C = arr.shape
    rows = (N + nrow - 1) // nrow
    cols = min(N, nrow)
    canvas = np.full((pad + rows * (H + pad), pad + cols * (W + pad), C), 128, dtype=np.uint8)
    for k in range(N):
        r, c = divmod(k, nrow)
        y, x = pad + r * (H + pad), pad + c * (W + pad)
        canvas[y : y + H, x : x + W] = arr[k]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(canvas[..., 0] if C == 1 else canvas).save(path)


def save_image(x: torch.Tensor, image: ImageSpec, path) -> None:
    """Write one image int64 (C, H, W) as a PNG (8-bit; exact for 256 values)."""
    arr = to_uint8(x[None], image)[0]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr[..., 0] if image.channels == 1 else arr).save(path)


def load_image(path, image: ImageSpec) -> torch.Tensor:
    """Read an image file as int64 (C, H, W) in the model's value range [0, K)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        img = Image.open(path)
        img = img.convert("L" if image.channels == 1 else "RGB")
    except OSError as e:
        raise ValueError(f"cannot read image {path}: {e}") from None
    if img.size != (image.width, image.height):
        raise ValueError(f"image {path} is {img.size[0]}x{img.size[1]} (WxH) but the model expects "
                         f"{image.width}x{image.height}; resize or crop it first")
    arr = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).long()
    arr = arr.unsqueeze(0) if image.channels == 1 else arr.permute(2, 0, 1)
    # 8-bit -> K values (identity for K = 256)
    return torch.div(arr * (image.num_values - 1) + 127, 255, rounding_mode="floor")
