"""Atomic file writes and safe reads shared by model and training checkpoints (no pickle anywhere)."""
from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file


def _atomic(path: Path, write) -> None:
    """Write via `write(tmp_path)` into a temp file beside `path`, fsync, then rename over `path`.

    The temp file is named .NAME.<random>.tmp (what a later run may clean up after a crash).
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
    except BaseException:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        raise


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


def write_text(path, text: str) -> None:
    def w(tmp):
        with open(tmp, "w") as f:
            f.write(text)

    _atomic(Path(path), w)


def write_json(path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path, what: str = "file") -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        with open(path) as f:
            obj = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{what} {path} is corrupt (not valid JSON: {e})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{what} {path} is corrupt (expected a JSON object)")
    return obj


def write_tensors(path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file atomically. Give at most one metadata key where identical inputs must give
    identical files: safetensors writes the metadata in hash-map order, which varies between processes."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    _atomic(Path(path), lambda tmp: save_file(tensors, tmp, metadata=metadata))


def read_tensors(path, what: str = "file") -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{what} {path} is corrupt or not a safetensors file ({e})") from None
