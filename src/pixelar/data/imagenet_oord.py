"""Downsampled ImageNet 32x32 and 64x64 of van den Oord, Kalchbrenner and Kavukcuoglu 2016 (Pixel Recurrent
Neural Networks): the "old", unlabelled version of the classic bits/dim tables (PixelRNN, Gated PixelCNN, Image
Transformer, Sparse Transformer; openai/vdvae's ImageNet checkpoints). Not the npz release of imagenet.py:
numbers on the two are not comparable (docs/datasets.md).

Files, once at http://image-net.org/small/ (no login; that address is offline now):
    train_32x32.tar   one folder, train_32x32/, of RGB PNG files, one image per file: 1,281,149 images
    valid_32x32.tar   valid_32x32/, 49,999 images: the "test" split
    train_64x64.tar, valid_64x64.tar: the same at 64x64
or, in an archive's place, the .npy file that openai/vdvae's setup_imagenet.sh makes of it (files_to_npy.py):
imagenet32-train.npy, imagenet32-valid.npy (imagenet64-...), uint8 (N, R, R, 3). The archive is used where both
are there.

An archive is read member by member, never extracted: a first pass reads the headers alone (each image's name,
offset and size), the second reads the PNG files in the archive's order, each decoded by the strict image reader
(pixelar.image_files) and checked to be RxR 8-bit RGB. Memory: the headers' names, offsets and sizes (tens of bytes
an image), one PNG at a time (MAX_MEMBER_BYTES at most, refused from its header before it is read), and never
tarfile's list of every header it has read; headers whose data tarfile itself would read whole (pax and long-name
data, global pax headers, sparse maps) are capped or refused as they are read (_Header). The images are in the
order of their sorted member names (an archive's own order is whatever the tool that wrote it met on disk); a .npy
file's are in its order.

As for the npz release, the images are converted once into a memory-mapped cache (cache.py), the training images
in the order of the fixed validation permutation (splits.py), so that "train" and "val" are views of the mapping.
"""

from __future__ import annotations

import os
import tarfile
from array import array
from pathlib import Path

import numpy as np

from pixelar.data import cache, paths
from pixelar.data.dataset import RawSplit
from pixelar.data.download import not_found_error
from pixelar.data.splits import val_permutation
from pixelar.errors import shown
from pixelar.image_files import ConversionNeeded, open_image, read_pixels

RESOLUTIONS = (32, 64)
SUFFIX = "_oord"  # imagenet32_oord, imagenet64_oord
URL = "http://image-net.org/small/"
# A 64x64 RGB PNG holds at most 12,352 bytes of rows (a filter byte and 192 samples each), a little more when
# stored uncompressed; 1 MiB leaves room for any metadata chunks. A larger member is refused from its size in
# its header, before it is read: a small archive can claim gigabytes.
MAX_MEMBER_BYTES = 1 << 20
# The data of a pax or GNU long-name header, which tarfile reads whole into memory: a few hundred bytes in a
# real archive.
MAX_HEADER_BYTES = 1 << 16
MAX_NAME_BYTES = 255
# The release's training archive has 1,281,149 images; the first pass keeps each image's name, so an archive
# of far more members is refused rather than listed.
MAX_IMAGES = 2_000_000
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
NPY_CHUNK = 1024  # images copied at a time from a .npy file
NAME_CHUNK = 1 << 16  # member names gathered into one numpy array at a time
_EXTENDED = (
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.SOLARIS_XHDTYPE,
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
)
_FILE_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)


def folder(resolution: int) -> str:
    """The dataset's name and folder: imagenet32_oord, imagenet64_oord."""
    return f"imagenet{resolution}{SUFFIX}"


def resolution_of(name: str) -> int | None:
    """32 or 64 for imagenet32_oord or imagenet64_oord, else None."""
    return next((r for r in RESOLUTIONS if name == folder(r)), None)


def archive_name(resolution: int, part: str) -> str:
    return f"{'train' if part == 'train' else 'valid'}_{resolution}x{resolution}.tar"


def npy_name(resolution: int, part: str) -> str:
    return f"imagenet{resolution}-{'train' if part == 'train' else 'valid'}.npy"


def load_imagenet_oord(resolution: int, part: str, data_dir: str | os.PathLike | None = None) -> RawSplit:
    """The "train" or "test" (validation) images of van den Oord et al.'s Downsampled ImageNet at 32 or 64: uint8
    (N, 3, R, R) memory-mapped from the cache, no labels."""
    if resolution not in RESOLUTIONS:
        raise ValueError(
            f"van den Oord et al.'s Downsampled ImageNet comes at resolutions {RESOLUTIONS}, got {resolution}"
        )
    where, path = _locate(resolution, part, data_dir)
    order = "val_permutation" if part == "train" else "file"
    key = cache.source_key(where, [path], {"resolution": resolution, "order": order})
    shape = (3, resolution, resolution)
    title = _title(resolution)

    def build(tmp: Path) -> None:
        before = _status(path)
        if path.suffix == ".tar":
            names, offsets, sizes = _index(path, resolution, part)
            n = len(names)
            rank = np.empty(n, dtype=np.int64)
            rank[np.argsort(names, kind="stable")] = np.arange(n)  # image i is the rank[i]-th in sorted names
        else:
            images = _open_npy(path, resolution)
            n = len(images)
            rank = np.arange(n)
        dest = rank
        if part == "train":  # position k holds (sorted) image perm[k]: image j goes to where perm holds j
            where_in_perm = np.empty(n, dtype=np.int64)
            where_in_perm[val_permutation(n).numpy()] = np.arange(n)
            dest = where_in_perm[rank]
        out = cache.new_image_file(tmp, n, shape)
        if path.suffix == ".tar":
            _read_archive(path, resolution, names, offsets, sizes, dest, out)
        else:
            for s in range(0, n, NPY_CHUNK):  # (n, R, R, 3) -> (n, 3, R, R), a chunk at a time
                out[dest[s : s + NPY_CHUNK]] = images[s : s + NPY_CHUNK].transpose(0, 3, 1, 2)
        if _status(path) != before:
            raise ValueError(f"{path} changed while it was read; run again once it is complete")
        out.flush()
        del out
        return None

    images, _ = cache.open_or_build(
        where, folder(resolution), folder(resolution), part, key, shape, False, build, title
    )
    return RawSplit(images, None, None, permuted=part == "train")


def _title(resolution: int) -> str:
    return f"Downsampled ImageNet {resolution}x{resolution} (van den Oord et al. 2016)"


def _status(path: Path) -> tuple[int, int, int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino


def _locate(resolution: int, part: str, data_dir) -> tuple[Path, Path]:
    """(the dataset directory, the part's archive or .npy file) from the first search directory holding either;
    else DatasetNotFoundError naming both, where to put them and where to get them."""
    names = (archive_name(resolution, part), npy_name(resolution, part))
    for d in paths.search_dirs(folder(resolution), data_dir):
        found = paths.find_in(d, names)
        if found is not None and found.is_file():
            return d, found
    r = resolution
    hint = (
        f"Download {archive_name(r, 'train')} and {archive_name(r, 'test')}, the release of van den Oord et al. 2016 "
        f"(once at {URL}, which is offline now: copies of the same files circulate), or use the "
        f"{npy_name(r, 'train')} and {npy_name(r, 'test')} that openai/vdvae's setup_imagenet.sh makes of them. "
        f"Not the npz release of image-net.org (Chrabaszcz et al. 2017): that is dataset imagenet{r}."
    )
    reason = "pixelar does not download them"
    raise not_found_error(folder(r), [names], data_dir, _title(r), hint, reason)


class _Refused(ValueError):
    """A header refused while tarfile reads it; the message lacks the archive's name, which _index adds."""


class _Header(tarfile.TarInfo):
    """A tar header that refuses, before tarfile reads them into memory, what an image member has no use for and a
    hostile archive could make huge: extended data (a pax header, a GNU long name) above MAX_HEADER_BYTES, global
    pax headers above that in all (tarfile merges them into one dict kept for the whole archive), and sparse
    files (whose maps tarfile reads whole). _proc_member is where tarfile dispatches on a header's type, and the
    _proc_gnusparse_* methods where it reads sparse maps; the headers that follow an extended one are read
    through this class too."""

    def _proc_member(self, tar):
        where = f"the tar header at byte {self.offset:,}"
        if self.type == tarfile.GNUTYPE_SPARSE:
            raise _Refused(f"the member at byte {self.offset:,} is a sparse file, not an image file")
        if self.type in _EXTENDED and self.size > MAX_HEADER_BYTES:
            raise _Refused(
                f"{where} claims {self.size:,} bytes of extended data, more than a name or pax header can need "
                f"({MAX_HEADER_BYTES:,} bytes at most)"
            )
        if self.type == tarfile.XGLTYPE:
            tar.global_header_bytes += self.size
            if tar.global_header_bytes > MAX_HEADER_BYTES:
                raise _Refused(f"its global pax headers hold more than {MAX_HEADER_BYTES:,} bytes, at {where}")
        return super()._proc_member(tar)

    def _proc_gnusparse_00(self, next, *args):
        raise _Refused(f"member {shown(next.name)} is a sparse file, not an image file")

    _proc_gnusparse_01 = _proc_gnusparse_10 = _proc_gnusparse_00


class _Archive(tarfile.TarFile):
    """A tar archive read through _Header, counting the bytes of its global pax headers."""

    tarinfo = _Header
    global_header_bytes = 0


def _index(path: Path, resolution: int, part: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The first pass, over the headers alone: the PNG files of the archive's one folder in the archive's order ->
    their names (bytes, numpy "S"), the offsets of their data and their sizes (int64 (n,)). Any other member is
    refused, naming it."""
    top = archive_name(resolution, part).removesuffix(".tar")
    fetch = f"the release holds only the PNG files of {top}/: fetch {archive_name(resolution, part)} again"
    names: list[bytes] = []  # the last few names; the earlier ones in chunks of numpy "S" arrays (compact)
    chunks: list[np.ndarray] = []
    offsets, sizes = array("q"), array("q")
    try:
        with _Archive.open(path, "r:") as tar:
            while (m := tar.next()) is not None:
                tar.members.clear()  # tarfile keeps every header it reads: 1.28M of them would hold memory
                name = m.name.removeprefix("./")
                where = _member(path, m.name)
                if m.isdir() and name in (top, "."):
                    continue
                parent, _, base = name.rpartition("/")
                if parent != top:
                    archive = archive_name(resolution, part)
                    raise ValueError(f"{where} lies outside {top}/, the one folder of {archive}: is this {archive}?")
                if m.type not in _FILE_TYPES:  # (sparse files were refused as their headers were read)
                    raise ValueError(f"{where} is {_kind(m)}, not an image file; {fetch}")
                if not base.lower().endswith(".png"):
                    raise ValueError(f"{where} is not a PNG file (by its name); {fetch}")
                key = m.name.encode("utf-8", "surrogateescape")
                if len(key) > MAX_NAME_BYTES:
                    raise ValueError(f"{where}: a name of {len(key):,} bytes (at most {MAX_NAME_BYTES}); {fetch}")
                if m.size > MAX_MEMBER_BYTES:
                    raise ValueError(
                        f"{where} is {m.size:,} bytes, more than a {resolution}x{resolution} PNG can need "
                        f"({MAX_MEMBER_BYTES:,} bytes at most); the archive is damaged: fetch it again"
                    )
                if len(offsets) == MAX_IMAGES:
                    raise ValueError(
                        f"{path} holds more than {MAX_IMAGES:,} images (the release's training archive has "
                        f"1,281,149); is this {archive_name(resolution, part)}?"
                    )
                names.append(key)
                offsets.append(m.offset_data)
                sizes.append(m.size)
                if len(names) == NAME_CHUNK:
                    chunks.append(np.array(names))
                    names.clear()
    except _Refused as e:
        raise ValueError(f"{path}: {e}; the archive is damaged or not the release: fetch it again") from None
    except (tarfile.TarError, EOFError) as e:
        raise ValueError(
            f"{path}: not a readable tar archive ({e}); the release's .tar files are uncompressed tar archives: "
            "fetch it again"
        ) from e
    if not offsets:
        raise ValueError(f"{path} holds no PNG files in {top}/; fetch {archive_name(resolution, part)} again")
    chunks.append(np.array(names))
    keys = np.concatenate(chunks, dtype=f"S{max(c.itemsize for c in chunks)}")
    del chunks
    ordered = np.sort(keys)
    same = np.flatnonzero(ordered[1:] == ordered[:-1])
    if len(same):
        twice = ordered[same[0]].decode("utf-8", "surrogateescape")
        raise ValueError(f"{path}: member {shown(twice)} is there twice (which one is the image?); {fetch}")
    return keys, np.frombuffer(offsets, dtype=np.int64), np.frombuffer(sizes, dtype=np.int64)


def _member(path: Path, name: str) -> str:
    """ARCHIVE:MEMBER, for messages (the name as repr() writes it where it holds a control character)."""
    return f"{path}:{shown(name, quote=not name.isprintable())}"


def _kind(m: tarfile.TarInfo) -> str:
    if m.isdir():
        return "a directory"
    if m.issym():
        return "a symbolic link"
    if m.islnk():
        return "a hard link"
    return "a special file"


def _read_archive(path, resolution, names, offsets, sizes, dest, out) -> None:
    """The second pass: each PNG file of the index, read from its offset in the archive's order (sequential on
    disk), decoded and checked, into out[dest[i]] (uint8 (3, R, R))."""
    title = _title(resolution)
    with open(path, "rb") as f:
        for i in range(len(names)):
            where = _member(path, names[i].decode("utf-8", "surrogateescape"))
            f.seek(int(offsets[i]))
            blob = f.read(int(sizes[i]))
            if len(blob) != sizes[i]:
                raise ValueError(
                    f"{where}: the archive ends inside it ({len(blob)} of {sizes[i]} bytes); fetch it again"
                )
            out[dest[i]] = _decode(blob, where, resolution, title, path.name)


def _decode(blob: bytes, where: str, resolution: int, title: str, archive: str) -> np.ndarray:
    """One PNG file's bytes -> uint8 (3, R, R), read exactly by the strict image reader, else a ValueError naming
    the member."""
    if not blob.startswith(PNG_SIGNATURE):
        raise ValueError(
            f"{where} is not a PNG file (no PNG signature); the release holds only PNG files: fetch it again"
        )
    size = (resolution, resolution)
    remedy = f"the release's images are all {resolution}x{resolution}: is this {archive}?"
    try:
        with open_image(where, size, title, remedy, data=blob) as img:  # the size from the header, before decoding
            # `where` stays a str: a Path per member interns its name, which 1.28M members would pile up
            arr, _ = read_pixels(img, where, 3, reader=title)
    except ConversionNeeded as e:  # no conversion is offered: the release's images are 8-bit RGB
        raise ValueError(f"{e.problem}; the release's images are 8-bit RGB: fetch {archive} again") from None
    return arr.transpose(2, 0, 1)


def _open_npy(path: Path, resolution: int) -> np.ndarray:
    """An imagenetR-*.npy file, memory-mapped (read-only): uint8 (N, R, R, 3), else a ValueError naming it."""
    r = resolution
    try:
        images = np.load(path, mmap_mode="r", allow_pickle=False)  # refuses object arrays, which would unpickle
    except (ValueError, OSError, EOFError) as e:
        raise ValueError(f"{path}: cannot read as a .npy array ({e}); make or fetch it again") from e
    if not isinstance(images, np.ndarray):  # an npz archive
        images.close()
        raise ValueError(f"{path} is an npz archive, not a .npy array; is this the file files_to_npy.py writes?")
    if images.dtype != np.uint8 or images.shape[1:] != (r, r, 3):
        got = f"{images.dtype} {images.shape}"
        raise ValueError(
            f"{path} holds {got}, not uint8 (N, {r}, {r}, 3) images as openai/vdvae's files_to_npy.py writes them; "
            f"is this the {r}x{r} file?"
        )
    if len(images) == 0:
        raise ValueError(f"{path} holds no images; make or fetch it again")
    return images
