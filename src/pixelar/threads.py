"""How many CPU threads a sampling job runs on: one for small steps, torch's setting for large ones.

Cached sampling runs thousands of generation steps, each a handful of small operations on a
few pixels of every image. Splitting such an operation over threads costs more (waking the threads, waiting
for the slowest) than it saves, and far more when another process keeps a core busy: PixelCNN++ small, 16
images of 32x32x3, cached, took 4.7 s on one thread and 27.1 s on two beside a busy core. Large steps (a
naive sampler's full forward pass, thousands of images at once) do gain from threads. The rule: a step's work
is measured as images x parameters x positions the step computes (1 for the incremental forward, H*W for a
full pass); below STEP_WORK_THRESHOLD one thread, else torch's setting is left alone. docs/sampling.md has
the measurements behind the threshold (`python -m benchmarks.sampling_threads`).

`threads_for(threads, work, device)` applies the choice for a block and restores torch's thread count after
it, also when the block raises; an explicit `threads` wins. The codec does not choose: its bytes must not
depend on the count, so it codes on one thread whatever `threads` says (`num_threads`; codec/images.py). Lives
below every package, like inference.py, so that models/ (sample), sampling/ and codec/ can use it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from .errors import ArgumentValueError

# per-step work (images x parameters x positions) below which one thread is faster: see the module docstring
STEP_WORK_THRESHOLD = 3e8


def step_work(model, n: int, incremental: bool) -> float:
    """The work of one generation step of `model` for n images: n x parameters x positions computed (1 for an
    incremental forward, H*W for a full forward pass)."""
    positions = 1 if incremental else model.image.height * model.image.width
    return float(n) * model.num_parameters() * positions


def auto_threads(work: float, device: torch.device | str = "cpu") -> int | None:
    """The thread count for steps of `work` (step_work) on `device`: 1 for small CPU steps; None (leave torch's
    setting) for large ones and for GPUs, where the CPU only launches kernels."""
    if torch.device(device).type != "cpu":
        return None
    return 1 if work < STEP_WORK_THRESHOLD else None


def check_threads(threads) -> int | None:
    """threads itself, where it is None or an integer >= 1."""
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
        raise ArgumentValueError(
            "threads", "threads", "", f" must be None (to choose) or an integer >= 1, got {threads!r}"
        )
    return threads


@contextlib.contextmanager
def num_threads(threads: int | None) -> Iterator[int]:
    """torch.set_num_threads(threads) for the block (None: leave it), the previous count restored after it,
    also when it raises. Yields the count in force."""
    before = torch.get_num_threads()
    if threads is None or threads == before:
        yield before
        return
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def threads_for(threads: int | None, work: float, device: torch.device | str = "cpu") -> Iterator[int]:
    """`with threads_for(threads, step_work(model, n, incremental), device):` run a job's steps on `threads`
    CPU threads, or where it is None on the count auto_threads chooses; restored after. Yields the count in
    force (for a nested job, which then runs on the same)."""
    chosen = check_threads(threads)
    with num_threads(chosen if chosen is not None else auto_threads(work, device)) as n:
        yield n


__all__ = ["STEP_WORK_THRESHOLD", "auto_threads", "check_threads", "num_threads", "step_work", "threads_for"]
