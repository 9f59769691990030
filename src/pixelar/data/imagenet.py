"""Downsampled ImageNet 32x32 and 64x64 (Chrabaszcz, Loshchilov and Hutter 2017), from its npz release.

Files (they need an image-net.org login, so pixelar never downloads them):
    train_data_batch_1.npz ... train_data_batch_10.npz   1,281,167 training images
    val_data.npz                                         50,000 validation images: the "test" split
Each holds ``data``, uint8 (n, 3*R*R): per image all red values, then all green, then all blue, each plane
row-major (CIFAR's layout, so a row reshapes to (3, R, R)); ``labels``, n ints in 1..1000; and ``mean``
(ignored). pixelar's labels are 0-based: file label k is class k - 1.

This is the "new" downsampled ImageNet (box resizing, labels, 50,000 validation images). The bits/dim tables
of PixelRNN, Gated PixelCNN, Image Transformer and Sparse Transformer use the older unlabelled version of
van den Oord et al. 2016, which is harder: numbers on the two are not comparable (docs/datasets.md).

The images are converted once into a memory-mapped cache (cache.py); the training images are stored in the
order of the fixed validation permutation (splits.py), so "train" and "val" are views of the mapping.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from pixelar.data import cache, paths
from pixelar.data.dataset import RawSplit
from pixelar.data.download import not_found_error
from pixelar.data.splits import val_permutation

RESOLUTIONS = (32, 64)
NUM_CLASSES = 1000
TRAIN_FILES = tuple(f"train_data_batch_{i}.npz" for i in range(1, 11))
TEST_FILES = ("val_data.npz",)


def folder(resolution: int) -> str:
    return f"imagenet{resolution}"


def _subfolder(resolution: int, part: str) -> str:
    # the official zip archives unpack into Imagenet32_train_npz/, Imagenet32_val_npz/ (likewise for 64)
    return f"Imagenet{resolution}_{'train' if part == 'train' else 'val'}_npz"


def load_imagenet(resolution: int, part: str, data_dir: str | os.PathLike | None = None) -> RawSplit:
    """The "train" or "test" (validation) images of Downsampled ImageNet at 32 or 64: uint8 (N, 3, R, R)
    memory-mapped from the cache, labels int64 (N,) in 0..999."""
    if resolution not in RESOLUTIONS:
        raise ValueError(f"Downsampled ImageNet comes at resolutions {RESOLUTIONS}, got {resolution}")
    where, files = _locate(resolution, part, data_dir)
    order = "val_permutation" if part == "train" else "file"
    key = cache.source_key(where, files, {"resolution": resolution, "order": order})

    def build(tmp: Path) -> np.ndarray:
        n_files = [_count(f) for f in files]  # first the labels alone (small), to size the cache file
        n = sum(n_files)
        # training images go to their place in the validation permutation: position k holds image perm[k]
        dest = np.arange(n)
        if part == "train":
            dest[val_permutation(n).numpy()] = np.arange(n)
        out = cache.new_image_file(tmp, n, (3, resolution, resolution))
        labels = np.empty(n, dtype=np.int64)
        start = 0
        for f, k in zip(files, n_files):
            images, file_labels = _read_batch(f, resolution)
            if len(images) != k:
                raise ValueError(f"{f}: changed while it was read ({k} images, then {len(images)})")
            out[dest[start : start + k]] = images
            labels[dest[start : start + k]] = file_labels
            start += k
        out.flush()
        del out
        return labels

    images, labels = cache.open_or_build(
        where,
        folder(resolution),
        folder(resolution),
        part,
        key,
        (3, resolution, resolution),
        True,
        build,
        _title(resolution),
    )
    return RawSplit(images, labels, NUM_CLASSES, permuted=part == "train")


def _title(resolution: int) -> str:
    return f"Downsampled ImageNet {resolution}x{resolution}"


def _locate(resolution: int, part: str, data_dir) -> tuple[Path, list[Path]]:
    """The dataset directory and the part's files, all from one directory (flat, or in the official
    subfolder); else DatasetNotFoundError naming the files, where to put them, and what is missing where
    some are."""
    names = TRAIN_FILES if part == "train" else TEST_FILES
    sub = _subfolder(resolution, part)
    required = [(name, f"{sub}/{name}") for name in names]
    partial: tuple[Path, list[str]] | None = None
    for d in paths.search_dirs(folder(resolution), data_dir):
        found = [paths.find_in(d, alts) for alts in required]
        if all(p is not None for p in found):
            return d, found  # type: ignore[return-value]
        if partial is None and any(p is not None for p in found):
            partial = (d, [n for n, p in zip(names, found) if p is None])
    if partial is not None:
        reason = f"{partial[0]} lacks {', '.join(partial[1])}"
    else:
        reason = "they need an image-net.org login, so pixelar does not download them"
    shown = [(f"{names[0]} ... {names[-1]} (all {len(names)})",)] if len(names) > 1 else [names]
    hint = (
        f"Download the npz release of Downsampled ImageNet {resolution}x{resolution} (Chrabaszcz et al. 2017) "
        f"from image-net.org and unpack it; the files may also lie in {_subfolder(resolution, 'train')}/ and "
        f"{_subfolder(resolution, 'test')}/ below the directory."
    )
    raise not_found_error(folder(resolution), shown, data_dir, _title(resolution), hint, reason)


def _count(path: Path) -> int:
    """The number of images in a batch file, read from its labels (the small array)."""
    with _open_npz(path) as npz:
        labels = _member(npz, "labels", path)
    return len(_check_labels(labels, path))


def _read_batch(path: Path, resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """One batch file -> images uint8 (n, 3, R, R), labels int64 (n,) 0-based."""
    with _open_npz(path) as npz:
        data = _member(npz, "data", path)
        labels = _check_labels(_member(npz, "labels", path), path)
    d = 3 * resolution * resolution
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != d:
        raise ValueError(
            f"{path}: 'data' must be uint8 of shape (n, {d}) for {resolution}x{resolution} RGB images, got "
            f"{data.dtype} {data.shape}; is this the {resolution}x{resolution} release?"
        )
    if len(data) != len(labels):
        raise ValueError(f"{path}: {len(data)} images but {len(labels)} labels")
    # all red values, then all green, then all blue, each row-major: exactly (3, R, R) in C order
    return data.reshape(-1, 3, resolution, resolution), labels


def _open_npz(path: Path):
    try:
        return np.load(path, allow_pickle=False)  # refuses object arrays, which would unpickle
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise ValueError(f"{path}: cannot read as a Downsampled ImageNet npz batch ({e}); fetch it again") from e


def _member(npz, key: str, path: Path) -> np.ndarray:
    if key not in npz.files:
        raise ValueError(f"{path}: no {key!r} array (it has {', '.join(npz.files) or 'none'}); fetch it again")
    try:
        return npz[key]
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:  # a truncated or damaged member
        raise ValueError(f"{path}: cannot read its {key!r} array ({e}); fetch it again") from e


def _check_labels(labels: np.ndarray, path: Path) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise ValueError(f"{path}: 'labels' must be a 1-D integer array, got {labels.dtype} {labels.shape}")
    if labels.size and (labels.min() < 1 or labels.max() > NUM_CLASSES):
        raise ValueError(
            f"{path}: labels must be 1..{NUM_CLASSES} (the release counts from 1), got {labels.min()}..{labels.max()}"
        )
    return labels.astype(np.int64) - 1
