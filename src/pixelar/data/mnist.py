"""MNIST and Fashion-MNIST: 28x28 grayscale digits / clothes in IDX files, 10 classes."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from pixelar.data.dataset import RawSplit
from pixelar.data.download import ensure_files
from pixelar.data.idx import read_idx


@dataclass(frozen=True)
class MnistSource:
    """Where an MNIST-like dataset lives: its folder name and how to describe it."""

    folder: str
    title: str
    hint: str = ""


MNIST_SOURCES = {
    "fashion_mnist": MnistSource(
        "fashion-mnist", "Fashion-MNIST", "On Debian/Ubuntu: apt-get install dataset-fashion-mnist"
    ),
    "mnist": MnistSource("mnist", "MNIST"),
}

NUM_CLASSES = 10

# Base names (without .gz) of the (images, labels) files of each part.
_PART_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def load_mnist_like(
    family: str, part: str, data_dir: str | os.PathLike | None = None, download: bool = True
) -> RawSplit:
    """Load the "train" (60k) or "test" (10k) files of ``family`` ("mnist" or "fashion_mnist").

    Returns images uint8 (N, 1, 28, 28) and labels int64 (N,).
    """
    source = MNIST_SOURCES[family]
    # The gzipped name first: it is what is published and downloaded.
    required = [(base + ".gz", base) for base in _PART_FILES[part]]
    images_path, labels_path = ensure_files(source.folder, required, data_dir, download, source.title, source.hint)
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3 or images.dtype != "uint8":
        raise ValueError(f"{images_path}: expected uint8 images (N, H, W), got {images.dtype} {images.shape}")
    if labels.ndim != 1 or labels.dtype != "uint8":
        raise ValueError(f"{labels_path}: expected uint8 labels (N,), got {labels.dtype} {labels.shape}")
    if len(labels) != len(images):
        raise ValueError(f"{labels_path}: {len(labels)} labels for {len(images)} images in {images_path}")
    if len(labels) and labels.max() >= NUM_CLASSES:
        raise ValueError(f"{labels_path}: label {labels.max()} out of range 0..{NUM_CLASSES - 1}")
    # (N, H, W) -> (N, 1, H, W): a channel axis for the grayscale images.
    return RawSplit(
        torch.from_numpy(images).unsqueeze(1),
        torch.from_numpy(labels).to(torch.int64),
        NUM_CLASSES,
    )
