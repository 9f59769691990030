"""The metrics of a training run: the window of steps since the last metrics line, whose sums a checkpoint
keeps so that a resumed run writes the lines of an uninterrupted one, and metrics.jsonl (with TensorBoard
events beside it, optionally)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from ..errors import ArgumentValueError
from ..io import append_text, write_text


def tensorboard_writer():
    """torch's SummaryWriter class, or an error saying how to install the tensorboard package it needs."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise ArgumentValueError(
            "tensorboard",
            "tensorboard=True",
            "",
            f" needs the tensorboard package ({e}): pip install 'pixelar[tensorboard]'",
        ) from None
    return SummaryWriter


class Window:
    """Running sums over the steps since the last metrics line (steps and the sums are checkpointed; the
    rest is wall-clock and starts afresh)."""

    def __init__(self, steps: int = 0, bpd_sum: float = 0.0, norm_sum: float = 0.0):
        self.start = time.perf_counter()
        self.steps, self.bpd_sum, self.norm_sum = steps, bpd_sum, norm_sum
        self.images = 0
        self.last_bpd = 0.0
        self.data_s = 0.0  # time spent waiting for batches (data loading runs in the training thread)

    def add(self, bpd: float, grad_norm: float, images: int) -> None:
        self.steps += 1
        self.images += images
        self.bpd_sum += bpd
        self.norm_sum += grad_norm
        self.last_bpd = bpd

    def rate(self) -> float:
        return self.images / max(time.perf_counter() - self.start, 1e-9)

    def data_fraction(self) -> float:
        """Fraction of the window's wall time spent getting batches (near 0: the step is never starved)."""
        return self.data_s / max(time.perf_counter() - self.start, 1e-9)

    def state_dict(self) -> dict:
        """What a checkpoint keeps of the window (its progress "window"): the steps and their sums."""
        return {"steps": self.steps, "bpd_sum": self.bpd_sum, "norm_sum": self.norm_sum}

    @classmethod
    def from_state_dict(cls, state: dict | None) -> Window:
        """The window a checkpoint kept (None: an empty one, as in records of older versions)."""
        return cls(**(state or {}))


class MetricsLog:
    """metrics.jsonl: one JSON object per line, appended as training goes.

    A new run starts it empty; a resumed run first drops the lines written after its checkpoint (they are
    about to be recomputed) and a final line of an earlier end, so each step appears once.

    With `tensorboard` (a directory) every number of a line is also a TensorBoard scalar, tagged train/KEY,
    test/KEY (the final line) or skipped/KEY; a resumed run purges the events after its checkpoint, as it
    drops those lines.
    """

    def __init__(self, path: Path, keep_through: int | None, enabled: bool = True, tensorboard: Path | None = None):
        self.path, self.enabled = path, enabled  # disabled: a process other than rank 0, which writes nothing
        self.writer = None
        if not enabled:
            return
        if tensorboard is not None:
            purge = {} if keep_through is None else {"purge_step": keep_through + 1}
            self.writer = tensorboard_writer()(str(tensorboard), **purge)
        kept = []
        if keep_through is not None and path.exists():
            for line in path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:  # a line cut short by a crash
                    continue
                if isinstance(rec, dict) and not rec.get("final") and rec.get("step", math.inf) <= keep_through:
                    kept.append(line + "\n")
        write_text(path, "".join(kept))

    def write(self, record: dict) -> None:
        if self.enabled:
            append_text(self.path, json.dumps(record) + "\n")
        if self.writer is not None:
            group = "test" if record.get("final") else "skipped" if record.get("skipped") else "train"
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.writer.add_scalar(f"{group}/{key}", value, record["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
