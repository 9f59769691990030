"""Tests of a training run directory: file modes, identical files from identical runs, metrics across a resume.

Runs use tiny PixelCNN++ models on an 8x8 npz dataset (as in test_training.py).
"""
from __future__ import annotations

import dataclasses
import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from pixelar.config import TrainConfig
from pixelar.io import read_json, write_json
from pixelar.training import train

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def npz_data(tmp_path_factory) -> str:
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    np.savez(path, x_train=rng.integers(0, 256, (20, 8, 8), dtype=np.uint8), y_train=np.arange(20) % 4,
             x_test=rng.integers(0, 256, (12, 8, 8), dtype=np.uint8), y_test=np.arange(12) % 4)
    return f"npz:{path}"


@pytest.fixture
def cfg(npz_data) -> TrainConfig:
    return TrainConfig(size="tiny", dataset=npz_data, batch_size=8, max_steps=6, checkpoint_every=3, log_every=1,
                       eval_batch_size=16, sample_n=0, lr=5e-3)


def quiet(cfg, run_dir, **kw):
    return train(cfg, run_dir, progress=False, log=lambda msg: None, **kw)


def stop_after(n):
    def hook(step):
        if step == n:
            raise KeyboardInterrupt

    return hook


def same_bytes(a: Path, b: Path, names=("model.safetensors", "training_state.safetensors")) -> bool:
    return all((a / n).read_bytes() == (b / n).read_bytes() for n in names)


def metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_run_files_follow_the_umask(cfg, tmp_path, umask):
    old = os.umask(umask)
    try:
        quiet(dataclasses.replace(cfg, max_steps=3, sample_n=2), tmp_path / "run")
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "run").iterdir()}
    assert {"config.json", "model.safetensors", "training_state.json", "training_state.safetensors", "metrics.jsonl",
            "samples.png"} == modes.keys()
    assert modes == dict.fromkeys(modes, 0o666 & ~umask)


def test_identical_runs_write_identical_files(cfg, tmp_path):
    for name in ("a", "b"):
        quiet(cfg, tmp_path / name)
    assert same_bytes(tmp_path / "a", tmp_path / "b", ("model.safetensors", "training_state.safetensors", "config.json"))


def test_resumed_metrics_equal_uninterrupted_ones(cfg, tmp_path):
    cfg = dataclasses.replace(cfg, max_steps=8, log_every=4, checkpoint_every=3)
    full, cut = tmp_path / "full", tmp_path / "cut"
    quiet(cfg, full)
    with pytest.raises(KeyboardInterrupt):
        quiet(cfg, cut, on_step=stop_after(5))  # the checkpoint at step 3 is mid-window (lines at 4 and 8)
    quiet(cfg, cut, resume=True)
    wall_clock = {"elapsed_s", "images_per_s", "data_fraction"}
    lines = {d: [{k: v for k, v in m.items() if k not in wall_clock} for m in metrics(d)] for d in (full, cut)}
    assert [m["step"] for m in lines[full]] == [4, 8, 8] and lines[full][-1]["final"]
    assert lines[cut] == lines[full]
    assert same_bytes(cut, full)


def test_a_checkpoint_of_the_previous_format_resumes(cfg, tmp_path):
    """Metadata {"format", "step", "fingerprint"} and no metrics window in the record: still resumable."""
    run, ref = tmp_path / "run", tmp_path / "ref"
    quiet(dataclasses.replace(cfg, max_steps=3), run)
    quiet(cfg, ref)
    record = read_json(run / "training_state.json")
    del record["metrics_window"]
    write_json(run / "training_state.json", record)
    path = run / "training_state.safetensors"
    save_file(load_file(path), path, metadata={"format": "pixelar-training-state", "step": "3",
                                               "fingerprint": record["fingerprint"]})
    quiet(cfg, run, resume=True, max_steps=6)
    for name in ("model.safetensors", "training_state.safetensors"):
        a, b = load_file(run / name), load_file(ref / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
