"""Find a dataset's files on disk, downloading missing ones with an MD5 check.

The canonical addresses and MD5 checksums are those used by torchvision.

Note on Debian's ``dataset-fashion-mnist`` (/usr/share/datasets/fashion-mnist): its
``.gz`` files do NOT have the MD5s below, because the package re-gzipped them at
build time (the gzip header time stamp is 2020-06-05, the package's upload date).
Their decompressed contents do match the published MD5s of the original
uncompressed files (``FASHION_MNIST_RAW_MD5``), so they are the original data.
Checksums are only checked for downloads, never for files found locally.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import sys
import tempfile
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pixelar.data import paths
from pixelar.data.errors import ChecksumError, DatasetNotFoundError


@dataclass(frozen=True)
class RemoteFile:
    """One downloadable file: its name on disk, its address and its MD5 checksum."""

    name: str
    url: str
    md5: str


_FASHION_BASE = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_MNIST_BASE = "https://ossci-datasets.s3.amazonaws.com/mnist/"


def _from_base(base: str, md5s: dict[str, str]) -> tuple[RemoteFile, ...]:
    return tuple(RemoteFile(name, base + name, md5) for name, md5 in md5s.items())


# Keyed by dataset folder name (see paths.py). Tests point these at a local server.
REMOTE_FILES: dict[str, tuple[RemoteFile, ...]] = {
    "fashion-mnist": _from_base(
        _FASHION_BASE,
        {
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
    ),
    "mnist": _from_base(
        _MNIST_BASE,
        {
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
    ),
    "cifar10": _from_base(
        "https://www.cs.toronto.edu/~kriz/",
        {
            "cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a",
        },
    ),
}

# MD5 of the decompressed original Fashion-MNIST files; the Debian copies match these.
FASHION_MNIST_RAW_MD5 = {
    "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
    "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
    "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
}

# Seconds without progress before a connection or read is given up.
DOWNLOAD_TIMEOUT_S = 20.0
_CHUNK = 1 << 20


def download_file(remote: RemoteFile, target_dir: Path, timeout: float | None = None) -> Path:
    """Download ``remote`` into ``target_dir/remote.name`` and return that path.

    The data go to a temporary file in ``target_dir`` that is renamed into place only
    after its MD5 matches, so an interrupted or corrupt download never looks like a
    complete file.

    Raises:
        ChecksumError: the MD5 differs (the temporary file is deleted).
        OSError, http.client.HTTPException: network or disk failure.
    """
    timeout = DOWNLOAD_TIMEOUT_S if timeout is None else timeout
    dest = target_dir / remote.name
    fd, tmp_name = tempfile.mkstemp(prefix=f".{remote.name}.", suffix=".part", dir=target_dir)
    tmp = Path(tmp_name)
    try:
        md5 = hashlib.md5(usedforsecurity=False)
        print(f"pixelar: downloading {remote.url} -> {dest}", file=sys.stderr)
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(remote.url, timeout=timeout) as response:
            while chunk := response.read(_CHUNK):
                md5.update(chunk)
                out.write(chunk)
        got = md5.hexdigest()
        if got != remote.md5:
            raise ChecksumError(
                f"checksum mismatch for downloaded {remote.name} (from {remote.url}): "
                f"expected MD5 {remote.md5}, got {got}; the file was deleted"
            )
        os.replace(tmp, dest)
    finally:
        # After a successful os.replace the temporary name no longer exists.
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return dest


def ensure_files(
    folder: str,
    required: Sequence[Sequence[str]],
    data_dir: str | os.PathLike | None,
    download: bool,
    title: str,
    hint: str = "",
) -> list[Path]:
    """Return the paths of the required files of a dataset, downloading them if needed.

    Args:
        folder: dataset folder name (a key of ``REMOTE_FILES``).
        required: for each needed file, the names it may have; one of them must be
            the name of a ``REMOTE_FILES[folder]`` entry, which is what gets downloaded.
        data_dir: optional user directory, searched first and used for downloads.
        download: if False, never touch the network.
        title: human name of the dataset, for messages.
        hint: extra advice appended to the not-found message (e.g. an apt-get command).

    Raises:
        DatasetNotFoundError: files missing and not downloadable (download=False,
            no network, HTTP error, no writable directory).
        ChecksumError: a download was corrupt.
    """
    found = paths.locate(folder, required, data_dir)
    if found is not None:
        return found

    def not_found(reason: str) -> DatasetNotFoundError:
        return not_found_error(folder, required, data_dir, title, hint, reason)

    if not download:
        raise not_found("download=False")
    target = _download_dir(folder, data_dir)
    if target is None:
        raise not_found("no writable directory to download into")
    remotes = {r.name: r for r in REMOTE_FILES[folder]}
    for alternatives in required:
        if paths.find_in(target, alternatives) is not None:
            continue  # a previous (partial) download already fetched this one
        remote = next(remotes[name] for name in alternatives if name in remotes)
        try:
            download_file(remote, target)
        except (OSError, http.client.HTTPException) as e:
            raise not_found(f"download from {remote.url} failed: {e}") from e
    return [paths.find_in(target, alternatives) for alternatives in required]  # type: ignore[misc]


def not_found_error(
    folder: str,
    required: Sequence[Sequence[str]],
    data_dir: str | os.PathLike | None,
    title: str,
    hint: str,
    reason: str,
) -> DatasetNotFoundError:
    """The error for missing files: which are needed (`required`: the names each may have), where they may be
    put, `reason` and `hint`; it names the argument data_dir."""
    return DatasetNotFoundError(*_not_found_message(folder, required, data_dir, title, hint, reason))


def _download_dir(folder: str, data_dir: str | os.PathLike | None) -> Path | None:
    """First writable download directory: ``data_dir/<folder>``, else the user cache."""
    candidates = [Path(data_dir).expanduser() / folder] if data_dir is not None else []
    candidates.append(paths.cache_root() / folder)
    return paths.first_writable(candidates)


def _not_found_message(
    folder: str,
    required: Sequence[Sequence[str]],
    data_dir: str | os.PathLike | None,
    title: str,
    hint: str,
    reason: str,
) -> tuple[str, str, str, str]:
    """The message as DatasetNotFoundError's (before, argument, spelled, after): it names the argument data_dir."""
    needed = ", ".join(" or ".join(alts) for alts in required)
    where = "\n".join(f"  {d}" for d in paths.search_dirs(folder, data_dir))
    before = f"{title} files not found ({reason}).\nNeeded: {needed}.\nPut them in one of:\n{where}\nor pass "
    after = f" / set ${paths.DATA_ENV}=DIR (DIR itself or DIR/{folder}/)." + (f"\n{hint}" if hint else "")
    return before, "data_dir", "data_dir=DIR", after
