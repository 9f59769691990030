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
it, also when the block raises; an explicit `threads` wins.

A job of large steps (training, evaluation) cannot take torch's count on trust either: beside another busy
process, two threads on two cores wait at every operation for the core the other process holds (the default
training run: 0.24 of its idle speed on two threads, 0.76 on one). `probe(step, counts)` times a few of the
job's own steps at each candidate count (`candidate_counts`: torch's, half of it, 1) and returns the fastest;
the job then runs on it. It is chosen once per job, not re-checked while the job runs: the count changes the
order of floating-point sums, and a training run must stay bitwise the same whatever the load (a resumed run
reuses the count of its checkpoint; docs/training.md). The codec does not choose: its bytes must not
depend on the count, so it codes on one thread whatever `threads` says (`num_threads`; codec/images.py). Lives
below every package, like inference.py, so that models/ (sample), sampling/ and codec/ can use it.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator

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


def candidate_counts() -> list[int]:
    """The thread counts a probe tries, largest first: torch's current count, half of it, 1 (without repeats)."""
    n = torch.get_num_threads()
    return sorted({n, max(1, n // 2), 1}, reverse=True)


def probe(step: Callable[[], object], counts: list[int], repeats: int = 2, max_first_s: float = 5.0) -> dict:
    """Time `step` (one step of the job, with no lasting effect) at each thread count of `counts`: per count a
    first untimed call (waking that many threads), then the best of `repeats`. A first call that takes longer
    than max_first_s ends the probe with counts[0]: steps that large are worth their threads, and probing them
    would cost minutes. torch's count is restored afterwards. -> {"threads": the fastest count, "seconds":
    {count: seconds per step}} ("seconds" holds only the counts measured)."""
    seconds: dict[int, float] = {}
    before = torch.get_num_threads()
    try:
        for n in counts:
            torch.set_num_threads(n)
            t = time.perf_counter()
            step()
            if time.perf_counter() - t > max_first_s:
                return {"threads": counts[0], "seconds": seconds}
            best = math.inf
            for _ in range(repeats):
                t = time.perf_counter()
                step()
                best = min(best, time.perf_counter() - t)
            seconds[n] = best
    finally:
        torch.set_num_threads(before)
    # the fastest; a count within 5% of a larger one's time loses to it (noise, and the idle machine's case)
    fastest = min(seconds.values())
    return {"threads": max(n for n, s in seconds.items() if s <= 1.05 * fastest), "seconds": seconds}


def describe_probe(record: dict) -> str:
    """ "1 thread (0.21 s/step; 2 threads: 1.87 s/step)" for a probe's record."""
    chosen, seconds = record["threads"], record.get("seconds", {})
    plural = lambda n: f"{n} thread{'s' if n != 1 else ''}"  # noqa: E731
    others = "; ".join(f"{plural(n)}: {s:.3g} s/step" for n, s in seconds.items() if n != chosen)
    mine = f"{seconds[chosen]:.3g} s/step" if chosen in seconds else "its first step too long to probe"
    return f"{plural(chosen)} ({mine}{'; ' + others if others else ''})"


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


__all__ = [
    "STEP_WORK_THRESHOLD",
    "auto_threads",
    "candidate_counts",
    "describe_probe",
    "probe",
    "check_threads",
    "num_threads",
    "step_work",
    "threads_for",
]
