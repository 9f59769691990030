"""Datasets for pixelar: loading, splits, binarization and batching.

Public entry points::

    list_datasets() -> list[str]
    load_dataset(name, split="train", data_dir=None, download=True, val_size=None) -> ImageDataset
    iterate_batches(ds, batch_size, shuffle, generator=None, drop_last=False, epoch=0)
        -> Iterator[(x int64 (B, C, H, W), y int64 (B,) or None)]
    first_images(ds, n) -> ImageDataset (the first n images); select(ds, slice) -> ImageDataset
    fixed_binarization(ds, generator) -> ImageDataset (a dynamically binarized set drawn once)
    codes_dataset(model, ds, batch_size=256, level=0) -> ImageDataset (a VQ-VAE's code maps of the images)
    export_images(ds, out_dir, start=0, n=8, overwrite=False) -> list[Path] (images as PNG files, labels.csv)

Files of built-in datasets are looked up as described in :mod:`pixelar.data.paths`
and downloaded (MD5-checked) by :mod:`pixelar.data.download` when missing. Downsampled
ImageNet and CelebA (which are not downloaded) are converted once into a cache file that
every process memory-maps (:mod:`pixelar.data.cache`).
"""

from pixelar.data.batches import fixed_binarization, iterate_batches
from pixelar.data.codes import codes_dataset
from pixelar.data.dataset import ImageDataset, first_images, select
from pixelar.data.errors import ChecksumError, DatasetNotFoundError, UnsafePickleError
from pixelar.data.export import export_images
from pixelar.data.registry import list_datasets, load_dataset

__all__ = [
    "ChecksumError",
    "DatasetNotFoundError",
    "ImageDataset",
    "codes_dataset",
    "export_images",
    "UnsafePickleError",
    "first_images",
    "fixed_binarization",
    "select",
    "iterate_batches",
    "list_datasets",
    "load_dataset",
]
