"""Dataset names and load_dataset: from a name and split to an ImageDataset."""

from __future__ import annotations

import torch

from pixelar.data import celeba, folder, imagenet, imagenet_oord
from pixelar.data.cifar import load_cifar10
from pixelar.data.dataset import ImageDataset, RawSplit
from pixelar.data.mnist import MNIST_SOURCES, load_mnist_like
from pixelar.data.npz import load_npz
from pixelar.data.splits import check_split, check_val_size, default_val_size, train_val_indices
from pixelar.errors import shown
from pixelar.types import ImageSpec

# Pixel >= this is 1 in the fixed binarization of "*_binary" sets.
BINARY_THRESHOLD = 128

# Built-in name -> (source family, binarization: None, "fixed" or "dynamic").
_BUILTINS: dict[str, tuple[str, str | None]] = {}
for _family in MNIST_SOURCES:
    _BUILTINS[_family] = (_family, None)
    _BUILTINS[f"{_family}_binary"] = (_family, "fixed")
    _BUILTINS[f"{_family}_dynamic"] = (_family, "dynamic")
_BUILTINS["cifar10"] = ("cifar10", None)
# Memory-mapped sets (cache.py): the name gives the resolution (celeba128, celeba_hq512, ...).
for _r in imagenet.RESOLUTIONS:
    _BUILTINS[imagenet.folder(_r)] = ("imagenet", None)  # Chrabaszcz et al. 2017's npz release
for _r in imagenet_oord.RESOLUTIONS:
    _BUILTINS[imagenet_oord.folder(_r)] = ("imagenet_oord", None)  # van den Oord et al. 2016's PNG archives
_BUILTINS[celeba.CELEBA] = ("celeba", None)
_BUILTINS[celeba.CELEBA_HQ] = ("celeba", None)

# KIND:PATH names of the user's own files (folder+convert: an image folder read with conversions)
_PATH_PREFIXES = ("npz:", f"{folder.KIND}:", f"{folder.CONVERT_KIND}:")


def list_datasets() -> list[str]:
    """Names of the built-in datasets.

    ``load_dataset`` also accepts ``npz:/path/to/file.npz``, ``folder:/path/to/dir`` (``folder+convert:`` to
    convert images that are read only converted) and CelebA at another resolution R, ``celebaR`` (default 64)
    or ``celeba_hqR`` (default 256).
    """
    return sorted(_BUILTINS)


def load_dataset(
    name: str,
    split: str = "train",
    data_dir: str | None = None,
    download: bool = True,
    val_size: int | None = None,
) -> ImageDataset:
    """Load one split of a dataset: into memory, or memory-mapped from a cache file for the large sets
    (imagenet32/64, imagenet32_oord/64_oord, celeba, celeba_hq: see pixelar.data.cache), where every split is a
    view of the mapping.

    Args:
        name: a name from :func:`list_datasets`, ``npz:PATH``, ``folder:PATH`` or ``folder+convert:PATH`` (an
            image folder whose grey and colour files may mix, with 16-bit samples, alpha or CMYK: converted,
            and what was converted reported on stderr; see pixelar.data.folder).
        split: "train", "val" (carved from the training files), "test" or
            "full_train" (train + val).
        data_dir: directory searched first for built-in datasets' files (itself and
            its ``<dataset>/`` subfolder) and used for downloads.
        download: fetch missing built-in files from their canonical address
            (MD5-checked). If False, missing files raise DatasetNotFoundError at once.
        val_size: images in "val" (default: 5000 for built-in sets, at most N // 10, otherwise
            max(1, N // 10)); only used by the "train" and "val" splits. CelebA with its official
            partition file has its own "val" images, which val_size may not change.

    Raises:
        ValueError: unknown name or split, or corrupt data files.
        DatasetNotFoundError: built-in files missing and not downloadable.
    """
    check_split(split)
    part = "test" if split == "test" else "train"
    binarize: str | None = None
    celeba_kind = celeba.parse_name(name)
    if name in _BUILTINS or celeba_kind is not None:
        family, binarize = _BUILTINS.get(name, ("celeba", None))
        builtin = True
        if family == "cifar10":
            raw = load_cifar10(part, data_dir, download)
        elif family == "imagenet":
            raw = imagenet.load_imagenet(int(name.removeprefix("imagenet")), part, data_dir)
        elif family == "imagenet_oord":
            raw = imagenet_oord.load_imagenet_oord(imagenet_oord.resolution_of(name), part, data_dir)
        elif family == "celeba":
            raw = celeba.load_celeba(*celeba_kind, part, data_dir)  # type: ignore[misc]
        else:
            raw = load_mnist_like(family, part, data_dir, download)
    elif name.startswith(_PATH_PREFIXES):
        kind, _, path = name.partition(":")
        if not path:
            raise ValueError(f"dataset name {name!r} needs a path after '{kind}:'")
        builtin = False
        if kind == "npz":
            raw = load_npz(path, part)
        else:
            raw = folder.load_folder(path, part, convert=kind == folder.CONVERT_KIND)
    else:
        raise ValueError(
            f"unknown dataset {shown(name)}; valid names: {', '.join(list_datasets())}, celebaR or celeba_hqR "
            "(CelebA at resolution R), npz:/path/to/file.npz, folder:/path/to/dir, folder+convert:/path/to/dir"
        )

    n = len(raw.images)
    if n == 0:
        raise ValueError(
            f"dataset {name!r}: its {part} images are empty (0 images); a dataset needs images in "
            "both its training and its test part"
        )
    if split in ("train", "val"):
        if n < 2:  # "val" is carved from the training images: at least one must be left for each
            raise ValueError(
                f"dataset {name!r} has only 1 training image: the {split!r} split needs at least 2 "
                "(some are held out as 'val'); add training images"
            )
        if raw.own_val is not None:  # the dataset's own validation images (CelebA's official partition)
            if val_size is not None and val_size != raw.own_val:
                raise ValueError(
                    f"dataset {name!r} has its own {raw.own_val} validation images, which are its 'val' split; "
                    f"val_size={val_size} cannot change them (leave val_size=None)"
                )
            size = raw.own_val
        else:
            size = default_val_size(n, builtin) if val_size is None else val_size
        if raw.permuted or raw.own_val is not None:
            # stored with "val" last (memory-mapped): both parts are slices, i.e. views of the mapping
            check_val_size(n, size)
            part_slice = slice(0, n - size) if split == "train" else slice(n - size, n)
            labels = raw.labels[part_slice] if raw.labels is not None else None
            raw = RawSplit(raw.images[part_slice], labels, raw.num_classes)
        else:
            train_idx, val_idx = train_val_indices(n, size)
            raw = _select(raw, train_idx if split == "train" else val_idx)

    images = raw.images
    channels, height, width = images.shape[1:]
    num_values = 256
    if binarize == "fixed":
        images = (images >= BINARY_THRESHOLD).to(torch.uint8)
        num_values = 2
    elif binarize == "dynamic":
        num_values = 2  # images stay 8-bit; iterate_batches binarizes each batch
    return ImageDataset(
        images=images.contiguous(),
        labels=raw.labels,
        spec=ImageSpec(int(channels), int(height), int(width), num_values),
        num_classes=raw.num_classes,
        name=name,
        stochastic_binarize=binarize == "dynamic",
        split=split,
    )


def _select(raw: RawSplit, idx: torch.Tensor) -> RawSplit:
    labels = raw.labels[idx] if raw.labels is not None else None
    return RawSplit(raw.images[idx], labels, raw.num_classes)
