"""The CPU thread count of training and evaluation: chosen once per job by timing a few of its own steps at
each candidate count (pixelar.threads.probe), recorded in the run's checkpoint and reused on resume, so that a
run stays bitwise reproducible at its count whatever the machine's load."""

from __future__ import annotations

import dataclasses
import time

import pytest
import torch
from run_helpers import quiet, tensors_equal

import pixelar
from pixelar import threads
from pixelar.data import load_dataset
from pixelar.evaluation import bpd as eval_bpd
from pixelar.evaluation import evaluate
from pixelar.io import read_json, read_tensors
from pixelar.training import loop


def _sleeper(per_count: dict[int, float], calls: list | None = None):
    """A step that takes per_count[torch's thread count] seconds."""

    def step():
        n = torch.get_num_threads()
        if calls is not None:
            calls.append(n)
        time.sleep(per_count[n])

    return step


def test_probe_takes_the_fastest_count_and_restores_torchs():
    with threads.num_threads(2):
        calls = []
        record = threads.probe(_sleeper({2: 0.03, 1: 0.005}, calls), [2, 1])
        assert record["threads"] == 1 and set(record["seconds"]) == {1, 2}
        assert record["seconds"][1] < record["seconds"][2]
        assert calls == [2, 2, 2, 1, 1, 1]  # per count: a first untimed call, then the best of 2
        assert torch.get_num_threads() == 2
        assert threads.probe(_sleeper({2: 0.005, 1: 0.03}), [2, 1])["threads"] == 2
        # within 5% of the fastest, the larger count wins (an idle machine's near-tie)
        assert threads.probe(_sleeper({2: 0.0201, 1: 0.02}), [2, 1])["threads"] == 2
        # a first step longer than max_first_s: no probing, the first count
        slow = threads.probe(_sleeper({2: 0.05, 1: 0.001}), [2, 1], max_first_s=0.01)
        assert slow == {"threads": 2, "seconds": {}} and torch.get_num_threads() == 2
    text = threads.describe_probe({"threads": 1, "seconds": {2: 0.5, 1: 0.125}})
    assert text == "1 thread (0.125 s/step; 2 threads: 0.5 s/step)"


def test_candidate_counts():
    with threads.num_threads(8):
        assert threads.candidate_counts() == [8, 4, 1]
    with threads.num_threads(2):
        assert threads.candidate_counts() == [2, 1]
    with threads.num_threads(1):
        assert threads.candidate_counts() == [1]


def test_a_probed_count_is_logged_checkpointed_and_reused_on_resume(cfg, tmp_path, monkeypatch):
    monkeypatch.setattr(loop, "STEP_WORK_THRESHOLD", 0.0)  # probe even the tiny model's steps
    seen = []

    def fake_probe(step, counts):
        step()  # a real probe step: it must leave no trace (below)
        seen.append(counts)
        return {"threads": 1, "seconds": {2: 0.3, 1: 0.1}}

    monkeypatch.setattr(loop, "probe", fake_probe)
    lines = []
    with threads.num_threads(2):
        result = loop.train(dataclasses.replace(cfg, max_steps=3), tmp_path / "run", progress=False, log=lines.append)
        assert torch.get_num_threads() == 2  # restored after the run
    assert seen == [[2, 1]] and result["threads"] == 1
    assert "threads: 1 thread (0.1 s/step; 2 threads: 0.3 s/step), the fastest of" in "\n".join(lines)
    assert read_json(tmp_path / "run" / "training_state.json")["threads"] == 1

    def no_probe(step, counts):
        raise AssertionError("a resumed run must not probe")

    monkeypatch.setattr(loop, "probe", no_probe)
    lines.clear()
    with threads.num_threads(2):
        result = loop.train(cfg, tmp_path / "run", resume=True, max_steps=6, progress=False, log=lines.append)
    assert result["threads"] == 1
    assert any("threads: 1, the count the run used before its checkpoint" in line for line in lines)
    # bitwise the run of 6 steps on 1 thread: the probe step changed neither data, RNG nor weights
    quiet(cfg, tmp_path / "ref", threads=1)
    for name in ("model.safetensors", "training_state.safetensors"):
        assert tensors_equal(read_tensors(tmp_path / "run" / name), read_tensors(tmp_path / "ref" / name))


def test_the_probe_step_leaves_no_trace_with_dropout(cfg, tmp_path, monkeypatch):
    """A probed run (dropout on: the torch RNG matters) equals a run given the count the probe chose."""
    monkeypatch.setattr(loop, "STEP_WORK_THRESHOLD", 0.0)
    cfg = dataclasses.replace(cfg, model_overrides={"dropout": 0.5})
    with threads.num_threads(2):
        probed = quiet(cfg, tmp_path / "probed")
    assert probed["threads"] in (1, 2)
    quiet(cfg, tmp_path / "given", threads=probed["threads"])
    for name in ("model.safetensors", "training_state.safetensors"):
        assert tensors_equal(read_tensors(tmp_path / "probed" / name), read_tensors(tmp_path / "given" / name))


def test_small_steps_take_one_thread_and_given_counts_win(cfg, tmp_path, monkeypatch):
    monkeypatch.setattr(loop, "probe", lambda step, counts: pytest.fail("no probe for a tiny model's steps"))
    with threads.num_threads(2):
        assert quiet(dataclasses.replace(cfg, max_steps=3), tmp_path / "a")["threads"] == 1
        assert quiet(dataclasses.replace(cfg, max_steps=3), tmp_path / "b", threads=2)["threads"] == 2
    assert read_json(tmp_path / "b" / "training_state.json")["threads"] == 2
    with pytest.raises(ValueError, match="threads"):
        quiet(cfg, tmp_path / "c", threads=0)


def test_evaluation_probes_and_gives_the_figures_of_the_chosen_count(npz_data, monkeypatch):
    model = pixelar.create_model("pixelcnn_pp", pixelar.ImageSpec(1, 8, 8), size="tiny")
    ds = load_dataset(npz_data, "test")
    monkeypatch.setattr(eval_bpd, "STEP_WORK_THRESHOLD", 0.0)
    chosen = []

    def fake_probe(step, counts):
        step()
        chosen.append(counts)
        return {"threads": 1, "seconds": {2: 1.0, 1: 0.5}}

    monkeypatch.setattr(eval_bpd, "probe", fake_probe)
    with threads.num_threads(2):
        probed = evaluate(model, ds, batch_size=4)
        assert torch.get_num_threads() == 2
    assert chosen == [[2, 1]]
    monkeypatch.setattr(eval_bpd, "probe", lambda step, counts: pytest.fail("threads given: no probe"))
    with threads.num_threads(2):
        given = evaluate(model, ds, batch_size=4, threads=1)
    assert probed["bpd"] == given["bpd"]


def test_the_evaluation_batch_size_has_one_default():
    import inspect

    from pixelar.cli import build_parser
    from pixelar.config import TrainConfig
    from pixelar.evaluation import EVAL_BATCH_SIZE
    from pixelar.evaluation.probe import linear_probe

    assert inspect.signature(evaluate).parameters["batch_size"].default == EVAL_BATCH_SIZE
    assert inspect.signature(linear_probe).parameters["batch_size"].default == EVAL_BATCH_SIZE
    assert TrainConfig().eval_batch_size == EVAL_BATCH_SIZE
    parser = build_parser()
    assert parser.parse_args(["eval", "run"]).batch_size == EVAL_BATCH_SIZE
