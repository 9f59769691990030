"""Atomic writes of files and of folders of files, and safe reads, shared by model and training checkpoints,
image files and every command's output (no pickle anywhere)."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

# errno values of a full disk and of a full quota
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# the metadata key of a safetensors file that carries tensors_digest() of its tensors (write_tensors(digest=True))
DIGEST_KEY = "pixelar-tensors-sha256"


class DiskFullError(OSError):
    """A write failed because the disk (or the user's quota) is full. An OSError with the errno of the
    failure and the file's name; str() is a sentence that names the file and its directory."""

    run_dir = None  # the training run directory the write belonged to, where one did (a front end's resume hint)

    def __str__(self) -> str:
        return self.strerror or super().__str__()


def disk_full(path, cause: OSError) -> DiskFullError:
    """The DiskFullError of a failed write to `path`, a file or, where the file is unknown, its directory
    (cause: the OSError with ENOSPC or EDQUOT)."""
    path = Path(path)
    what = "disk quota exceeded" if cause.errno == errno.EDQUOT else "disk full (no space left on device)"
    where = f"in {path}; free space there" if path.is_dir() else f"{path}; free space in {path.parent}"
    return DiskFullError(cause.errno, f"{what} while writing {where}", str(path))


def _atomic(path: Path, write) -> None:
    """Write via `write(tmp_path)` into a temp file beside `path`, fsync, then rename over `path`.

    The temp file is named .NAME.<random>.tmp (what a later run may clean up after a crash). A full disk
    raises DiskFullError naming `path`; `path` itself is untouched by any failure.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = None
    try:
        tmp = _new_temp_file(path)
        mode = os.stat(tmp).st_mode  # what the umask gives a new file
        write(tmp)
        os.chmod(tmp, mode)  # a writer that replaced the file (safetensors does) made it 0600
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS:
            raise disk_full(path, e) from None
        raise


def write_atomic(path, write) -> None:
    """Write the file `path` through `write(tmp_path)`, a function that writes a file by name: into a temp file
    beside it, renamed over it once whole (see _atomic: the umask's mode, a full disk as DiskFullError, `path`
    untouched and no temp file left by a failure)."""
    _atomic(Path(path), write)


def _new_temp_file(path: Path) -> Path:
    """Create an empty, new temp file beside `path`. Not tempfile.mkstemp: its files are 0600 and the rename
    would keep that; os.open(..., 0o666) lets the umask decide, as for any other new file."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:  # another temp file has this name: draw another
            continue


@contextlib.contextmanager
def write_folder(path) -> Iterator[Path]:
    """`with write_folder(out_dir) as tmp:` write a set of files as a whole: the block writes them into `tmp`,
    a new temporary folder (.NAME.<random>.tmp), and only once it ends without an error do they appear under
    `path`, all together:

    - a new folder `path` (its parents made as needed): tmp, made beside it, is renamed to it, one atomic
      rename;
    - an existing folder `path`: tmp, made inside it, has its files renamed into `path`, replacing files of
      the same names (whether they may be replaced is the caller's to check first, e.g. with --force), after
      every file is whole. Files in `path` that the block did not write are kept: a command adds its files
      to the folder it is given, it does not own it.

    An error or an interruption in the block removes tmp and leaves `path` as it was (no file under its final
    name); a full disk raises DiskFullError naming `path`. The block writes files (or folders that `path`
    does not have); a name that is a folder in `path` is refused before any file is moved.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"cannot write a folder of files at {path}: it is a file, not a folder")
    fresh = not path.is_dir()
    where = path.parent if fresh else path
    where.mkdir(parents=True, exist_ok=True)
    tmp = None
    try:
        tmp = _new_temp_folder(where, path.resolve().name or "folder")
        yield tmp
        if fresh:
            try:
                os.rename(tmp, path)  # onto nothing (or a folder made empty meanwhile): atomic
                return
            except OSError as e:
                if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
        names = sorted(os.listdir(tmp))  # path appeared meanwhile, with files: add ours to it, as below
        taken = [name for name in names if (path / name).is_dir() and not (tmp / name).is_dir()]
        if taken:
            raise ValueError(f"cannot write {path / taken[0]}: it is a folder; move it away or choose another folder")
        for name in names:
            os.replace(tmp / name, path / name)
        os.rmdir(tmp)
    except BaseException as e:
        if tmp is not None and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS:
            raise disk_full(path, e) from None
        raise


def _new_temp_folder(where: Path, name: str) -> Path:
    """Create an empty, new temp folder .NAME.<random>.tmp in `where`, its mode the umask's (as any new folder:
    tempfile.mkdtemp's 0700 would stay with the folder it becomes)."""
    while True:
        tmp = where / f".{name}.{secrets.token_hex(4)}.tmp"
        try:
            os.mkdir(tmp, 0o777)
            return tmp
        except FileExistsError:  # another temp folder has this name: draw another
            continue


def write_text(path, text: str) -> None:
    def w(tmp):
        with open(tmp, "w") as f:
            f.write(text)

    _atomic(Path(path), w)


def append_text(path, text: str) -> None:
    """Append to a file (created if missing); a full disk raises DiskFullError naming it."""
    try:
        with open(path, "a") as f:
            f.write(text)
    except OSError as e:
        if e.errno in DISK_FULL_ERRNOS:
            raise disk_full(path, e) from None
        raise


def write_json(path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


# pixelar's JSON files (model and run configs, training state records, model cards) are a few kB; a larger one
# is refused from its size before it is read (a 1 GB file of spaces is valid JSON and would take gigabytes)
MAX_JSON_BYTES = 4 * 2**20


def read_json(path, what: str = "file") -> dict:
    """The JSON object in `path`, a file of at most MAX_JSON_BYTES; a ValueError naming the file (and `what` it
    is) where it is larger, not JSON, nested too deeply for Python's parser, or not an object."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    size = path.stat().st_size
    if size > MAX_JSON_BYTES:
        raise ValueError(
            f"{what} {path} is corrupt: {size:,} bytes, more than the {MAX_JSON_BYTES:,} bytes a pixelar JSON file "
            "may have"
        )
    try:
        with open(path) as f:
            obj = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{what} {path} is corrupt (not valid JSON: {e})") from None
    except RecursionError:
        raise ValueError(f"{what} {path} is corrupt (malformed: its JSON is nested too deeply to read)") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{what} {path} is corrupt (expected a JSON object)")
    return obj


_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")


def tensors_digest(tensors: dict[str, torch.Tensor], head: bytes = b"") -> str:
    """SHA-256 (64 hex digits) of `head` and of every tensor's name, dtype, shape and raw bytes, in name order:
    what identifies a set of tensors whatever file holds them. About 2 s per GB on one core."""
    h = hashlib.sha256(head)
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(f"\n{name} {t.dtype} {list(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())  # the raw bytes, whatever the dtype (bf16 included)
    return h.hexdigest()


def file_sha256(path) -> str:
    """SHA-256 (hex) of a file's bytes, read 1 MiB at a time."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def write_tensors(
    path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None, digest: bool = False
) -> None:
    """Write a safetensors file atomically. Give at most one metadata key where identical inputs must give
    identical files: safetensors writes the metadata in hash-map order, which varies between processes.
    digest=True makes that one key DIGEST_KEY, the tensors' tensors_digest(), which read_tensors checks."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    if digest:
        if metadata:
            raise ValueError("write_tensors: digest=True writes the file's one metadata key; give no metadata")
        metadata = {DIGEST_KEY: tensors_digest(tensors)}

    def w(tmp):
        try:
            save_file(tensors, tmp, metadata=metadata)
        except SafetensorError as e:
            # safetensors reports a failed write as SafetensorError("... (os error N)"): give it back its errno,
            # so that a full disk is recognised as for every other file
            m = _RUST_OS_ERROR.search(str(e))
            if m is None:
                raise
            code = int(m.group(1))
            raise OSError(code, f"{os.strerror(code)} ({e})", str(tmp)) from e

    _atomic(Path(path), w)


def read_tensors(path, what: str = "file") -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; where it stores their digest (DIGEST_KEY), they are checked against
    it, so a file damaged after it was written is refused rather than used (files without one load as they are)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            stored = (f.metadata() or {}).get(DIGEST_KEY)
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{what} {path} is corrupt or not a safetensors file ({e})") from None
    if stored is not None and tensors_digest(tensors) != stored:
        raise ValueError(
            f"{what} {path} is damaged: its tensors do not match the checksum stored in the file ({DIGEST_KEY}), "
            "so its bytes changed after it was written (a disk fault or an edit); restore it from a copy or write "
            "it again"
        )
    return tensors
