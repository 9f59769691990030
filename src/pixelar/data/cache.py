"""A dataset split converted once into one uint8 (N, C, H, W) ``.npy`` file, memory-mapped from then on.

Why: ImageNet 64x64 holds 15.7 GB of training pixels. N training processes (torchrun) that each read them
into memory would hold N copies; a memory-mapped file is held once, in the kernel's page cache, however many
processes map it, and only the pages that batches touch are ever read from disk.

Where: ``pixelar-<name>-<part>-<key>.images.npy`` (and ``.labels.npy``, int64 (N,), for labelled sets, and
``.sums.json``, its checksums) beside the dataset's files, or in the user cache directory
(``paths.cache_root()/<folder>/``) where that directory is not writable. ``key`` hashes the source files'
names, sizes, modification and status-change times and inode numbers, and the conversion's settings (e.g. the
resolution): changed files or settings get a new cache, and the older caches of the same name and part in that
directory are deleted once the new one is in place. The status-change time (ctime) catches a file rewritten
with its size and modification time restored: the kernel sets ctime on every change, restoring the mtime
included, and nothing can set it back; a file replaced by another gets another inode.

Checked: ``.sums.json`` holds the SHA-256 (16 hex digits) of every BLOCK_BYTES block of the images' bytes and
of the labels. Every open checks the labels, the first and last block and SAMPLE_BLOCKS blocks drawn at random
(the same in all processes of one torchrun job, from its run id, so that they agree on whether to rebuild);
``PIXELAR_CACHE_CHECK=full`` checks every block. A cache that fails (or cannot be read) is rebuilt, with a
one-line note, instead of being used.

How: the first process to need a missing or damaged cache takes an exclusive lock (``fcntl.flock`` on a
``.lock`` file beside it), checks again that the cache is still missing or damaged, converts, and renames the
finished files into place, the images last (``pixelar.io.write_atomic``: a crash never leaves a partial file
under a final name, and the images existing means the labels and sums do). Every other process, of the same
torchrun job or another, blocks on the lock and then maps the finished file. No process group is involved, so
this works before or without ``torch.distributed`` and on every node of a shared file system. A process
checks the very mapping it then uses, so a file renamed into place meanwhile is never mixed with another.

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
import random
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from pixelar import io
from pixelar.data import paths

# Part of every key: bump it when the conversion changes, so that older caches are rebuilt.
FORMAT_VERSION = 2
PREFIX = "pixelar-"
SUMS_FORMAT = "pixelar-cache-sums"
BLOCK_BYTES = 1 << 20  # the images' bytes are checksummed in blocks of 1 MiB
SAMPLE_BLOCKS = 8  # blocks checked at random at each open (besides the first and the last)
CHECK_ENV = "PIXELAR_CACHE_CHECK"  # "sample" (the default) or "full"
CHECKS = ("sample", "full")

# build(tmp_path) writes the images into tmp_path with new_image_file(), and returns the labels (or None).
Builder = Callable[[Path], "np.ndarray | None"]


def new_image_file(path: Path, n: int, shape: Sequence[int]) -> np.memmap:
    """A writable uint8 (n, *shape) .npy file at `path`, mapped into memory for the builder to fill."""
    return np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, *shape))


def source_key(root: Path, sources: Sequence[Path], settings: dict) -> str:
    """A 16-hex-digit hash of the source files (names below `root`, sizes, modification and status-change times,
    inode numbers) and settings."""
    entries = []
    for p in sources:
        st = p.stat()
        try:
            rel = str(p.relative_to(root))
        except ValueError:
            rel = str(p)
        entries.append([rel, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino])
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
    full = check_mode() == "full"
    dirs = [where, paths.cache_root() / folder]
    damaged: dict[Path, str] = {}
    for d in dirs:
        if _complete(d, stem, labelled):
            try:
                return _open(d, stem, shape, labelled, full)
            except _Damaged as e:
                damaged[d] = str(e)
    d = paths.first_writable(dirs)
    if d is None:
        raise OSError(
            f"cannot write the {title} cache: neither {dirs[0]} nor {dirs[1]} is writable; make one of them "
            "writable (the cache is written once, then memory-mapped)"
        )
    for other, why in damaged.items():
        if other != d:
            print(
                f"pixelar: the {title} {part} cache {other / stem}.images.npy is damaged ({why}); using {d} instead",
                file=sys.stderr,
            )
    with _locked(d / f".{PREFIX}{name}-{part}.lock"):
        if _complete(d, stem, labelled):  # another process may have built or rebuilt it while we waited
            try:
                return _open(d, stem, shape, labelled, full)
            except _Damaged as e:
                print(
                    f"pixelar: the {title} {part} cache {d / stem}.images.npy is damaged ({e}); rebuilding it",
                    file=sys.stderr,
                )
        _build(d, stem, name, part, labelled, build, title)
        try:
            return _open(d, stem, shape, labelled, full)
        except _Damaged as e:
            raise OSError(
                f"the {title} {part} cache {d / stem}.images.npy is damaged right after its conversion ({e}): "
                "check the disk"
            ) from None


def check_mode() -> str:
    """How much of a cache each open checks: $PIXELAR_CACHE_CHECK, "sample" (the default) or "full"."""
    mode = os.environ.get(CHECK_ENV) or "sample"
    if mode not in CHECKS:
        raise ValueError(f"{CHECK_ENV}={mode!r}: expected one of {', '.join(CHECKS)} (or unset: sample)")
    return mode


class _Damaged(Exception):
    """A cache that cannot be read or does not match its checksums; str() says where."""


def _complete(d: Path, stem: str, labelled: bool) -> bool:
    # The images file is renamed into place last: where it exists, the labels and sums do too (a sums file
    # missing beside it is damage, which _open finds).
    return (d / f"{stem}.images.npy").is_file() and (not labelled or (d / f"{stem}.labels.npy").is_file())


def _block_sums(flat: np.ndarray, blocks) -> list[str]:
    """The checksums of the given BLOCK_BYTES blocks of a flat uint8 array (a memmap: only they are read)."""
    return [_sum(flat[i * BLOCK_BYTES : (i + 1) * BLOCK_BYTES]) for i in blocks]


def _sum(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).data).hexdigest()[:16]


def _num_blocks(nbytes: int) -> int:
    return max(1, -(-nbytes // BLOCK_BYTES))


def _sample(num: int, full: bool) -> list[int]:
    """Which blocks of `num` an open checks: all (full), else the first, the last and SAMPLE_BLOCKS others at
    random; the draw is seeded by torchrun's run id where there is one, so that a job's processes agree."""
    if full or num <= SAMPLE_BLOCKS + 2:
        return list(range(num))
    rng = random.Random(os.environ.get("TORCHELASTIC_RUN_ID"))  # None: seeded from the OS, a new draw each time
    return sorted({0, num - 1, *rng.sample(range(1, num - 1), SAMPLE_BLOCKS)})


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
    images_path, labels_path, sums_path = (d / f"{stem}.{kind}" for kind in ("images.npy", "labels.npy", "sums.json"))
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
            labels = np.asarray(labels, dtype=np.int64)
            io.write_atomic(labels_path, lambda t: _save(t, labels))
        images = np.load(tmp, mmap_mode="r", allow_pickle=False)  # what the builder wrote, read back
        flat = images.reshape(-1)
        sums = {
            "format": SUMS_FORMAT,
            "block_bytes": BLOCK_BYTES,
            "shape": list(images.shape),
            "images": _block_sums(flat, range(_num_blocks(flat.nbytes))),
            "labels": _sum(labels) if labelled else None,
        }
        del images, flat
        io.write_json(sums_path, sums)

    io.write_atomic(images_path, write)  # last: the images existing means the labels and sums do
    # older caches of this dataset and part (other source files or settings), now replaced
    for old in d.glob(f"{PREFIX}{name}-{part}-*"):
        if old.suffix in (".npy", ".json") and not old.name.startswith(f"{stem}."):
            with contextlib.suppress(OSError):
                old.unlink()  # a process that still maps it keeps its pages until it unmaps them


def _save(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:  # np.save(path) would append ".npy" to the temporary name
        np.save(f, array, allow_pickle=False)


def _open(d: Path, stem: str, shape: Sequence[int], labelled: bool, full: bool) -> tuple[Tensor, Tensor | None]:
    """Map the images, read the labels and check both against the sums (a sample of the image blocks, or all
    where `full`); _Damaged saying what is wrong."""
    images_path, labels_path, sums_path = (d / f"{stem}.{kind}" for kind in ("images.npy", "labels.npy", "sums.json"))
    try:
        images = np.load(images_path, mmap_mode="c", allow_pickle=False)
        labels = np.load(labels_path, allow_pickle=False) if labelled else None
        sums = io.read_json(sums_path, "cache checksums")
    except (ValueError, OSError, EOFError) as e:
        raise _Damaged(f"unreadable: {e}") from None
    if images.dtype != np.uint8 or images.shape[1:] != tuple(shape) or not images.flags.c_contiguous:
        raise _Damaged(
            f"{images_path.name} holds {images.dtype} {images.shape}, not uint8 (N, {', '.join(map(str, shape))})"
        )
    if labels is not None and (labels.dtype != np.int64 or labels.shape != images.shape[:1]):
        raise _Damaged(f"its labels file does not hold {len(images)} int64 labels")
    flat = images.reshape(-1)  # a view of the mapping
    num = _num_blocks(flat.nbytes)
    stored = sums.get("images")
    if (
        sums.get("format") != SUMS_FORMAT
        or sums.get("block_bytes") != BLOCK_BYTES
        or sums.get("shape") != list(images.shape)
        or not isinstance(stored, list)
        or len(stored) != num
    ):
        raise _Damaged("its checksums file does not describe it")
    if labels is not None and _sum(labels) != sums.get("labels"):
        raise _Damaged("its labels file does not match its checksum")
    blocks = _sample(num, full)
    bad = [i for i, got in zip(blocks, _block_sums(flat, blocks)) if got != stored[i]]
    if bad:
        raise _Damaged(f"block {bad[0]} of {num} does not match its checksum")
    # from_numpy shares the mapping (no copy); the tensor keeps the memmap, and so the mapping, alive
    return torch.from_numpy(images), None if labels is None else torch.from_numpy(labels)
