"""Tests of a training run directory under stress: a second writer, kill -9, stale temporary files, file modes,
a full disk, identical files from identical runs, metrics across a resume, damaged weights, older formats.

Runs use tiny PixelCNN++ models on an 8x8 npz dataset (as in test_training.py); one test trains in a child
process and kills it with SIGKILL.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from run_helpers import flip_bit, quiet, stop_after
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

import pixelar
import pixelar.image_files
import pixelar.io
from pixelar.cli import main
from pixelar.config import TrainConfig
from pixelar.io import DiskFullError, read_json, write_json
from pixelar.training import train
from pixelar.training.checkpoint import RunDir, RunDirBusy, _fingerprint

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py
SRC = str(Path(pixelar.__file__).parents[1])  # the pixelar the child processes import: this one


def same_bytes(a: Path, b: Path, names=("model.safetensors", "training_state.safetensors")) -> bool:
    return all((a / n).read_bytes() == (b / n).read_bytes() for n in names)


def metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


# a training process that reports step 4 (checkpoint at 3) and then waits, holding the run directory's lock
CHILD = """
import json, sys, torch
from pixelar.config import TrainConfig
from pixelar.training import train
torch.set_num_threads(1)

def hold(step):
    if step == 4:
        print("at step 4", flush=True)
        sys.stdin.readline()  # until the test kills this process

train(TrainConfig.from_dict(json.loads(sys.argv[2])), sys.argv[1], progress=False, log=lambda m: None, on_step=hold)
"""


def test_a_second_writer_is_refused_and_a_killed_one_leaves_nothing_stuck(cfg, tmp_path, capsys):
    run, ref = tmp_path / "run", tmp_path / "ref"
    quiet(cfg, ref)
    with open(tmp_path / "child.err", "w") as err:
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(run), json.dumps(cfg.to_dict())],
            text=True,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            env={**os.environ, "PYTHONPATH": SRC},
        )
    try:
        assert child.stdout.readline() == "at step 4\n", (tmp_path / "child.err").read_text()
        config = (run / "config.json").read_bytes()
        busy = rf"{run} is in use by another training process \(pid {child.pid}\)"
        with pytest.raises(RunDirBusy, match=busy):  # a new run of another model into the same directory
            quiet(dataclasses.replace(cfg, model="pixelcnn"), run)
        with pytest.raises(RunDirBusy, match=busy):
            quiet(cfg, run, resume=True)
        assert (
            main(
                [
                    "train",
                    "--model",
                    "pixelcnn",
                    "--size",
                    "tiny",
                    "--dataset",
                    cfg.dataset,
                    "--run-dir",
                    str(run),
                    "--no-progress",
                ]
            )
            == 1
        )
        assert "in use by another training process" in capsys.readouterr().err
        assert (run / "config.json").read_bytes() == config  # nothing of the refused runs was written
        pixelar.load_model(run)  # readers take no lock
    finally:
        child.kill()  # SIGKILL: no clean-up code runs, the kernel drops the lock
        child.wait()
    # temporary files of writers killed mid-write, and files that are not pixelar's (kept)
    stale = [run / ".training_state.safetensors.0a1b2c3d.tmp", run / ".metrics.jsonl.k3j_x9q2.tmp"]
    for p in stale:
        p.write_bytes(b"partial")
    (run / "notes.tmp").write_text("mine")
    (run / ".notes.txt.tmp").write_text("mine")
    messages = []
    train(cfg, run, resume=True, progress=False, log=messages.append)
    assert any("removed 2 temporary file(s)" in m for m in messages)
    assert not any(p.exists() for p in stale) and (run / "notes.tmp").exists() and (run / ".notes.txt.tmp").exists()
    assert same_bytes(run, ref)  # resumed from the killed run's checkpoint, bitwise


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_run_files_follow_the_umask(cfg, tmp_path, umask):
    old = os.umask(umask)
    try:
        quiet(dataclasses.replace(cfg, max_steps=3, sample_n=2), tmp_path / "run")
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "run").iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "training_state.json",
        "training_state.safetensors",
        "metrics.jsonl",
        "samples.png",
        "curves.png",
        ".lock",
    } == modes.keys()
    assert modes == dict.fromkeys(modes, 0o666 & ~umask)


@pytest.mark.parametrize("fails", ["tensors", "record", "samples"])
def test_a_full_disk_stops_with_a_clear_message_and_keeps_the_checkpoint(cfg, tmp_path, monkeypatch, capsys, fails):
    run, ref = tmp_path / "run", tmp_path / "ref"
    args = [
        "train",
        "--size",
        "tiny",
        "--dataset",
        cfg.dataset,
        "--batch-size",
        "8",
        "--steps",
        "6",
        "--checkpoint-every",
        "3",
        "--sample-n",
        "2",
        "--no-progress",
    ]
    assert main([*args, "--run-dir", str(ref)]) == 0
    real_save, real_replace, saves, replaces = pixelar.io.save_file, os.replace, [], []

    def save_file(tensors, path, metadata=None):  # as safetensors reports it: "(os error 28)", no errno
        saves.append(path)
        if len(saves) == 3:  # the first save at step 6 (step 3 wrote training_state and model.safetensors)
            Path(path).write_bytes(b"partial")
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        real_save(tensors, path, metadata=metadata)

    def replace(src, dst):  # the second training_state.json (step 6) exceeds the quota
        replaces.append(Path(dst).name)
        if replaces.count("training_state.json") == 2:
            raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT), str(src))
        real_replace(src, dst)

    def save_grid(images, spec, path, **kw):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    if fails == "tensors":
        monkeypatch.setattr(pixelar.io, "save_file", save_file)
    elif fails == "record":
        monkeypatch.setattr(pixelar.io.os, "replace", replace)
    else:
        monkeypatch.setattr(pixelar.image_files, "save_grid", save_grid)
    capsys.readouterr()
    assert main([*args, "--run-dir", str(run)]) == 1
    err = capsys.readouterr().err
    monkeypatch.undo()
    what, name, step = {
        "tensors": ("disk full (no space left on device)", "training_state.safetensors", 3),
        "record": ("disk quota exceeded", "training_state.json", 3),
        "samples": ("disk full (no space left on device)", "samples.png", 6),
    }[fails]
    assert err == (
        f"pixelar train: error: {what} while writing {run / name}; free space in {run}; the last good "
        f"checkpoint in {run} (step {step}) is kept: free space, then resume the run (pixelar train "
        f"--resume {run})\n"
    )
    assert not list(run.glob(".*.tmp"))
    assert RunDir(run).load().progress["step"] == step
    quiet(TrainConfig(), run, resume=True)
    assert same_bytes(run, ref)


def test_identical_runs_write_identical_files(cfg, tmp_path):
    for name in ("a", "b"):
        quiet(cfg, tmp_path / name)
    assert same_bytes(
        tmp_path / "a", tmp_path / "b", ("model.safetensors", "training_state.safetensors", "config.json")
    )


def test_resumed_metrics_equal_uninterrupted_ones(cfg, tmp_path):
    cfg = dataclasses.replace(cfg, max_steps=8, log_every=4, checkpoint_every=3)
    full, cut = tmp_path / "full", tmp_path / "cut"
    quiet(cfg, full)
    with pytest.raises(KeyboardInterrupt):
        quiet(cfg, cut, on_step=stop_after(5))  # the checkpoint at step 3 is mid-window (lines at 4 and 8)
    quiet(cfg, cut, resume=True)
    wall_clock = {"elapsed_s", "train_s", "images_per_s", "data_fraction"}
    lines = {d: [{k: v for k, v in m.items() if k not in wall_clock} for m in metrics(d)] for d in (full, cut)}
    assert [m["step"] for m in lines[full]] == [4, 8, 8] and lines[full][-1]["final"]
    assert lines[cut] == lines[full]
    assert same_bytes(cut, full)


@pytest.mark.parametrize("version", ["random fingerprint", "content fingerprint"])
def test_a_checkpoint_of_a_previous_format_resumes(cfg, tmp_path, version):
    """What older versions wrote: no metrics window in the record, model.safetensors with metadata
    {"fingerprint"} (no digest); with a random fingerprint and metadata {"format", "step", "fingerprint"} (it
    cannot be checked), or with a content fingerprint of that record (it is checked). Both resume and load."""
    run, ref = tmp_path / "run", tmp_path / "ref"
    quiet(dataclasses.replace(cfg, max_steps=3), run)
    quiet(cfg, ref)
    record = read_json(run / "training_state.json")
    del record["metrics_window"]
    path = run / "training_state.safetensors"
    tensors = load_file(path)
    if version == "random fingerprint":
        record["fingerprint"] = "3-0123456789abcdef"
        metadata = {"format": "pixelar-training-state", "step": "3", "fingerprint": record["fingerprint"]}
    else:
        hashed = {k: v for k, v in record.items() if k not in ("fingerprint", "elapsed_s")}
        record["fingerprint"] = _fingerprint(3, tensors, hashed)
        metadata = {"pixelar-training-state": record["fingerprint"]}
    write_json(run / "training_state.json", record)
    save_file(tensors, path, metadata=metadata)
    save_file(load_file(run / "model.safetensors"), run / "model.safetensors", {"fingerprint": record["fingerprint"]})
    assert pixelar.load_model(run).name == "pixelcnn_pp"
    quiet(cfg, run, resume=True, max_steps=6)
    for name in ("model.safetensors", "training_state.safetensors"):
        a, b = load_file(run / name), load_file(ref / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_damaged_weights_are_refused_when_loaded(cfg, tmp_path, capsys):
    """A run's model.safetensors and a saved model's carry the digest of their tensors: a flipped bit (here the
    sign of a weight) is refused by every command that loads them, naming the file."""
    run, saved = tmp_path / "run", tmp_path / "saved"
    quiet(dataclasses.replace(cfg, max_steps=3), run)
    pixelar.load_model(run).save(saved)
    for d in (run, saved):
        pixelar.load_model(d)  # whole: loads
        flip_bit(d / "model.safetensors")
        with pytest.raises(ValueError, match=f"model weights {d / 'model.safetensors'} is damaged: its tensors do not"):
            pixelar.load_model(d)
    assert main(["eval", str(run), "--no-progress"]) == 2
    assert "do not match the checksum stored in the file" in capsys.readouterr().err
    # the training state is whole: resuming rewrites the run's model.safetensors from it
    quiet(TrainConfig(), run, resume=True, max_steps=3)
    pixelar.load_model(run)


def test_disk_full_error_is_an_oserror_with_a_sentence(tmp_path):
    e = pixelar.io.disk_full("/runs/a/model.safetensors", OSError(errno.ENOSPC, "No space left on device"))
    assert isinstance(e, DiskFullError) and isinstance(e, OSError) and e.errno == errno.ENOSPC
    assert (
        str(e) == "disk full (no space left on device) while writing /runs/a/model.safetensors; free space in /runs/a"
    )
    quota = pixelar.io.disk_full(tmp_path, OSError(errno.EDQUOT, "Disk quota exceeded"))  # the file is unknown
    assert str(quota) == f"disk quota exceeded while writing in {tmp_path}; free space there"
