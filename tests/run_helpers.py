"""Training-run helpers shared by the training and run-directory tests (their fixtures are in conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

import pixelar
from pixelar.io import read_tensors
from pixelar.training import train

SRC = str(Path(pixelar.__file__).parents[1])  # the pixelar that launched processes import: this one


def launch(n: int, *args: str, script: Path | None = None, restarts: int = 0, cwd: Path, ok: bool = True):
    """torchrun with n processes of `pixelar ...` (or of a script taking the same arguments); its output
    (stdout + stderr), the process itself where ok is False (then it may fail)."""
    target = [str(script)] if script else ["-m", "pixelar"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}"]
    cmd += [f"--max-restarts={restarts}", *target, *args]
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    if not ok:
        return proc
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def tensors_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def checkpoint_differences(run_a, run_b) -> list[str]:
    """The checkpoint files (weights, training state) of two run directories whose tensors differ."""
    names = ("model.safetensors", "training_state.safetensors")
    return [n for n in names if not tensors_equal(read_tensors(Path(run_a) / n), read_tensors(Path(run_b) / n))]


def quiet(cfg, run_dir, **kw):
    """train() without a progress bar or log lines."""
    return train(cfg, run_dir, progress=False, log=lambda msg: None, **kw)


def stop_after(n):
    """An on_step hook that interrupts training after step n, as Ctrl-C would."""

    def hook(step):
        if step == n:
            raise KeyboardInterrupt

    return hook
