"""ImageDataset: an in-memory image dataset, the one thing every loader returns; first_images(ds, n)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from pixelar.types import ImageSpec


@dataclass
class ImageDataset:
    """Images (and optional class labels) held in memory as tensors.

    Attributes:
        images: uint8 tensor (N, C, H, W). For ordinary sets the values are the
            discrete pixel values, in [0, spec.num_values) (0/1 for binarized sets).
            If ``stochastic_binarize`` is True they are the 8-bit grayscale values
            (0..255) from which each batch is re-binarized.
        labels: int64 tensor (N,) of class ids, or None for unlabelled sets.
        spec: shape and value range of the images a model sees (what
            :func:`~pixelar.data.iterate_batches` yields, not what is stored).
        num_classes: number of classes, or None for unlabelled sets.
        name: the dataset name passed to :func:`~pixelar.data.load_dataset`.
        stochastic_binarize: if True, every batch is binarized afresh by
            Bernoulli(pixel / 255) ("dynamic binarization"); spec.num_values is 2.
        split: which split this is ("train", "val", "test" or "full_train").
    """

    images: Tensor
    labels: Tensor | None
    spec: ImageSpec
    num_classes: int | None
    name: str
    stochastic_binarize: bool = False
    split: str = "train"

    def __post_init__(self) -> None:
        # Catch loader bugs and hand-built datasets early, with a readable message,
        # instead of as a shape error deep inside a model.
        if not isinstance(self.images, Tensor) or self.images.dtype != torch.uint8:
            raise ValueError(f"ImageDataset.images must be a uint8 tensor, got {_describe(self.images)}")
        if self.images.dim() != 4 or tuple(self.images.shape[1:]) != self.spec.shape:
            raise ValueError(
                f"ImageDataset.images must have shape (N, {', '.join(map(str, self.spec.shape))}) "
                f"to match {self.spec}, got {tuple(self.images.shape)}"
            )
        if self.stochastic_binarize and self.spec.num_values != 2:
            raise ValueError("stochastic_binarize=True requires spec.num_values == 2")
        if self.labels is not None:
            if not isinstance(self.labels, Tensor) or self.labels.dtype != torch.int64:
                raise ValueError(f"ImageDataset.labels must be an int64 tensor, got {_describe(self.labels)}")
            if tuple(self.labels.shape) != (len(self.images),):
                raise ValueError(
                    f"ImageDataset.labels must have shape ({len(self.images)},), got {tuple(self.labels.shape)}"
                )
            if self.num_classes is None:
                raise ValueError("ImageDataset with labels needs num_classes")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __repr__(self) -> str:
        # The default dataclass repr would print the whole tensors.
        return (
            f"ImageDataset(name={self.name!r}, split={self.split!r}, n={len(self)}, spec={self.spec}, "
            f"num_classes={self.num_classes}, stochastic_binarize={self.stochastic_binarize})"
        )


def select(ds: ImageDataset, part: slice) -> ImageDataset:
    """The images ds.images[part] (and their labels) as a dataset of their own."""
    return dataclasses.replace(ds, images=ds.images[part], labels=None if ds.labels is None else ds.labels[part])


def first_images(ds: ImageDataset, n: int | None) -> ImageDataset:
    """The first n images of `ds` (all of them when n is None or >= len(ds))."""
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 0):
        # a negative n would slice from the end ([:-5] keeps all but 5 images) and silently score those
        raise ValueError(f"the number of images to keep (subset) must be None (all) or an integer >= 0, got {n!r}")
    if n is None or n >= len(ds):
        return ds
    return select(ds, slice(0, n))


def _describe(x: object) -> str:
    if isinstance(x, Tensor):
        return f"tensor of dtype {x.dtype}"
    return type(x).__name__


class RawSplit(NamedTuple):
    """What a format reader returns for one file split ("train" or "test" files).

    images: uint8 (N, C, H, W) 8-bit values; labels: int64 (N,) or None;
    num_classes: None when unlabelled.

    How "train" and "val" are cut from the training part (see splits.py):
    by default the images are in file order and each part is gathered by index (a copy). A reader whose
    images are memory-mapped (cache.py) stores them so that both parts are slices, i.e. views of the mapping:
    permuted: the images are in the order of ``splits.val_permutation(N)``, so for any val_size "val" is the
        last val_size images and "train" the others (the same images as the gathered parts, in another order);
    own_val: the last own_val images are the dataset's own validation images (CelebA's official partition),
        which are "val" whatever val_size says (another val_size is refused).
    """

    images: Tensor
    labels: Tensor | None
    num_classes: int | None
    permuted: bool = False
    own_val: int | None = None
