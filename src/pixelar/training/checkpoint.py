"""A training run directory: its config, its checkpoint and the EMA weights, written crash-safely.

Files of a run directory:
    config.json                  model.config() plus "train": TrainConfig.to_dict(); pixelar.load_model reads it
    model.safetensors            the EMA weights of the latest checkpoint (what evaluation and sampling use);
                                 metadata {pixelar.io.DIGEST_KEY: their digest}, checked by every load
    training_state.safetensors   "model.*" raw weights, "optim.<param index>.<key>" Adam tensors, "ema.*" EMA,
                                 "rng.torch", "rng.cuda.<i>", "rng.data", "rng.augment" (runs with
                                 augmentation) generator states (uint8);
                                 metadata {"pixelar-training-state": fingerprint}
    training_state.json          step, epoch, batch (within the epoch), bad_steps, elapsed_s, Adam's scalar
                                 state (per-parameter step counts), the sums of the metrics window since the
                                 last metrics line, and the fingerprint of its tensors file
    training_state.prev.json     exists only while a save is in progress: the record being replaced
    metrics.jsonl, samples.png   written by the training loop
    curves.png                   the learning curves, drawn at the end of training (training/curves.py)
    tensorboard/                 TensorBoard event files (runs with tensorboard=True)
    .lock                        the advisory lock held by the process training in the directory (see lock())

Every file is written to a temporary file and renamed (pixelar.io), so each one is always whole. A checkpoint
is the pair (training_state.json, training_state.safetensors) with the same fingerprint: "<step>-<SHA-256 of
the tensors and of the record less its wall-clock elapsed_s>", so a record matches only the tensors it was
saved with (two saves share a fingerprint only if they hold the same state), and identical runs write
identical files. A save writes training_state.prev.json (the current record), then the new
training_state.json, then the tensors, then model.safetensors, then removes the .prev file. A crash at any
moment therefore leaves either the new pair, or the old tensors with the old record in
training_state.prev.json; `load` picks the record whose fingerprint matches the tensors and never mixes two
checkpoints. The first save of a run writes the tensors first (there is no older checkpoint to protect), so
training_state.json existing means a complete checkpoint exists.

`load` also recomputes the fingerprint from what it read, so tensors or a record damaged after the save (a disk
fault, an edit) are refused instead of resumed and copied into every later checkpoint; this costs one pass of
SHA-256 over the training state (about 2 s per GB on one core, measured on a shared AMD EPYC: 1.7 s for the
858 MB of a paper-size PixelCNN++'s weights, EMA and Adam's two moments). Checkpoints of versions before the
content fingerprint (a random one, "<step>-<16 hex digits>") cannot be checked and load as they are.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from ..io import read_json, read_tensors, tensors_digest, write_json, write_tensors

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
STATE_TENSORS_NAME = "training_state.safetensors"
STATE_JSON_NAME = "training_state.json"
PREV_STATE_JSON_NAME = "training_state.prev.json"
METRICS_NAME = "metrics.jsonl"
SAMPLES_NAME = "samples.png"
CURVES_NAME = "curves.png"
TENSORBOARD_DIR = "tensorboard"
LOCK_NAME = ".lock"
# the files written through pixelar.io's temporary files (.NAME.<random>.tmp)
ATOMIC_NAMES = (
    CONFIG_NAME,
    WEIGHTS_NAME,
    STATE_TENSORS_NAME,
    STATE_JSON_NAME,
    PREV_STATE_JSON_NAME,
    METRICS_NAME,
    SAMPLES_NAME,
    CURVES_NAME,
)
STATE_FORMAT = "pixelar-training-state"
STATE_VERSION = 1
PROGRESS_KEYS = ("step", "epoch", "batch", "bad_steps")
WINDOW_KEYS = ("steps", "bpd_sum", "norm_sum")  # the metrics window: good steps since the last line, their sums
UNHASHED_KEYS = ("fingerprint", "elapsed_s")  # the record's keys outside the fingerprint's hash
CONTENT_FINGERPRINT = re.compile(r"\d+-[0-9a-f]{32}")  # "<step>-<hash>"; older versions' were random


@dataclass
class Checkpoint:
    """Everything a run needs to continue exactly.

    progress: {"step", "epoch", "batch", "bad_steps"} (ints >= 0), "elapsed_s" (float), "window" (the
        metrics window, {"steps": int, "bpd_sum": float, "norm_sum": float}; zeros when absent) and "threads"
        (the CPU thread count of the steps, int, or None).
    model, ema: state dicts (raw and averaged weights).
    optimizer: the "state" part of a torch optimizer's state_dict, {param index: {key: tensor or number}}.
    rng: generator states as uint8 tensors, {"torch", "cuda.<i>", "data"}.
    """

    progress: dict
    model: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor]
    optimizer: dict
    rng: dict[str, torch.Tensor]


class RunDirBusy(RuntimeError):
    """Another process holds the run directory's lock: it is training there."""


class RunDir:
    """Reads and writes the files of one run directory (see the module docstring)."""

    def __init__(self, path):
        self.path = Path(path)
        self.config_path = self.path / CONFIG_NAME
        self.weights_path = self.path / WEIGHTS_NAME
        self.tensors_path = self.path / STATE_TENSORS_NAME
        self.record_path = self.path / STATE_JSON_NAME
        self.prev_record_path = self.path / PREV_STATE_JSON_NAME
        self._committed: dict | None = None  # training_state.json record of the checkpoint on disk

    @property
    def checkpoint_step(self) -> int | None:
        """Step of the checkpoint this object last saved or loaded (None: neither yet)."""
        return None if self._committed is None else self._committed["step"]

    def has_checkpoint(self) -> bool:
        return self.record_path.exists() or self.prev_record_path.exists()

    # ----- the lock ----------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self):
        """Hold the directory's lock (creating the directory), or raise RunDirBusy at once naming its holder.

        An advisory fcntl.flock on .lock: the kernel releases it when the process ends, however it ends (kill -9
        included), so a crashed run never leaves it stuck. Only writers take it; readers (evaluation, sampling)
        need none, since every file is replaced whole. The file itself stays (removing it would let a second
        process lock a new file while the first still holds the old one), except in a directory this call
        created and left holding nothing else: a run that fails before writing leaves no directory behind.
        """
        created = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
                raise RunDirBusy(
                    f"{self.path} is in use by another training process"
                    + (f" (pid {holder})" if holder.isdigit() else "")
                    + ": wait for it to end, or train into another run directory"
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)  # for the message above, in another process
            try:
                yield self
            finally:
                if created and [p.name for p in self.path.iterdir()] == [LOCK_NAME]:  # we still hold the lock
                    with contextlib.suppress(OSError):  # e.g. another process just opened the lock file
                        os.unlink(self.path / LOCK_NAME)
                        self.path.rmdir()
        finally:
            os.close(fd)  # releases the lock

    def remove_temp_files(self) -> int:
        """Delete the temporary files that killed writers left behind; returns how many. Call it holding the
        lock, so that none can belong to a live writer."""
        stale = [p for name in ATOMIC_NAMES for p in self.path.glob(f".{name}.*.tmp") if p.is_file()]
        for p in stale:
            p.unlink(missing_ok=True)
        return len(stale)

    # ----- config.json -------------------------------------------------------------------------------------
    def write_config(self, model_config: dict, train_config: dict) -> None:
        write_json(self.config_path, {**model_config, "train": train_config})

    def read_config(self) -> tuple[dict, dict]:
        """(model config, "train" section) of config.json."""
        cfg = read_json(self.config_path, "run config")
        train = cfg.pop("train", None)
        if not isinstance(train, dict):
            raise ValueError(
                f"run config {self.config_path} has no 'train' section: "
                "it is a saved model, not a training run directory"
            )
        return cfg, train

    # ----- checkpoints -------------------------------------------------------------------------------------
    def save(self, ckpt: Checkpoint) -> None:
        """Write a checkpoint and model.safetensors in the crash-safe order of the module docstring."""
        step = int(ckpt.progress["step"])
        tensors = {f"model.{k}": v for k, v in ckpt.model.items()}
        tensors.update({f"ema.{k}": v for k, v in ckpt.ema.items()})
        tensors.update({f"rng.{k}": v for k, v in ckpt.rng.items()})
        scalars = {}
        for index, per_param in ckpt.optimizer.items():
            for key, value in per_param.items():
                if isinstance(value, torch.Tensor) and value.dim() > 0:
                    tensors[f"optim.{index}.{key}"] = value
                else:  # 0-dim tensors (Adam's step) and plain numbers go to JSON, exactly
                    scalars.setdefault(str(index), {})[key] = _scalar_to_json(value)
        tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
        window = ckpt.progress.get("window") or {"steps": 0, "bpd_sum": 0.0, "norm_sum": 0.0}
        record = {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            **{k: int(ckpt.progress[k]) for k in PROGRESS_KEYS},
            "optimizer_scalars": scalars,
            "metrics_window": {
                "steps": int(window["steps"]),
                "bpd_sum": float(window["bpd_sum"]),
                "norm_sum": float(window["norm_sum"]),
            },
        }
        if ckpt.progress.get("threads") is not None:  # the CPU thread count of the steps (absent: torch's)
            record["threads"] = int(ckpt.progress["threads"])
        fingerprint = _fingerprint(step, tensors, record)
        record.update(fingerprint=fingerprint, elapsed_s=float(ckpt.progress.get("elapsed_s", 0.0)))
        metadata = {STATE_FORMAT: fingerprint}  # one key: safetensors orders several differently in each process
        if self._committed is None:
            write_tensors(self.tensors_path, tensors, metadata)
            write_json(self.record_path, record)
        else:
            write_json(self.prev_record_path, self._committed)
            write_json(self.record_path, record)
            write_tensors(self.tensors_path, tensors, metadata)
        self._committed = record
        self.write_weights(ckpt.ema)
        self.prev_record_path.unlink(missing_ok=True)

    def write_weights(self, ema_state: dict[str, torch.Tensor]) -> None:
        """model.safetensors <- the EMA weights of the committed checkpoint, with their digest (io.DIGEST_KEY)."""
        write_tensors(self.weights_path, ema_state, digest=True)

    def load(self) -> Checkpoint:
        """Read the checkpoint; errors name the file and what is wrong with it."""
        if not self.has_checkpoint():
            raise FileNotFoundError(
                f"no checkpoint in {self.path}: {STATE_JSON_NAME} not found "
                "(the run stopped before its first checkpoint; start it again without resume)"
            )
        fingerprint = self._tensors_fingerprint()
        record = self._matching_record(fingerprint)
        tensors = read_tensors(self.tensors_path, "training state")
        content = {k: v for k, v in record.items() if k not in UNHASHED_KEYS}
        if CONTENT_FINGERPRINT.fullmatch(fingerprint) and fingerprint != _fingerprint(record["step"], tensors, content):
            raise ValueError(
                f"training state {self.tensors_path} does not match its checkpoint fingerprint {fingerprint}: it "
                f"or its record ({STATE_JSON_NAME}) changed after they were written (a disk fault or an edit), so "
                "the run cannot be resumed from it. Restore the run directory from a copy or start a new run "
                f"({WEIGHTS_NAME} is checked on its own and can still be evaluated)"
            )
        groups: dict[str, dict[str, torch.Tensor]] = {"model": {}, "ema": {}, "rng": {}, "optim": {}}
        for name, value in tensors.items():
            prefix, _, rest = name.partition(".")
            if prefix not in groups or not rest:
                raise ValueError(f"training state {self.tensors_path} is corrupt: unexpected tensor {name!r}")
            groups[prefix][rest] = value
        for needed in ("torch", "data"):
            if needed not in groups["rng"]:
                raise ValueError(f"training state {self.tensors_path} is corrupt: no 'rng.{needed}' tensor")
        optimizer: dict[int, dict] = {}
        for name, value in groups["optim"].items():
            index, _, key = name.partition(".")
            if not index.isdigit() or not key:
                raise ValueError(f"training state {self.tensors_path} is corrupt: unexpected tensor 'optim.{name}'")
            optimizer.setdefault(int(index), {})[key] = value
        for index, per_param in record["optimizer_scalars"].items():
            for key, value in per_param.items():
                optimizer.setdefault(int(index), {})[key] = _scalar_from_json(value, self.record_path)
        self._committed = record
        progress = {k: record[k] for k in PROGRESS_KEYS}
        progress["elapsed_s"] = record["elapsed_s"]
        progress["window"] = record.get("metrics_window")  # absent in records of older versions
        progress["threads"] = record.get("threads")  # likewise; and None where the run left torch's count
        return Checkpoint(progress, groups["model"], groups["ema"], optimizer, groups["rng"])

    def _tensors_fingerprint(self) -> str:
        path = self.tensors_path
        if not path.is_file():
            raise FileNotFoundError(f"training state not found: {path}")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
        except (SafetensorError, OSError, ValueError) as e:
            raise ValueError(f"training state {path} is corrupt or not a safetensors file ({e})") from None
        # older versions wrote {"format": STATE_FORMAT, "step", "fingerprint"}
        fingerprint = meta.get(STATE_FORMAT) or (
            meta.get("fingerprint") if meta.get("format") == STATE_FORMAT else None
        )
        if not fingerprint:
            raise ValueError(f"training state {path} is corrupt: its metadata has no {STATE_FORMAT} fingerprint")
        return fingerprint

    def _matching_record(self, fingerprint: str) -> dict:
        """The record (training_state.json, else the .prev one left by an interrupted save) of these tensors."""
        record = _read_record(self.record_path) if self.record_path.exists() else None
        if record is not None and record["fingerprint"] == fingerprint:
            return record
        if self.prev_record_path.exists():
            prev = _read_record(self.prev_record_path)
            if prev["fingerprint"] == fingerprint:
                return prev
        if record is None:
            raise FileNotFoundError(f"training state record not found: {self.record_path}")
        raise ValueError(
            f"{self.record_path} (checkpoint {record['fingerprint']}) and {self.tensors_path} "
            f"(checkpoint {fingerprint}) come from different checkpoints; the run directory was "
            "modified outside pixelar and cannot be resumed"
        )


def _read_record(path: Path) -> dict:
    rec = read_json(path, "training state record")
    if rec.get("format") != STATE_FORMAT or not isinstance(rec.get("fingerprint"), str):
        raise ValueError(f"training state record {path} is corrupt: not a {STATE_FORMAT} record")
    for key in PROGRESS_KEYS:
        v = rec.get(key)
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ValueError(f"training state record {path} is corrupt: {key!r} must be an integer >= 0, got {v!r}")
    if not isinstance(rec.get("elapsed_s"), (int, float)) or not isinstance(rec.get("optimizer_scalars"), dict):
        raise ValueError(f"training state record {path} is corrupt: missing 'elapsed_s' or 'optimizer_scalars'")
    window = rec.get("metrics_window")
    if window is not None and not (
        isinstance(window, dict)
        and set(window) == set(WINDOW_KEYS)
        and isinstance(window["steps"], int)
        and not isinstance(window["steps"], bool)
        and window["steps"] >= 0
        and all(isinstance(window[k], (int, float)) and math.isfinite(window[k]) for k in ("bpd_sum", "norm_sum"))
    ):
        raise ValueError(f"training state record {path} is corrupt: bad 'metrics_window' {window!r}")
    threads = rec.get("threads")
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
        raise ValueError(f"training state record {path} is corrupt: 'threads' must be an integer >= 1, got {threads!r}")
    return rec


def _fingerprint(step: int, tensors: dict[str, torch.Tensor], record: dict) -> str:
    """The fingerprint <step>-<hash>: the hash is SHA-256 (first 32 hex digits) of the record (as sorted JSON,
    less UNHASHED_KEYS) and of every tensor's name, dtype, shape and bytes."""
    return f"{step}-{tensors_digest(tensors, json.dumps(record, sort_keys=True).encode())[:32]}"


def _scalar_to_json(value) -> dict:
    if isinstance(value, torch.Tensor):
        # float32 -> Python float -> JSON -> float32 is exact (JSON keeps every double's digits)
        return {"value": value.item(), "dtype": str(value.dtype).removeprefix("torch.")}
    if isinstance(value, (bool, int, float)) and not (isinstance(value, float) and not math.isfinite(value)):
        return {"value": value}
    raise ValueError(f"cannot save optimizer state value {value!r} ({type(value).__name__})")


def _scalar_from_json(entry, path: Path):
    if not isinstance(entry, dict) or not isinstance(entry.get("value"), (bool, int, float)):
        raise ValueError(f"training state record {path} is corrupt: bad optimizer scalar {entry!r}")
    if "dtype" not in entry:
        return entry["value"]
    dtype = getattr(torch, str(entry["dtype"]), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"training state record {path} is corrupt: unknown dtype {entry['dtype']!r}")
    return torch.tensor(entry["value"], dtype=dtype)
