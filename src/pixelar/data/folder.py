"""Images from a directory tree (``folder:/path/to/dir``), read with Pillow.

Layout:
    dir/train/..., dir/test/...   two splits (both subfolders must exist), or
    dir/...                       training images only.
Within a split, either class subfolders (``cat/001.png``; sorted folder names give
label ids 0, 1, ...) or images directly (no labels). PNG and JPEG files are read;
all must have the same size. If every image is grayscale (mode L, 1 or LA) the set
has 1 channel, otherwise all are converted to RGB.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from pixelar.data.dataset import RawSplit

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
_GRAY_MODES = frozenset({"1", "L", "LA"})


def load_folder(root: str | Path, part: str) -> RawSplit:
    """Load the "train" or "test" part of an image folder.

    Raises:
        FileNotFoundError: ``root`` is not a directory.
        ValueError: no test split, no images, mixed layouts, unreadable images,
            different image sizes, or test classes unknown to the training set.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist or is not a directory")
    has_splits = (root / "train").is_dir() and (root / "test").is_dir()
    if not has_splits and part != "train":
        raise ValueError(f"{root}: has no {part} split (make train/ and test/ subfolders to provide one)")
    split_dir = root / part if has_splits else root

    files, class_names = _scan(split_dir)
    labels = None
    num_classes = None
    if class_names is not None:
        # Label ids always come from the training classes, so test ids agree with train ids.
        train_classes = class_names if part == "train" else _scan(root / "train")[1]
        if train_classes is None:
            raise ValueError(f"{split_dir}: has class subfolders but {root / 'train'} does not")
        unknown = sorted(set(class_names) - set(train_classes))
        if unknown:
            raise ValueError(f"{split_dir}: classes {unknown} do not exist in {root / 'train'}")
        ids = {name: i for i, name in enumerate(train_classes)}
        labels = torch.tensor([ids[f.parent.name] for f in files], dtype=torch.int64)
        num_classes = len(train_classes)
    return RawSplit(_read_images(files), labels, num_classes)


def _scan(split_dir: Path) -> tuple[list[Path], list[str] | None]:
    """Image files of a split in a fixed order, and the sorted class names (None: unlabelled)."""
    entries = sorted(p for p in split_dir.iterdir() if not p.name.startswith("."))
    subdirs = [p for p in entries if p.is_dir()]
    loose = [p for p in entries if _is_image(p)]
    if subdirs and loose:
        raise ValueError(
            f"{split_dir}: mixes image files ({loose[0].name}, ...) with class subfolders "
            f"({subdirs[0].name}/, ...); use one layout"
        )
    if subdirs:
        files = [f for d in subdirs for f in sorted(d.iterdir()) if _is_image(f)]
        class_names: list[str] | None = [d.name for d in subdirs]
    else:
        files, class_names = loose, None
    if not files:
        raise ValueError(f"{split_dir}: no PNG or JPEG images found")
    return files, class_names


def _is_image(p: Path) -> bool:
    return p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES


def _read_images(files: list[Path]) -> torch.Tensor:
    """Decode all files into one uint8 tensor (N, C, H, W)."""
    arrays: list[np.ndarray] = []  # each (H, W) for grayscale or (H, W, 3) for RGB
    size = None
    for f in files:
        try:
            with Image.open(f) as im:
                im.load()
                if size is None:
                    size, first = im.size, f
                elif im.size != size:
                    raise ValueError(
                        f"{f}: image size {im.size[0]}x{im.size[1]} differs from "
                        f"{size[0]}x{size[1]} of {first}; all images must have the same size"
                    )
                arrays.append(np.asarray(im.convert("L" if im.mode in _GRAY_MODES else "RGB")))
        except (UnidentifiedImageError, OSError, SyntaxError) as e:
            raise ValueError(f"{f}: cannot read image ({e})") from e
    if all(a.ndim == 2 for a in arrays):
        return torch.from_numpy(np.stack(arrays)[:, None])  # (N, 1, H, W)
    # Some color images: promote the grayscale ones by repeating the channel.
    rgb = [a if a.ndim == 3 else np.repeat(a[:, :, None], 3, axis=2) for a in arrays]
    return torch.from_numpy(np.ascontiguousarray(np.stack(rgb).transpose(0, 3, 1, 2)))
