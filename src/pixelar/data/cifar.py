"""CIFAR-10: 32x32 RGB images in 10 classes, from the python-pickle release.

Reads ``cifar-10-python.tar.gz`` directly (members are never extracted to disk)
or an already extracted ``cifar-10-batches-py/`` directory. Every pickle goes
through the restricted unpickler (safe_pickle.py).
"""

from __future__ import annotations

import os
import tarfile
import zlib
from pathlib import Path

import numpy as np
import torch

from pixelar.data.dataset import RawSplit
from pixelar.data.download import ensure_files
from pixelar.data.errors import UnsafePickleError
from pixelar.data.safe_pickle import safe_loads

FOLDER = "cifar10"
ARCHIVE_NAME = "cifar-10-python.tar.gz"
EXTRACTED_NAME = "cifar-10-batches-py"
NUM_CLASSES = 10
# A batch pickle holds 10,000 images of 3,072 bytes with their labels and file names: 31.0 MB as released, up
# to twice that re-pickled at protocol 2 by Python 3 (which stores bytes as latin-1 text). A larger member or
# file is refused from its size, before it is read: a small tarball can hold gigabytes of zeros.
MAX_BATCH_BYTES = 64 * 2**20
_PART_MEMBERS = {
    "train": [f"data_batch_{i}" for i in range(1, 6)],
    "test": ["test_batch"],
}


def load_cifar10(part: str, data_dir: str | os.PathLike | None = None, download: bool = True) -> RawSplit:
    """Load the "train" (50k) or "test" (10k) batches: images uint8 (N, 3, 32, 32), labels int64 (N,)."""
    # The extracted directory first: reading it needs no decompression.
    (path,) = ensure_files(FOLDER, [(EXTRACTED_NAME, ARCHIVE_NAME)], data_dir, download, "CIFAR-10")
    members = _PART_MEMBERS[part]
    if path.is_dir():
        blobs = [(path / m, _read_file(path / m)) for m in members]
    else:
        blobs = _read_tar_members(path, [f"{EXTRACTED_NAME}/{m}" for m in members])
    images, labels = zip(*(_parse_batch(blob, where) for where, blob in blobs))
    return RawSplit(
        torch.from_numpy(np.concatenate(images)),
        torch.from_numpy(np.concatenate(labels)),
        NUM_CLASSES,
    )


def _read_file(path: Path) -> bytes:
    if not path.is_file():
        raise ValueError(f"{path.parent}: missing CIFAR-10 batch file {path.name}")
    _check_size(path.stat().st_size, path, "the file is corrupt: replace it with the released one")
    return path.read_bytes()


def _check_size(size: int, where: str | Path, remedy: str) -> None:
    if size > MAX_BATCH_BYTES:
        raise ValueError(
            f"{where} is {size:,} bytes, more than a CIFAR-10 batch can be ({MAX_BATCH_BYTES:,} bytes at most; "
            f"31 MB as released); {remedy}"
        )


def _read_tar_members(archive: Path, names: list[str]) -> list[tuple[str, bytes]]:
    """Bytes of the named regular-file members of a tarball, in the order given."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            out = []
            for name in names:
                try:
                    member = tar.getmember(name)
                except KeyError:
                    raise ValueError(f"{archive}: missing member {name}") from None
                f = tar.extractfile(member) if member.isfile() else None
                if f is None:
                    raise ValueError(f"{archive}: member {name} is not a regular file")
                # the size in the member's header: checked before anything is read
                _check_size(member.size, f"{archive}:{name}", "the archive is corrupt: delete it and fetch it again")
                out.append((f"{archive}:{name}", f.read()))
            return out
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise ValueError(f"{archive}: corrupt tar archive ({e})") from e


def _parse_batch(blob: bytes, where: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR batch pickle -> images uint8 (n, 3, 32, 32), labels int64 (n,)."""
    try:
        batch = safe_loads(blob)
    except UnsafePickleError as e:
        raise UnsafePickleError(f"{where}: {e}") from None
    except Exception as e:  # any malformed pickle: UnpicklingError, EOFError, TypeError, ...
        raise ValueError(f"{where}: not a valid CIFAR-10 batch pickle ({type(e).__name__}: {e})") from e
    if not isinstance(batch, dict):
        raise ValueError(f"{where}: expected a pickled dict, got {type(batch).__name__}")
    data = _get(batch, "data", where)
    labels = _get(batch, "labels", where)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(f"{where}: 'data' must be a uint8 array (n, 3072), got {_describe(data)}")
    labels = np.asarray(labels)
    if labels.shape != (len(data),) or labels.dtype.kind not in "iu":
        raise ValueError(f"{where}: 'labels' must be {len(data)} integers, got {_describe(labels)}")
    if len(labels) and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise ValueError(f"{where}: labels out of range 0..{NUM_CLASSES - 1}")
    # Each row is 1024 red, then 1024 green, then 1024 blue values, row-major:
    # exactly (3, 32, 32) in C order.
    return data.reshape(-1, 3, 32, 32).copy(), labels.astype(np.int64)


def _get(batch: dict, key: str, where: str | Path):
    # Python-2 pickles read with encoding="bytes" have bytes keys; re-pickled ones may have str.
    for k in (key.encode(), key):
        if k in batch:
            return batch[k]
    raise ValueError(f"{where}: batch has no {key!r} entry (keys: {sorted(map(str, batch))})")


def _describe(x: object) -> str:
    if isinstance(x, np.ndarray):
        return f"{x.dtype} array of shape {x.shape}"
    return type(x).__name__
