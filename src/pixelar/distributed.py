"""One process, or many started by torchrun: the process group, this process's share, and reductions.

`torchrun --nproc_per_node=N -m pixelar train ...` starts N processes with RANK, LOCAL_RANK and WORLD_SIZE in
their environment; `init()` joins them into a process group (NCCL on GPUs, gloo on CPUs) and `finish()`
leaves it. Without torchrun (no WORLD_SIZE, or 1) nothing is initialised and every helper here answers as for
a single process, so library code calls them unconditionally.

Work is split in contiguous shares (`share`): rank r of N takes items [r*n//N, (r+1)*n//N), so the shares
cover every item exactly once, in order, whatever n and N. Work done in batches is shared as whole chunks
(`chunks`): chunk k is always items [k*size, (k+1)*size), whichever process computes it, so every item is
computed in the same batch as on one process (a batch's float rounding depends on its size: the same image
scored in a batch of 4 and of 64 differs in the 7th digit). A job whose results go to a file as they come
(samples, decoded images) is shared in rounds instead (`each_in_order`): round t's items t*N .. t*N + N - 1,
one per process, so that the results arrive in order and only one round's are held. Sums are reduced in
float64 (`all_sum`).
Lives below every package, like inference.py, so that training/, evaluation/ and the CLI can use it.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
import torch.distributed as dist


def active() -> bool:
    """Whether this process belongs to a process group of several processes."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0: the process that writes files and prints."""
    return rank() == 0


def launched() -> bool:
    """Whether torchrun (or another launcher) started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init() -> bool:
    """Join the process group torchrun describes in the environment (once); True when there are several
    processes. On GPUs each process uses the device of its LOCAL_RANK."""
    if not launched():
        return False
    if not (dist.is_available() and dist.is_initialized()):
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        # torchrun's store outlives a restart (--max-restarts): the processes of each attempt meet under a
        # prefix of their own, or they would read the addresses that the failed attempt's processes left there
        store, r, world = next(dist.rendezvous("env://"))
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        dist.init_process_group(
            backend="nccl" if torch.cuda.is_available() else "gloo",
            store=dist.PrefixStore(f"pixelar/attempt{attempt}", store),
            rank=r,
            world_size=world,
        )
    return active()


def finish(wait: bool = True) -> None:
    """Leave the process group: after every process has reached this point (wait), or at once (after an
    error, when the others may be gone)."""
    if dist.is_available() and dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


def device() -> torch.device:
    """This process's device: its GPU under torchrun on GPUs, else the GPU if any, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def share(n: int, r: int | None = None, world: int | None = None) -> slice:
    """The contiguous share of n items of rank r among `world` processes (this process's by default)."""
    r = rank() if r is None else r
    world = world_size() if world is None else world
    return slice(r * n // world, (r + 1) * n // world)


def chunks(n: int, size: int) -> list[slice]:
    """This process's chunks of n items in chunks of `size` (chunk k: items [k*size, min(n, (k+1)*size))), as a
    contiguous share of the chunks: the same chunks, and so the same batches, whatever the number of
    processes (some may get none)."""
    count = -(-n // size)
    return [slice(k * size, min(n, (k + 1) * size)) for k in range(count)[share(count)]]


def all_sum(t: torch.Tensor) -> torch.Tensor:
    """The sum of t over all processes (t itself for one process), in float64 on t's device."""
    t = t.detach().to(torch.float64).clone()
    if active():
        on = t.to(device()) if dist.get_backend() == "nccl" else t.cpu()
        dist.all_reduce(on, op=dist.ReduceOp.SUM)
        t = on.to(t.device)
    return t


def gather_tensors(t: torch.Tensor) -> list[torch.Tensor]:
    """Every process's tensor t (all the same shape and dtype), in rank order, on every process."""
    if not active():
        return [t]
    on = t.to(device()) if dist.get_backend() == "nccl" else t.cpu()
    out = [torch.empty_like(on) for _ in range(world_size())]
    dist.all_gather(out, on)
    return [o.to(t.device) for o in out]


def gather_objects(obj) -> list:
    """Every process's picklable object (e.g. its share of images or coded bytes), in rank order, on every
    process: the way to collect shares of unequal size. Objects travel between the job's own processes only;
    nothing read from a file is unpickled."""
    if not active():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, src: int = 0):
    """Rank src's picklable object on every process (e.g. a run directory chosen once)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src)
    return box[0]


def restarted() -> bool:
    """Whether torchrun restarted this job after a process failed (`torchrun --max-restarts`)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0


def agree(ok: bool, what: str) -> None:
    """Every process says whether its part of `what` went well; where one failed, the others raise too
    (instead of waiting for it at the next collective). A process that failed raises its own error before
    calling this, after calling it with ok=False (see `together`)."""
    if active() and all_sum(torch.tensor([0.0 if ok else 1.0])).item() > 0 and ok:
        raise RuntimeError(f"another process failed while {what}; see its error")


def each_in_order(n: int, work: Callable[[int], object], use: Callable[[int, object], None], what: str) -> None:
    """work(k) for every item k in range(n), shared out in rounds, and use(k, result) on every process for every
    k, in order: the way to stream a job's results (to a file that rank 0 writes) holding one round's results
    rather than all n.

    Round t is items t*N .. t*N + N - 1 of N processes, item t*N + r computed by rank r (one item per round
    without torchrun); after each round every process gets the round's results (gather_objects: picklable,
    on the CPU) and calls use on each in order. An error in one process's work or use stops every process at
    the end of that round, the failing one with its own error, the others with a RuntimeError naming `what`
    (none waits for it at the next round).
    """
    world, me = world_size(), rank()
    for first in range(0, n, world):
        k = first + me
        try:
            result = work(k) if k < n else None
        except BaseException:
            if active():
                gather_objects((False, None))  # the others are waiting for this round: tell them
            raise
        results = gather_objects((True, result))
        if not all(ok for ok, _ in results):
            raise RuntimeError(f"another process failed while {what}; see its error")
        try:
            for j, (_, r) in enumerate(results[: n - first]):
                use(first + j, r)
        except BaseException:
            agree(False, what)
            raise
        agree(True, what)


class together:
    """`with together("loading the data"):` runs the block on every process and raises on all of them if it
    failed on any (the failing process with its own error)."""

    def __init__(self, what: str):
        self.what = what

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        agree(exc_type is None, self.what)
        return False
