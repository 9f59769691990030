"""Training-run helpers shared by the training and run-directory tests (their fixtures are in conftest.py)."""

from __future__ import annotations

import json
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


def flip_bit(path, tensor: str | None = None, offset: int = 3, bit: int = 7) -> None:
    """Flip one bit of a safetensors file's tensor data, `offset` bytes into the named tensor (else into the data),
    leaving its header valid: a file damaged on disk or edited. By default the sign of a float32's first element."""
    path = Path(path)
    data = bytearray(path.read_bytes())
    size = int.from_bytes(data[:8], "little")  # 8 bytes of header length, the JSON header, then the data
    start = 8 + size + (json.loads(data[8 : 8 + size])[tensor]["data_offsets"][0] if tensor else 0)
    data[start + offset] ^= 1 << bit
    path.write_bytes(bytes(data))


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
