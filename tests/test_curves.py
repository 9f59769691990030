"""Learning curves: `pixelar plot` of several runs, curves.png at the end of training (never failing it), and the
optional TensorBoard events (`pixelar train --tensorboard`, the pixelar[tensorboard] extra)."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest
from PIL import Image
from run_helpers import quiet, stop_after

from pixelar.cli import main
from pixelar.training import curves, loop

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def two_runs(npz_data, tmp_path_factory):
    """Two finished tiny runs of 6 steps, a metrics line at every step, on the npz fixture data."""
    from pixelar.config import TrainConfig

    root = tmp_path_factory.mktemp("runs")
    base = TrainConfig(size="tiny", dataset=npz_data, batch_size=8, max_steps=6, log_every=1, sample_n=0)
    runs = []
    for name, lr in (("lr_high", 5e-3), ("lr_low", 1e-3)):
        quiet(dataclasses.replace(base, lr=lr), root / name)
        runs.append(root / name)
    return runs


def test_a_run_draws_its_curves_at_the_end(two_runs):
    png = two_runs[0] / "curves.png"
    with Image.open(png) as img:
        assert img.format == "PNG" and img.size == (800, 500)
    c = curves.read_curves(two_runs[0])
    assert c.name == "lr_high" and c.train_step == [1, 2, 3, 4, 5, 6] and len(c.train_bpd) == 6
    final = json.loads((two_runs[0] / "metrics.jsonl").read_text().splitlines()[-1])
    assert (c.test_step, c.test_bpd, c.test_s) == (6, final["test_bpd"], final["train_s"])


def test_plot_of_two_runs_writes_a_png(two_runs, tmp_path, capsys):
    out = tmp_path / "both.png"
    for x in ("step", "time"):
        assert main(["plot", *map(str, two_runs), "--out", str(out), "--x", x, "--force"]) == 0
        with Image.open(out) as img:
            img.load()
            assert img.format == "PNG" and img.size == (800, 500)
            colours = {c for _, c in img.convert("RGB").getcolors(1 << 20)}
        assert {(31, 119, 180), (255, 127, 14)} <= colours  # both runs' lines, matplotlib's first two colours
    printed = capsys.readouterr().out
    assert f"wrote {out}: 2 run(s); test: lr_high " in printed and "lr_low " in printed
    assert main(["plot", str(two_runs[0]), "--out", str(out)]) == 2  # exists, no --force
    assert "pass --force" in capsys.readouterr().err


def test_runs_without_metrics_give_a_clear_error(two_runs, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["plot", str(empty), "--out", str(tmp_path / "a.png")]) == 2
    assert f"{empty} has no metrics.jsonl: not a training run directory" in capsys.readouterr().err
    assert main(["plot", str(tmp_path / "nothing"), "--out", str(tmp_path / "a.png")]) == 2
    assert "no run directory at" in capsys.readouterr().err
    (empty / "metrics.jsonl").write_text('{"step": 3, "skipped": true}\n{"step": 4, "train_')  # a cut line
    with pytest.raises(ValueError, match="holds no train or test bits/dim yet"):
        curves.read_curves(empty)
    assert not (tmp_path / "a.png").exists()
    with pytest.raises(ValueError, match="x must be one of step, time"):
        curves.plot_runs(two_runs, tmp_path / "a.png", x="epoch")


def test_runs_of_one_name_are_told_apart_by_their_paths(two_runs, tmp_path):
    import shutil

    other = tmp_path / "copy" / two_runs[0].name
    shutil.copytree(two_runs[0], other)
    drawn = curves.plot_runs([two_runs[0], other], tmp_path / "p.png")
    assert [c.name for c in drawn] == [str(two_runs[0]), str(other)]


def test_a_failed_plot_is_a_warning_not_a_failed_run(cfg, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no fonts")

    monkeypatch.setattr(loop, "plot_runs", broken)
    messages = []
    result = loop.train(cfg, tmp_path / "run", progress=False, log=messages.append)
    assert result["steps"] == 6 and not (tmp_path / "run" / "curves.png").exists()
    assert "warning: curves.png not written (RuntimeError: no fonts)" in messages


def test_tensorboard_is_refused_without_its_package(cfg, tmp_path, monkeypatch, capsys, npz_data):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    with pytest.raises(ValueError, match=r"tensorboard=True needs the tensorboard package .*pixelar\[tensorboard\]"):
        quiet(dataclasses.replace(cfg, tensorboard=True), tmp_path / "run")
    assert not (tmp_path / "run").exists()  # refused before anything was written
    tiny = ["--size", "tiny", "--dataset", npz_data, "--batch-size", "8", "--steps", "2", "--no-progress"]
    assert main(["train", *tiny, "--tensorboard", "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "--tensorboard needs the tensorboard package" in err and "pip install 'pixelar[tensorboard]'" in err


def test_tensorboard_events_follow_the_metrics_and_a_resume(cfg, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = dataclasses.replace(cfg, tensorboard=True)
    with pytest.raises(KeyboardInterrupt):
        quiet(cfg, tmp_path / "run", on_step=stop_after(5))  # the checkpoint at 3: steps 4 and 5 are redone
    quiet(cfg, tmp_path / "run", resume=True)
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    assert {"train/train_bpd", "train/lr", "test/test_bpd"} <= set(events.Tags()["scalars"])
    lines = [json.loads(x) for x in (Path(tmp_path / "run") / "metrics.jsonl").read_text().splitlines()]
    train = [(e.step, e.value) for e in events.Scalars("train/train_bpd")]
    assert train == [(m["step"], pytest.approx(m["train_bpd"])) for m in lines if "train_bpd" in m]
    assert [e.value for e in events.Scalars("test/test_bpd")] == [pytest.approx(lines[-1]["test_bpd"])]
