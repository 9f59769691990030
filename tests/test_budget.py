"""A wall-clock budget for training (TrainConfig.minutes, `pixelar train --minutes`): the number of steps chosen
from the measured speed of the first steps, recorded in config.json, and resumed exactly.

The training loop's clock is replaced by a fake one that advances one second per step, so the choices are exact.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from run_helpers import checkpoint_differences, quiet

from pixelar.cli import main
from pixelar.config import TrainConfig
from pixelar.io import read_json, read_tensors
from pixelar.training import budget, loop

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


class FakeClock:
    """loop.clock: the time stands still within a step, and on_step moves it on by one second."""

    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def tick(self, step: int) -> None:
        self.now += 1.0


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(loop, "clock", fake)
    return fake


def train_section(run_dir) -> dict:
    return read_json(Path(run_dir) / "config.json")["train"]


def metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def test_step_budget_measures_then_chooses():
    b = budget.StepBudget(minutes=0.25)  # 15 s; the window: 5% of it, 0.75 s, and at least 3 timed steps
    assert b.window_s == pytest.approx(0.75)
    # the first step (here 5 s: compiling) counts in the budget, not in the speed
    assert [b.observe(s, e) for s, e in ((1, 5.0), (2, 5.5), (3, 6.0))] == [None, None, None]
    assert b.observe(4, 6.5) == 4 + int((15 - 6.5) / 0.5)  # 0.5 s per step over steps 2-4 -> 21
    assert b.record == {
        "minutes": 0.25,
        "measured_at_step": 4,
        "measured_elapsed_s": 6.5,
        "seconds_per_step": 0.5,
        "max_steps": 21,
    }
    spent = budget.StepBudget(minutes=0.01)
    assert spent.observe(1, 0.7) == 1 and spent.record["seconds_per_step"] is None  # stops at once
    # a long budget measures for at most WINDOW_MAX_S
    assert budget.StepBudget(minutes=60).window_s == budget.WINDOW_MAX_S


def test_a_budget_run_chooses_its_steps_records_them_and_stops(cfg, tmp_path, clock):
    cfg = dataclasses.replace(cfg, minutes=0.25, checkpoint_every=100)
    messages = []
    result = loop.train(cfg, tmp_path / "run", progress=False, log=messages.append, on_step=clock.tick)
    # at step 4 the fake clock shows 3 s (steps 1-3), 1 s per step since step 1: 4 + (15 - 3) / 1 steps
    assert result["steps"] == 16
    section = train_section(tmp_path / "run")
    assert section["minutes"] == 0.25 and section["max_steps"] == 16
    assert section["budget"] == {
        "minutes": 0.25,
        "measured_at_step": 4,
        "measured_elapsed_s": 3.0,
        "seconds_per_step": 1.0,
        "max_steps": 16,
    }
    assert read_json(tmp_path / "run" / "training_state.json")["step"] == 16  # the last step checkpointed
    final = metrics(tmp_path / "run")[-1]
    assert final["final"] and final["budget_minutes"] == 0.25 and final["train_s"] == 16.0
    assert any("-> 16 steps" in m for m in messages)
    assert any("training took 0.27 min of the 0.25 min budget" in m for m in messages)
    # a budget run and a run of its chosen steps are the same run
    quiet(dataclasses.replace(cfg, minutes=None, max_steps=16), tmp_path / "steps")
    assert not checkpoint_differences(tmp_path / "run", tmp_path / "steps")
    # resumed with more steps: the count given replaces the budget's, and the end says so
    messages.clear()
    loop.train(TrainConfig(), tmp_path / "run", resume=True, max_steps=18, progress=False, log=messages.append)
    assert any("min for 18 steps (given on resume, in place of the 0.25 min budget's 16)" in m for m in messages)


def test_a_budget_run_resumes_exactly(cfg, tmp_path, clock):
    cfg = dataclasses.replace(cfg, minutes=0.25, checkpoint_every=5)

    def stop_after_10(step):
        clock.tick(step)
        if step == 10:
            raise KeyboardInterrupt

    quiet(cfg, tmp_path / "full", on_step=clock.tick)
    with pytest.raises(KeyboardInterrupt):
        quiet(cfg, tmp_path / "cut", on_step=stop_after_10)
    assert train_section(tmp_path / "cut")["max_steps"] == 16  # chosen at step 4, before the interruption
    state = read_json(tmp_path / "cut" / "training_state.json")
    assert state["step"] == 10 and state["elapsed_s"] == 9.0  # the time spent travels with the checkpoint
    result = quiet(TrainConfig(), tmp_path / "cut", resume=True, on_step=clock.tick)
    assert result["steps"] == 16
    for name in ("model.safetensors", "training_state.safetensors"):
        a, b = read_tensors(tmp_path / "full" / name), read_tensors(tmp_path / "cut" / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert train_section(tmp_path / "cut") == train_section(tmp_path / "full")


def test_a_run_interrupted_while_measuring_measures_again_from_the_time_spent(cfg, tmp_path, clock):
    cfg = dataclasses.replace(cfg, minutes=0.25, checkpoint_every=2)

    def stop_after_3(step):
        clock.tick(step)
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        quiet(cfg, tmp_path / "run", on_step=stop_after_3)
    assert train_section(tmp_path / "run")["budget"] is None  # still measuring at the checkpoint of step 2
    result = quiet(TrainConfig(), tmp_path / "run", resume=True, on_step=clock.tick)
    record = train_section(tmp_path / "run")["budget"]
    # the checkpoint had spent 1 s (step 1); the session's first step (3) is not timed: 3 timed steps end at 6,
    # when 1 + 3 s are spent
    assert record["measured_at_step"] == 6 and record["measured_elapsed_s"] == 4.0
    assert result["steps"] == record["max_steps"] == 6 + 11


def test_budget_settings_are_checked(cfg, tmp_path):
    with pytest.raises(ValueError, match="minutes must be a number > 0"):
        dataclasses.replace(cfg, minutes=0).validate()
    with pytest.raises(ValueError, match="max_steps=5 and minutes=0.5 both given"):
        quiet(dataclasses.replace(cfg, minutes=0.5), tmp_path / "run", max_steps=5)


def test_cli_minutes(npz_data, tmp_path, capsys):
    run = tmp_path / "run"
    tiny = ["--size", "tiny", "--dataset", npz_data, "--batch-size", "8", "--sample-n", "0", "--no-progress"]
    assert main(["train", *tiny, "--minutes", "0.5", "--steps", "10", "--run-dir", str(run)]) == 2
    assert "--minutes and --steps both given" in capsys.readouterr().err
    assert main(["train", *tiny, "--minutes", "0.005", "--run-dir", str(run)]) == 0  # 0.3 s of the real clock
    out = capsys.readouterr().out
    section = train_section(run)
    assert section["minutes"] == 0.005 and section["budget"]["max_steps"] == section["max_steps"]
    assert f"-> {section['max_steps']} steps" in out and "min budget" in out
    assert main(["train", "--resume", str(run), "--minutes", "1", "--no-progress"]) == 2
    assert "--minutes 1.0 conflicts with the run's minutes 0.005" in capsys.readouterr().err


def test_a_recipe_takes_a_time_budget_for_its_unstated_steps(tmp_path, monkeypatch, capsys):
    import pixelar.cli as cli

    seen = {}

    def fake_train(cfg, run_dir, resume, progress, **kw):  # the TrainConfig `pixelar train` would train with
        seen["cfg"] = cfg
        return {"test_bpd": 0.0, "run_dir": str(run_dir)}

    monkeypatch.setattr(cli, "train", fake_train)
    args = ["train", "--recipe", "pixelcnn_pp-cifar10", "--run-dir", str(tmp_path / "r")]
    assert main([*args, "--minutes", "30"]) == 0  # the paper states no number of steps: the budget chooses it
    assert seen["cfg"].minutes == 30 and seen["cfg"].size == "paper"
    seen.clear()
    assert main([*args, "--minutes", "30", "--steps", "5"]) == 2 and not seen
    assert "--minutes and --steps both given" in capsys.readouterr().err
