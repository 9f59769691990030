"""CelebA (Liu et al. 2015) and CelebA-HQ (Karras et al. 2018) from folders of images, at a chosen resolution.

``celeba`` (64x64) or ``celebaR`` (RxR, R <= 178): the aligned faces, ``img_align_celeba/000001.jpg`` ...
``202599.jpg`` (178 wide, 218 high; a file of another size is refused). Each image is cut to its centred
square (178x178: rows 20..197 of the aligned images), then resized to RxR with Pillow's Lanczos filter
(antialiased when it shrinks).
Splits: with ``list_eval_partition.txt`` beside the folder (lines ``000001.jpg 0``; the Kaggle copy's
``list_eval_partition.csv`` works too), its 0 / 1 / 2 images (162,770 / 19,867 / 19,962) are pixelar's
"train" / "val" / "test", and "full_train" is 0 and 1. Without it: file names in sorted order, the last
tenth is "test" and the rest the training images, "val" carved from them as for every built-in set.

``celeba_hq`` (256x256) or ``celeba_hqR`` (R <= 1024): a folder of 30,000 1024x1024 images
(``CelebA-HQ-img/0.jpg`` ... ``29999.jpg`` as CelebAMask-HQ ships them, or the images directly in the
dataset's folder), all of one size (that of the first; another is refused), cut to a centred square if not
square and resized like CelebA. Splits: names in numeric order, the first 90% are the training images and
the last 10% "test" (27,000 / 3,000 for the full set).

Every file is read by pixelar.image_files, the strict reader of every image file: its size checked from the
header before it is decoded, 8-bit RGB taken exactly (opaque alpha dropped), anything else (grey, 16-bit,
transparency, CMYK, several frames) refused with the file's name. Images are decoded and resized once into a
memory-mapped cache (cache.py); training images are stored so that "train" and "val" are views of the
mapping. No labels (the attributes are not classes).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
from PIL import Image

from pixelar.data import cache, paths
from pixelar.data.dataset import RawSplit
from pixelar.data.download import not_found_error
from pixelar.data.folder import IMAGE_SUFFIXES
from pixelar.data.splits import val_permutation
from pixelar.image_files import ConversionNeeded, open_image, read_pixels

CELEBA = "celeba"
CELEBA_HQ = "celeba_hq"
DEFAULT_RESOLUTION = {CELEBA: 64, CELEBA_HQ: 256}
MAX_RESOLUTION = {CELEBA: 178, CELEBA_HQ: 1024}
ALIGNED_SIZE = (178, 218)  # (W, H) of every aligned CelebA image
MIN_RESOLUTION = 4
IMAGES_DIR = {CELEBA: "img_align_celeba", CELEBA_HQ: "CelebA-HQ-img"}
PARTITION_FILES = ("list_eval_partition.txt", "Eval/list_eval_partition.txt", "list_eval_partition.csv")
_TITLE = {CELEBA: "CelebA", CELEBA_HQ: "CelebA-HQ"}
_NAME = re.compile(r"(celeba_hq|celeba)(\d*)")
_LANCZOS = getattr(Image, "Resampling", Image).LANCZOS


def parse_name(name: str) -> tuple[str, int] | None:
    """("celeba" or "celeba_hq", resolution) for celeba, celebaR, celeba_hq, celeba_hqR; None for other names."""
    m = _NAME.fullmatch(name)
    if m is None:
        return None
    kind, digits = m.groups()
    resolution = int(digits) if digits else DEFAULT_RESOLUTION[kind]
    if not MIN_RESOLUTION <= resolution <= MAX_RESOLUTION[kind]:
        raise ValueError(
            f"dataset {name!r}: the resolution must be {MIN_RESOLUTION}..{MAX_RESOLUTION[kind]} for {kind} "
            f"(its images are {MAX_RESOLUTION[kind]} pixels wide), got {resolution}"
        )
    return kind, resolution


def load_celeba(kind: str, resolution: int, part: str, data_dir: str | os.PathLike | None = None) -> RawSplit:
    """The "train" or "test" images of CelebA (kind "celeba") or CelebA-HQ ("celeba_hq") at RxR: uint8
    (N, 3, R, R) memory-mapped from the cache, no labels."""
    where, image_dir, partition = _locate(kind, data_dir)
    files = _image_files(image_dir, kind)
    if partition is not None:
        parts = _read_partition(partition, files, image_dir)
        train = [f for f in files if parts[f.name] == 0]
        val = [f for f in files if parts[f.name] == 1]
        chosen = train + val if part == "train" else [f for f in files if parts[f.name] == 2]
        own_val, order = (len(val) if part == "train" else None), "partition"
    else:
        n_test = max(1, len(files) // 10)
        chosen = files[:-n_test] if part == "train" else files[-n_test:]
        own_val, order = None, ("val_permutation" if part == "train" else "file")
    permuted = order == "val_permutation"
    sources = files + ([partition] if partition is not None else [])
    settings = {"resolution": resolution, "crop": "centred square", "filter": "lanczos", "order": order}
    key = cache.source_key(where, sources, settings)
    shape = (3, resolution, resolution)
    if kind == CELEBA:
        size, remedy = ALIGNED_SIZE, "replace it with the original aligned image"
    else:  # the first file's size (checked from its header), for both parts alike
        with open_image(files[0], reader=_TITLE[kind]) as img:
            size, remedy = img.size, f"all {_TITLE[kind]} images must have one size, that of {files[0]}"

    def build(tmp: Path) -> None:
        n = len(chosen)
        dest = np.arange(n)
        if permuted:  # position k holds image perm[k] (see splits.val_permutation)
            dest[val_permutation(n).numpy()] = np.arange(n)
        out = cache.new_image_file(tmp, n, shape)
        for i, f in enumerate(chosen):
            out[dest[i]] = _read_resized(f, resolution, size, _TITLE[kind], remedy)
        out.flush()
        del out
        return None

    name = f"{kind}{resolution}"
    images, _ = cache.open_or_build(where, kind, name, part, key, shape, False, build, _TITLE[kind])
    return RawSplit(images, None, None, permuted=permuted, own_val=own_val)


def _locate(kind: str, data_dir) -> tuple[Path, Path, Path | None]:
    """(dataset directory, image folder, partition file or None), from the first search directory with images."""
    sub = IMAGES_DIR[kind]
    for d in paths.search_dirs(kind, data_dir):
        image_dir = d / sub
        if image_dir.is_dir() and (image_dir / sub).is_dir():  # the Kaggle zip nests the folder in itself
            image_dir = image_dir / sub
        if not image_dir.is_dir():
            if kind == CELEBA or not d.is_dir() or not any(_is_image(p) for p in d.iterdir()):
                continue
            image_dir = d  # CelebA-HQ: the images directly in the dataset's folder
        partition = paths.find_in(d, PARTITION_FILES) if kind == CELEBA else None
        return d, image_dir, partition
    if kind == CELEBA:
        required = [(f"{sub}/000001.jpg ... 202599.jpg",)]
        hint = (
            "Unpack img_align_celeba.zip (the aligned and cropped CelebA images) there, and put "
            "list_eval_partition.txt beside the folder for the official train/val/test split."
        )
    else:
        required = [(f"{sub}/0.jpg ... 29999.jpg", "the 1024x1024 images directly")]
        hint = "Unpack CelebA-HQ (e.g. CelebAMask-HQ's CelebA-HQ-img folder) there."
    raise not_found_error(kind, required, data_dir, _TITLE[kind], hint, "pixelar does not download CelebA")


def _is_image(p: Path) -> bool:
    return not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()


def _image_files(image_dir: Path, kind: str) -> list[Path]:
    files = [p for p in image_dir.iterdir() if _is_image(p)]
    if not files:
        raise ValueError(f"{image_dir}: no PNG or JPEG images found")
    if kind == CELEBA_HQ:  # 0.jpg, 1.jpg, ..., 10.jpg: numeric order, not 0, 1, 10, 100, ...
        return sorted(files, key=lambda p: (0, int(p.stem), p.name) if p.stem.isdigit() else (1, 0, p.name))
    return sorted(files)


def _read_partition(path: Path, files: list[Path], image_dir: Path) -> dict[str, int]:
    """{file name: 0 (train), 1 (val) or 2 (test)} for exactly the images in image_dir."""
    parts: dict[str, int] = {}
    for i, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.replace(",", " ").split()
        if not fields or (i == 1 and fields[-1] == "partition"):  # blank, or the csv header
            continue
        if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
            raise ValueError(f"{path}, line {i}: expected 'IMAGE_NAME 0|1|2', got {line.strip()!r}")
        parts[fields[0]] = int(fields[1])
    names = {f.name for f in files}
    missing = sorted(set(parts) - names)
    if missing:
        raise ValueError(
            f"{path} lists {len(missing)} image(s) that {image_dir} lacks (e.g. {missing[0]}); unpack the whole "
            "image archive, or remove the partition file to split the images present by name"
        )
    unlisted = sorted(names - set(parts))
    if unlisted:
        raise ValueError(f"{image_dir} has {len(unlisted)} image(s) that {path} does not list (e.g. {unlisted[0]})")
    for k, what in enumerate(("training (0)", "validation (1)", "test (2)")):
        if k not in parts.values():
            raise ValueError(f"{path} lists no {what} images")
    return parts


def _read_resized(path: Path, resolution: int, size: tuple[int, int], title: str, remedy: str) -> np.ndarray:
    """One image file of `size` (W, H) -> uint8 (3, R, R): its centred square, resized with Lanczos."""
    try:
        with open_image(path, size, title, remedy) as img:  # the size from the header, before decoding
            arr, _ = read_pixels(img, path, 3, reader=title)
    except ConversionNeeded as e:  # no conversion is offered: the images are 8-bit RGB
        raise ValueError(f"{e.problem}; replace or remove it") from None
    im = Image.fromarray(arr)
    w, h = im.size
    side = min(w, h)
    if side < resolution:
        raise ValueError(f"{path}: {w}x{h} is smaller than the {resolution}x{resolution} asked for")
    left, top = (w - side) // 2, (h - side) // 2
    im = im.crop((left, top, left + side, top + side))
    if side != resolution:
        im = im.resize((resolution, resolution), _LANCZOS)
    return np.asarray(im).transpose(2, 0, 1)
