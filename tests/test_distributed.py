"""Training and evaluation under torchrun: 2 processes on the CPU (gloo), a tiny model, seconds per launch.

N processes at global batch B take the steps of one process at batch B (equal up to float summation order,
dropout off); resume works across numbers of processes; evaluation scores every image once and reports one
process's figure to the last digit (a test set of 13 images shared by 2 and 3 processes); a NaN on one
process skips the step on all; a process killed mid-run is restarted by torchrun and the run continues from
its checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from run_helpers import launch, quiet
from safetensors.torch import load_file

import pixelar
from pixelar.config import TrainConfig
from pixelar.data import load_dataset
from pixelar.evaluation import evaluate

STEPS = 6


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    """40 training images (36 after the validation carve-out) and 13 test images: 13 is shared unevenly."""
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    x = rng.integers(0, 256, (53, 8, 8), dtype=np.uint8)
    np.savez(path, x_train=x[:40], y_train=np.arange(40) % 4, x_test=x[40:], y_test=np.arange(13) % 4)
    return f"npz:{path}"


def flags(data: str, steps: int = STEPS) -> list[str]:
    return [
        *("--size", "tiny", "--dataset", data, "--batch-size", "8", "--lr", "0.001", "--checkpoint-every", "2"),
        "--log-every=1",
        *("--steps", str(steps), "--sample-n", "0", "--no-progress", "--set", "dropout=0.0"),
    ]


def config(data: str, steps: int = STEPS) -> TrainConfig:
    """The settings of flags(): the same run in this process."""
    return TrainConfig(
        size="tiny", dataset=data, batch_size=8, lr=1e-3, checkpoint_every=2, log_every=1, max_steps=steps,
        sample_n=0, model_overrides={"dropout": 0.0},
    )  # fmt: skip


def train_here(cfg: TrainConfig, run: Path) -> None:
    """The run in this process, on one thread like each launched process."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        quiet(cfg, run)
    finally:
        torch.set_num_threads(threads)


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model.safetensors"))


def assert_close_weights(a: Path, b: Path, atol: float) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    worst = max((wa[k] - wb[k]).abs().max().item() for k in wa)
    assert worst <= atol, f"weights differ by {worst}"


@pytest.fixture(scope="module")
def two(data, tmp_path_factory) -> Path:
    """A run of STEPS steps by 2 processes."""
    cwd = tmp_path_factory.mktemp("two")
    launch(2, "train", *flags(data), "--run-dir", "run", cwd=cwd)
    return cwd / "run"


@pytest.fixture(scope="module")
def one(data, tmp_path_factory) -> Path:
    """The same run in this process (one thread, as the launched processes)."""
    run = tmp_path_factory.mktemp("one") / "run"
    train_here(config(data), run)
    return run


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_take_the_steps_of_one(two, one):
    # measured: 3e-7 after 6 steps; a leak between the processes' shares or a wrong average moves weights by
    # the learning rate (1e-3) at the first step
    assert_close_weights(two, one, atol=1e-5)
    a, b = metrics(two), metrics(one)
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        for key in ("train_bpd", "grad_norm", "test_bpd"):
            if key in ra:
                assert ra[key] == pytest.approx(rb[key], rel=1e-5), (ra["step"], key)
    train_state = load_file(str(two / "training_state.safetensors"))
    assert "rng.rank1.torch" in train_state  # the second process's own stream is kept for an exact resume


def test_a_batch_that_cannot_be_shared_is_refused_before_anything_starts(data, tmp_path):
    proc = launch(2, "train", *flags(data), "--batch-size", "7", "--run-dir", "run", cwd=tmp_path, ok=False)
    assert proc.returncode != 0 and "batch_size=7 cannot be shared by 2 process(es)" in proc.stderr
    assert not (tmp_path / "run" / "config.json").exists()


def test_evaluation_scores_every_image_once_whatever_the_number_of_processes(two, data, tmp_path):
    model = pixelar.load_model(two)
    single = evaluate(model, load_dataset(data, "test"), batch_size=4)
    assert single["num_images"] == 13
    for n in (2, 3):  # 13 = 6 + 7 = 4 + 4 + 5 images
        out = launch(n, "eval", str(two), "--json", "--batch-size", "4", cwd=tmp_path)
        res = json.loads(out.strip().splitlines()[-1])
        assert res["num_images"] == 13
        assert res["bpd"] == single["bpd"]  # the same batches, the sums added exactly: to the last digit


def test_resume_from_two_processes_in_one_and_from_one_in_two(two, one, data, tmp_path):
    # 2 -> 1: two processes for 2 steps, then this process to the end
    launch(2, "train", *flags(data, steps=2), "--run-dir", "a", cwd=tmp_path)
    quiet(TrainConfig(), tmp_path / "a", resume=True, max_steps=STEPS)
    assert_close_weights(tmp_path / "a", one, atol=1e-5)
    # 1 -> 2: this process for 2 steps, then two processes to the end
    quiet(config(data, steps=2), tmp_path / "b")
    launch(2, "train", "--resume", "b", "--steps", str(STEPS), "--no-progress", cwd=tmp_path)
    assert_close_weights(tmp_path / "b", two, atol=1e-5)
    assert [r["step"] for r in metrics(tmp_path / "b")] == [r["step"] for r in metrics(two)]


def test_a_nan_in_one_process_skips_the_step_in_all(data, tmp_path):
    script = tmp_path / "poisoned.py"
    script.write_text(
        textwrap.dedent(
            """
            import os, sys
            from pixelar.cli import main
            from pixelar.models.base import ARImageModel

            real, calls = ARImageModel.log_prob, [0]

            def log_prob(self, x, cond=None, reduce=True):  # rank 1's second training step gives NaN
                out = real(self, x, cond, reduce)
                if self.training and os.environ["RANK"] == "1":
                    calls[0] += 1
                    if calls[0] == 2:
                        return out * float("nan")
                return out

            ARImageModel.log_prob = log_prob
            sys.exit(main(sys.argv[1:]))
            """
        )
    )
    out = launch(2, "train", *flags(data), "--run-dir", "run", script=script, cwd=tmp_path)
    assert "step 2: non-finite loss" in out
    lines = metrics(tmp_path / "run")
    assert [r["step"] for r in lines if r.get("skipped")] == [2]
    assert lines[-1]["final"] and np.isfinite(lines[-1]["test_bpd"])


def test_a_killed_process_is_restarted_by_torchrun_and_the_run_resumes(two, data, tmp_path):
    script = tmp_path / "killed.py"
    script.write_text(
        textwrap.dedent(
            """
            import os, signal, sys
            import pixelar.training.loop as loop
            from pixelar.cli import main

            checkpoint = loop._checkpoint

            def killing(run, progress):  # the first attempt's rank 1 dies after step 3 (checkpoint at 2)
                checkpoint(run, progress)
                first = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
                if run.step == 3 and first and os.environ["RANK"] == "1":
                    os.kill(os.getpid(), signal.SIGKILL)

            loop._checkpoint = killing
            sys.exit(main(sys.argv[1:]))
            """
        )
    )
    out = launch(2, "train", *flags(data), "--run-dir", "run", script=script, restarts=1, cwd=tmp_path)
    assert "restarted: resuming run from its last checkpoint" in out
    assert_close_weights(tmp_path / "run", two, atol=0.0)  # the same processes, the same streams: bitwise
    assert [r["step"] for r in metrics(tmp_path / "run")] == [r["step"] for r in metrics(two)]


def test_grad_accum_takes_the_same_step_in_micro_batches(one, data, tmp_path):
    train_here(dataclasses.replace(config(data), grad_accum=4), tmp_path / "run")
    assert_close_weights(tmp_path / "run", one, atol=1e-5)
    # Adam would hide a gradient off by a constant factor; the gradient norm does not
    a, b = metrics(tmp_path / "run"), metrics(one)
    assert [(r["step"], "grad_norm" in r) for r in a] == [(r["step"], "grad_norm" in r) for r in b]
    norms = [(ra["grad_norm"], rb["grad_norm"]) for ra, rb in zip(a, b) if "grad_norm" in rb]
    assert norms, "no line of the metrics log has a gradient norm"
    for got, want in norms:
        assert got == pytest.approx(want, rel=1e-5)


def test_distaug_and_class_conditioning_train_on_two_processes_as_on_one(data, tmp_path):
    extra = ["--distaug", "rot90", "--class-conditional", "--sample-n", "20"]
    launch(2, "train", *flags(data), *extra, "--run-dir", "two", cwd=tmp_path)
    cfg = dataclasses.replace(config(data), distaug=["rot90"], class_conditional=True, sample_n=20)
    train_here(cfg, tmp_path / "one")
    # the augmentation indices are drawn for the whole batch in every process: the same transformations
    assert_close_weights(tmp_path / "two", tmp_path / "one", atol=1e-5)
    # the samples' chunks (16 + 4 images) were drawn by the two processes and written by rank 0
    assert (tmp_path / "two" / "samples.png").stat().st_size > 0
