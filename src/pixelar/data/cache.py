"""A dataset split converted once into one uint8 (N, C, H, W) ``.npy`` file, memory-mapped from then on.

Why: ImageNet 64x64 holds 15.7 GB of training pixels. N training processes (torchrun) that each read them
into memory would hold N copies; a memory-mapped file is held once, in the kernel's page cache, however many
processes map it, and only the pages that batches touch are ever read from disk.

Where: ``pixelar-<name>-<part>-<key>.images.npy`` (and ``.labels.npy``, int64 (N,), for labelled sets)
beside the dataset's files, or in the user cache directory (``paths.cache_root()/<folder>/``) where that
directory is not writable. ``key`` hashes the source files' names, sizes and modification times and the
conversion's settings (e.g. the resolution): changed files or settings get a new cache, and the older caches
of the same name and part in that directory are deleted once the new one is in place.

How: the first process to need a missing cache takes an exclusive lock (``fcntl.flock`` on a ``.lock`` file
beside it), checks again that the cache is still missing, converts, and renames the finished file into place
(``pixelar.io.write_atomic``: a crash never leaves a partial cache under the final name). Every other process,
of the same torchrun job or another, blocks on the lock and then maps the finished file. No process group is
involved, so this works before or without ``torch.distributed`` and on every node of a shared file system.

Opened with ``np.load(mmap_mode="c")`` (copy-on-write): the pages are shared while they are only read, and a
stray in-place write to the tensor would change this process's copy of that page, never the file. (A
read-only mapping, "r", would kill the process with SIGSEGV on such a write: torch cannot know the memory is
read-only.)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from pixelar import io
from pixelar.data import paths

# Part of every key: bump it when the conversion changes, so that older caches are rebuilt.
FORMAT_VERSION = 1
PREFIX = "pixelar-"

# build(tmp_path) writes the images into tmp_path with new_image_file(), and returns the labels (or None).
Builder = Callable[[Path], "np.ndarray | None"]


def new_image_file(path: Path, n: int, shape: Sequence[int]) -> np.memmap:
    """A writable uint8 (n, *shape) .npy file at `path`, mapped into memory for the builder to fill."""
    return np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, *shape))


def source_key(root: Path, sources: Sequence[Path], settings: dict) -> str:
    """A 16-hex-digit hash of the source files (names below `root`, sizes, modification times) and settings."""
    entries = []
    for p in sources:
        st = p.stat()
        try:
            rel = str(p.relative_to(root))
        except ValueError:
            rel = str(p)
        entries.append([rel, st.st_size, st.st_mtime_ns])
    blob = json.dumps([FORMAT_VERSION, settings, entries], sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def open_or_build(
    where: Path,
    folder: str,
    name: str,
    part: str,
    key: str,
    shape: Sequence[int],
    labelled: bool,
    build: Builder,
    title: str,
) -> tuple[Tensor, Tensor | None]:
    """The memory-mapped images (uint8 (N, *shape), a view of the cache file) and labels (int64 (N,) or None)
    of one split, converting them with `build` first if no process has yet.

    Args:
        where: the directory of the dataset's files (the cache goes beside them where it can).
        folder: the dataset's folder name, for the fallback in the user cache directory.
        name, part, key: the cache's file name parts (dataset name, "train" or "test", source_key()).
        shape: (C, H, W) of every image.
        labelled: whether build returns labels.
        build: writes the images into the path it is given and returns the labels (see new_image_file).
        title: the dataset's human name, for messages.
    """
    stem = f"{PREFIX}{name}-{part}-{key}"
    dirs = [where, paths.cache_root() / folder]
    for d in dirs:
        if _complete(d, stem, labelled):
            return _open(d, stem, shape, labelled)
    d = paths.first_writable(dirs)
    if d is None:
        raise OSError(
            f"cannot write the {title} cache: neither {dirs[0]} nor {dirs[1]} is writable; make one of them "
            "writable (the cache is written once, then memory-mapped)"
        )
    with _locked(d / f".{PREFIX}{name}-{part}.lock"):
        if not _complete(d, stem, labelled):  # another process may have built it while we waited
            _build(d, stem, name, part, labelled, build, title)
    return _open(d, stem, shape, labelled)


def _complete(d: Path, stem: str, labelled: bool) -> bool:
    # The images file is renamed into place last: where it exists, the labels do too.
    return (d / f"{stem}.images.npy").is_file() and (not labelled or (d / f"{stem}.labels.npy").is_file())


@contextlib.contextmanager
def _locked(path: Path):
    """Hold an exclusive advisory lock on `path` (created if missing) until the block ends; the kernel drops
    it when the process ends, however it ends."""
    import fcntl  # here: pixelar.data imports on systems without fcntl; building a cache needs it

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _build(d: Path, stem: str, name: str, part: str, labelled: bool, build: Builder, title: str) -> None:
    images_path, labels_path = d / f"{stem}.images.npy", d / f"{stem}.labels.npy"
    # temporary files of a build that was killed (we hold the lock: no live process writes them)
    for old in d.glob(f".{PREFIX}{name}-{part}-*.tmp"):
        with contextlib.suppress(OSError):
            old.unlink()
    print(
        f"pixelar: converting the {title} {part} images into {images_path} (once; then memory-mapped)", file=sys.stderr
    )

    def write(tmp: Path) -> None:
        labels = build(tmp)
        if labelled:
            if labels is None:
                raise RuntimeError(f"the {title} reader returned no labels")
            io.write_atomic(labels_path, lambda t: _save(t, np.asarray(labels, dtype=np.int64)))

    io.write_atomic(images_path, write)
    # older caches of this dataset and part (other source files or settings), now replaced
    for old in d.glob(f"{PREFIX}{name}-{part}-*.npy"):
        if not old.name.startswith(f"{stem}."):
            with contextlib.suppress(OSError):
                old.unlink()  # a process that still maps it keeps its pages until it unmaps them


def _save(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:  # np.save(path) would append ".npy" to the temporary name
        np.save(f, array, allow_pickle=False)


def _open(d: Path, stem: str, shape: Sequence[int], labelled: bool) -> tuple[Tensor, Tensor | None]:
    images_path, labels_path = d / f"{stem}.images.npy", d / f"{stem}.labels.npy"
    try:
        images = np.load(images_path, mmap_mode="c", allow_pickle=False)
        labels = np.load(labels_path, allow_pickle=False) if labelled else None
    except (ValueError, OSError, EOFError) as e:
        raise ValueError(f"{d}: the cache file {stem}.*.npy is unreadable ({e}); delete it to rebuild it") from e
    if images.dtype != np.uint8 or images.shape[1:] != tuple(shape):
        raise ValueError(
            f"{images_path}: expected uint8 images of shape (N, {', '.join(map(str, shape))}), got "
            f"{images.dtype} {images.shape}; delete the file to rebuild it"
        )
    if labels is not None and (labels.dtype != np.int64 or labels.shape != images.shape[:1]):
        raise ValueError(f"{labels_path}: expected {len(images)} int64 labels; delete the file to rebuild it")
    # from_numpy shares the mapping (no copy); the tensor keeps the memmap, and so the mapping, alive
    return torch.from_numpy(images), None if labels is None else torch.from_numpy(labels)
