"""Images from a plain ``.npz`` file (``npz:/path/file.npz``).

Accepted keys: ``x`` (or ``images``) and optional ``y`` (or ``labels``) for a file
that is all training data; or ``x_train``/``x_test`` with optional
``y_train``/``y_test`` (``images_*``/``labels_*`` also work) for a file with both
splits. Images are uint8 (N, H, W), (N, H, W, C) or (N, C, H, W), C in {1, 3}.
Labels are class ids 0 .. MAX_CLASSES - 1 (2^20), counted over every label array of the file.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from pixelar.data.dataset import RawSplit

_IMAGE_KEYS = ("x", "images")
_LABEL_KEYS = ("y", "labels")
# labels are class ids 0 .. MAX_CLASSES - 1 (num_classes is the largest + 1, and a class-conditional model holds
# a row of weights per class): far more classes than any labelled image set has
MAX_CLASSES = 2**20


def load_npz(path: str | Path, part: str) -> RawSplit:
    """Load the "train" or "test" part of an npz file.

    Raises:
        FileNotFoundError: no such file.
        ValueError: unreadable file, missing keys, no test split, or bad shapes/dtypes.
    """
    path = Path(path).expanduser()
    try:
        # allow_pickle=False: object arrays (which would unpickle) are refused.
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except FileNotFoundError:
        raise
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise ValueError(f"{path}: cannot read as npz ({e})") from e

    has_splits = any(f"{k}_train" in arrays for k in _IMAGE_KEYS)
    suffix = f"_{part}" if has_splits else ""
    if not has_splits and part != "train":
        raise ValueError(f"{path}: has no {part} split (store x_train/x_test and y_train/y_test to provide one)")
    x = _first(arrays, [k + suffix for k in _IMAGE_KEYS])
    if x is None:
        wanted = " or ".join(k + suffix for k in _IMAGE_KEYS)
        raise ValueError(f"{path}: no {wanted} array (keys: {', '.join(sorted(arrays)) or 'none'})")
    images = _to_nchw(x, path)
    y = _first(arrays, [k + suffix for k in _LABEL_KEYS])
    if y is None:
        return RawSplit(images, None, None)
    # Count classes over every label array of the file, so train and test agree; checked before anything counts
    # on them (a model allocates a row per class).
    all_labels = {k: v for k, v in arrays.items() if k.split("_")[0] in _LABEL_KEYS and v.dtype.kind in "iu"}
    largest = {k: int(v.max()) for k, v in all_labels.items() if v.size}
    key = max(largest, key=largest.get, default=None)
    if key is not None and largest[key] >= MAX_CLASSES:
        raise ValueError(
            f"{path}: labels must be class ids 0 .. {MAX_CLASSES - 1}, but {key!r} holds {largest[key]}; "
            "number the classes 0, 1, 2, ..."
        )
    labels = _to_labels(y, len(images), path)
    num_classes = (largest[key] if key is not None else 0) + 1
    return RawSplit(images, labels, num_classes)


def _first(arrays: dict[str, np.ndarray], keys: list[str]) -> np.ndarray | None:
    return next((arrays[k] for k in keys if k in arrays), None)


def _to_nchw(x: np.ndarray, path: Path) -> torch.Tensor:
    """uint8 (N,H,W) | (N,H,W,C) | (N,C,H,W) -> uint8 tensor (N, C, H, W)."""
    if x.dtype != np.uint8:
        if x.dtype.kind not in "biu" or (x.size and (x.min() < 0 or x.max() > 255)):
            raise ValueError(f"{path}: images must be uint8 (0..255), got {x.dtype}")
        x = x.astype(np.uint8)
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4:
        # Channels-last when the last axis looks like channels and axis 1 does not.
        if x.shape[3] in (1, 3) and x.shape[1] not in (1, 3):
            x = x.transpose(0, 3, 1, 2)
        if x.shape[1] not in (1, 3):
            raise ValueError(f"{path}: cannot find a channel axis of size 1 or 3 in images of shape {x.shape}")
    else:
        raise ValueError(f"{path}: images must be (N,H,W), (N,H,W,C) or (N,C,H,W), got shape {x.shape}")
    return torch.from_numpy(np.ascontiguousarray(x))


def _to_labels(y: np.ndarray, n: int, path: Path) -> torch.Tensor:
    if y.dtype.kind not in "iu" or y.shape != (n,):
        raise ValueError(f"{path}: labels must be {n} integers (shape ({n},)), got {y.dtype} {y.shape}")
    if y.size and y.min() < 0:
        raise ValueError(f"{path}: labels must be >= 0")
    return torch.from_numpy(y.astype(np.int64))
