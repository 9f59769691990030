"""The train / val / test / full_train splits.

"val" is carved deterministically from the training files: a fixed permutation
(torch.Generator seeded with 0) of the N training images; its last ``val_size``
entries are "val", the rest "train". "full_train" is all training images, "test"
the separate test files.
"""

from __future__ import annotations

import torch
from torch import Tensor

SPLITS = ("train", "val", "test", "full_train")
VAL_SEED = 0
# Validation size of the built-in sets (60k MNIST-like, 50k CIFAR-10).
BUILTIN_VAL_SIZE = 5000


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")


def default_val_size(n: int, builtin: bool) -> int:
    """5000 for built-in sets (at most N//10, for small local copies), else max(1, N//10)."""
    tenth = max(1, n // 10)
    return min(BUILTIN_VAL_SIZE, tenth) if builtin else tenth


def check_val_size(n: int, val_size: int) -> None:
    if not 1 <= val_size < n:
        raise ValueError(f"val_size must be between 1 and N-1 = {n - 1} for {n} training images, got {val_size}")


def val_permutation(n: int) -> Tensor:
    """The fixed permutation (int64 (n,)) of N training images whose last val_size entries are "val"."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(VAL_SEED))


def train_val_indices(n: int, val_size: int) -> tuple[Tensor, Tensor]:
    """Indices (int64, sorted) of the train and val parts of N training images.

    Depends only on (n, val_size), so every run and machine gets the same split. The val parts are nested:
    a larger val_size adds images to a smaller one's (they are tails of one permutation).
    """
    check_val_size(n, val_size)
    perm = val_permutation(n)
    # Sorted so each part keeps the file order (and memory access stays sequential).
    return perm[: n - val_size].sort().values, perm[n - val_size :].sort().values
