"""Progress reports (pixelar.progress) and the thread count of sampling and coding (pixelar.threads): counts
that grow to the total, results that do not depend on either, bars only where asked or on a terminal, the
thread count restored after a job."""

from __future__ import annotations

import dataclasses
import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import pixelar
import pixelar.sampling.naive as naive
from pixelar import ImageSpec, codec, create_model, threads
from pixelar.cli import main
from pixelar.data import ImageDataset
from pixelar.errors import ArgumentValueError
from pixelar.evaluation import evaluate
from pixelar.evaluation.probe import linear_probe
from pixelar.progress import Progress, tracking

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: more threads only cost (tests below set others)

GREY = ImageSpec(1, 5, 4, 256)


class Calls:
    """A progress callback that records its calls: [(done, total, stats)]."""

    def __init__(self):
        self.calls = []

    def __call__(self, done, total, **stats):
        self.calls.append((done, total, stats))

    def check(self, total: int) -> None:
        """Counts never decrease and end at total, which never changes."""
        assert self.calls, "never called"
        done = [c[0] for c in self.calls]
        assert done == sorted(done) and done[-1] == total, done
        assert {c[1] for c in self.calls} == {total}


@pytest.fixture
def model():
    torch.manual_seed(0)
    return create_model("pixelcnn_pp", GREY, "tiny").eval()


def _dataset(n=7, split="test"):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, *GREY.shape), generator=g).to(torch.uint8)
    return ImageDataset(images, torch.arange(n) % 2, GREY, 2, "noise", split=split)


# ----- the library: callbacks, bars, identical results ----------------------------------------------------------
def test_evaluate_reports_images_and_running_bpd(model, capsys):
    ds = _dataset()
    calls = Calls()
    res = evaluate(model, ds, batch_size=3, progress=calls)
    calls.check(7)
    assert [c[0] for c in calls.calls][-1] == 7 and calls.calls[-1][2]["bpd"] == pytest.approx(res["bpd"])
    assert evaluate(model, ds, batch_size=3) == res
    assert evaluate(model, ds, batch_size=3, progress=True) == res
    err = capsys.readouterr().err
    assert "evaluating" in err and "7/7" in err


@pytest.mark.parametrize("method", ["cached", "naive"])
def test_sampling_reports_every_step_and_draws_the_same_images(model, method, capsys):
    calls = Calls()
    kw = dict(method=method, temperature=0.9)
    x = model.sample(3, generator=torch.Generator().manual_seed(1), progress=calls, **kw)
    calls.check(GREY.height * GREY.width)
    assert calls.calls[-1][2] == {"images": 3}
    assert torch.equal(x, model.sample(3, generator=torch.Generator().manual_seed(1), **kw))
    assert torch.equal(x, model.sample(3, generator=torch.Generator().manual_seed(1), progress=True, **kw))
    assert "sampling" in capsys.readouterr().err


def test_seeded_sampling_reports_one_count_over_its_chunks(model):
    from pixelar.sampling import sample_seeded

    calls = Calls()
    n = 6  # two chunks of batch_size 4, each of the image's steps
    x = sample_seeded(model, n, 3, progress=calls, batch_size=4)
    calls.check(2 * GREY.height * GREY.width)
    assert calls.calls[-1][2] == {"images": n}
    assert torch.equal(x, sample_seeded(model, n, 3, batch_size=4))


def test_completion_counts_the_known_steps_too(model):
    keep = torch.zeros(GREY.height, GREY.width, dtype=torch.bool)
    keep[:2] = True
    calls = Calls()
    x = torch.randint(0, 256, GREY.shape)
    out = pixelar.sampling.complete.complete(model, x, keep, n=2, progress=calls)
    calls.check(GREY.height * GREY.width)
    assert torch.equal(out[:, :, :2], x[None, :, :2].expand(2, -1, -1, -1))


def test_two_stage_sampling_reports_one_count():
    torch.manual_seed(0)
    m = create_model("grayscale_pixelcnn", ImageSpec(3, 4, 4, 256), "tiny").eval()
    calls = Calls()
    x = m.sample(2, generator=torch.Generator().manual_seed(0), progress=calls)
    calls.check(2 * 4 * 4)  # the grey image's steps, then the colour image's
    assert torch.equal(x, m.sample(2, generator=torch.Generator().manual_seed(0)))


def test_codec_reports_sub_pixels_and_bits_and_codes_the_same_bytes(model):
    x = torch.randint(0, 256, (18, *GREY.shape), generator=torch.Generator().manual_seed(0))  # 2 segments
    calls = Calls()
    data = codec.compress(model, x, progress=calls)
    calls.check(x.numel())
    assert calls.calls[-1][2]["images"] == 18
    assert calls.calls[-1][2]["bpd"] == pytest.approx(8 * (len(data) - 33 - 2 * 4) / x.numel())
    assert codec.compress(model, x) == data
    calls = Calls()
    assert torch.equal(codec.decompress(model, data, progress=calls), x)
    calls.check(x.numel())
    assert calls.calls[-1][2]["images"] == 18


def test_linear_probe_reports_its_phases():
    torch.manual_seed(0)
    m = create_model("image_gpt", GREY, "tiny", palette=4)
    train, test = _dataset(10, "train"), _dataset(6)
    m.tokenizer.fit(train.images, steps=2)
    calls = Calls()
    rows = linear_probe(m, train, test, [0, 1], progress=calls)
    phases = {}
    for done, total, stats in calls.calls:
        phases.setdefault(stats["phase"], []).append((done, total))
    assert phases["train features"][-1] == (10, 10) and phases["test features"][-1] == (6, 6)
    assert phases["fit"][-1] == (2, 2)
    assert rows == linear_probe(m, train, test, [0, 1])


def test_reports_are_throttled_and_the_last_count_always_comes(monkeypatch):
    monkeypatch.setattr(pixelar.progress, "INTERVAL", 3600.0)
    calls = Calls()
    with tracking(calls, 1000, "x", "step") as p:
        for _ in range(999):
            p.advance()
        assert calls.calls == []  # within the interval: nothing reported yet
        p.advance()
    assert calls.calls == [(1000, 1000, {})]  # reaching the total reports, and close adds nothing


def test_a_bar_is_shown_by_rank_0_only_and_bad_progress_is_refused(monkeypatch):
    monkeypatch.setattr(pixelar.distributed, "is_main", lambda: False)
    with tracking(True, 5, "x", "step") as p:
        assert not p.active
    with pytest.raises(ValueError, match="progress must be"):
        with tracking("yes", 5, "x", "step"):
            pass
    outer = Progress(3)
    with tracking(outer, 99, "x", "step") as p:  # a part of a larger job: advanced as it is, left open
        assert p is outer


# ----- threads -------------------------------------------------------------------------------------------------
@pytest.fixture
def step_threads(monkeypatch):
    """The thread counts in force during the samplers' generation steps."""
    seen = []
    step = naive._step

    def recording(*args, **kw):
        seen.append(torch.get_num_threads())
        return step(*args, **kw)

    monkeypatch.setattr(naive, "_step", recording)
    return seen


@pytest.fixture
def two_threads():
    with threads.num_threads(2):
        yield


def test_small_cached_sampling_runs_on_one_thread_and_restores_the_count(model, step_threads, two_threads):
    model.sample(2, method="cached")
    assert set(step_threads) == {1} and torch.get_num_threads() == 2


def test_large_steps_keep_the_thread_count_and_threads_overrides(model, step_threads, two_threads, monkeypatch):
    monkeypatch.setattr(threads, "STEP_WORK_THRESHOLD", 1.0)  # every step counts as large
    model.sample(2, method="cached")
    assert set(step_threads) == {2}
    step_threads.clear()
    model.sample(2, method="cached", threads=3)
    assert set(step_threads) == {3} and torch.get_num_threads() == 2


def test_the_thread_count_is_restored_when_sampling_raises(model, two_threads):
    with pytest.raises(ValueError, match="temperature"):
        model.sample(2, temperature=-1.0)
    assert torch.get_num_threads() == 2
    with pytest.raises(ArgumentValueError, match="threads must be"):
        model.sample(2, threads=0)
    assert torch.get_num_threads() == 2


def test_the_codec_codes_on_one_thread_whatever_threads_says_and_restores_the_count(model, two_threads, monkeypatch):
    seen = []
    steps = codec.images._coding_steps

    def recording(*args):
        seen.append(torch.get_num_threads())
        return steps(*args)

    monkeypatch.setattr(codec.images, "_coding_steps", recording)
    x = torch.randint(0, 256, (2, *GREY.shape))
    data = codec.compress(model, x, threads=3)
    assert torch.equal(codec.decompress(model, data, threads=2), x)
    assert seen == [codec.images.CODING_THREADS] * 2 == [1, 1] and torch.get_num_threads() == 2


def test_auto_threads_rule():
    assert threads.auto_threads(threads.STEP_WORK_THRESHOLD / 2) == 1
    assert threads.auto_threads(threads.STEP_WORK_THRESHOLD * 2) is None
    assert threads.auto_threads(1.0, "meta") is None  # not a CPU: leave the setting alone


# ----- the command line ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cli_setup(tmp_path_factory):
    """A saved tiny PixelCNN++ and Image GPT, two images, an npz dataset: {name: path}."""
    d = tmp_path_factory.mktemp("progress")
    torch.manual_seed(0)
    create_model("pixelcnn_pp", GREY, "tiny").save(d / "m")
    igpt = create_model("image_gpt", GREY, "tiny", palette=4)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (12, GREY.height, GREY.width), dtype=np.uint8)
    np.savez(d / "data.npz", x_train=x, y_train=np.arange(12) % 2, x_test=x[:6], y_test=np.arange(6) % 2)
    igpt.tokenizer.fit(torch.from_numpy(x)[:, None], steps=2)
    igpt.save(d / "igpt")
    for k in range(2):
        Image.fromarray(x[k]).save(d / f"in{k}.png")
    main(["compress", str(d / "m"), str(d / "in0.png"), "--out", str(d / "packed.pxar"), "--no-progress"])
    return d


def _commands(d: Path, tmp: Path) -> dict[str, list[str]]:
    m, data = str(d / "m"), f"npz:{d / 'data.npz'}"
    images = [str(d / "in0.png"), str(d / "in1.png")]
    return {
        "eval": ["eval", m, "--dataset", data],
        "sample": ["sample", m, "--n", "2", "--out", str(tmp / "s.png"), "--force"],
        "complete": ["complete", m, "--image", images[0], "--keep", "top-half", "--out", str(tmp / "c.png"), "--force"],
        "score": ["score", m, *images],
        "compress": ["compress", m, *images, "--out", str(tmp / "p.pxar"), "--force"],
        "decompress": ["decompress", m, str(d / "packed.pxar"), "--out-dir", str(tmp / "out"), "--force"],
        "probe": ["probe", str(d / "igpt"), "--layer", "0", "--dataset", data],
    }


BAR = {
    "eval": "evaluating",
    "sample": "sampling",
    "complete": "sampling",
    "score": "scoring",
    "compress": "compressing",
    "decompress": "decompressing",
    "probe": "fitting probes",
}


@pytest.mark.parametrize("command", list(BAR))
def test_every_long_command_shows_a_bar_when_asked_and_not_into_a_file(command, cli_setup, tmp_path, capsys):
    args = _commands(cli_setup, tmp_path)[command]
    assert main([*args, "--progress", "--threads", "1"]) == 0
    assert BAR[command] in capsys.readouterr().err
    assert main(args) == 0  # stderr captured, not a terminal: no bar
    assert BAR[command] not in capsys.readouterr().err


def test_a_terminal_gets_the_bar_unless_no_progress(cli_setup, tmp_path, capsys, monkeypatch):
    args = _commands(cli_setup, tmp_path)["eval"]
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert main([*args, "--no-progress"]) == 0
    assert "evaluating" not in capsys.readouterr().err
    assert main(args) == 0
    assert "evaluating" in capsys.readouterr().err


def test_a_long_job_logs_plain_lines_where_stderr_is_no_terminal(monkeypatch, capsys):
    """progress="log": a line every LOG_INTERVAL seconds (here a clock that moves 10 s a step) and one at the
    end, with the count, the time and the figures; no carriage returns."""
    now = [0.0]
    monkeypatch.setattr(pixelar.progress.time, "monotonic", lambda: now[0])
    with tracking("log", 12, "evaluating", "img") as p:
        for _ in range(12):
            now[0] += 10.0
            p.advance(bpd=2.5)
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "evaluating: 3/12 img (25%) after 0:30, about 1:30 left; bpd 2.5000",
        "evaluating: 6/12 img (50%) after 1:00, about 1:00 left; bpd 2.5000",
        "evaluating: 9/12 img (75%) after 1:30, about 0:30 left; bpd 2.5000",
        "evaluating: done, 12/12 img (100%) in 2:00; bpd 2.5000",
    ]
    with tracking("log", 12, "evaluating", "img") as p:  # a job shorter than the interval: silent
        p.advance(12)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("command", list(BAR))
def test_every_long_command_logs_lines_into_a_file_unless_no_progress(
    command, cli_setup, tmp_path, capsys, monkeypatch
):
    """stderr captured (not a terminal) and no flag: plain lines (here every report, the interval made 0);
    --no-progress: none. A log file used to hear nothing from these jobs, however long they ran."""
    monkeypatch.setattr(pixelar.progress, "LOG_INTERVAL", 0.0)
    args = _commands(cli_setup, tmp_path)[command]
    assert main([*args, "--threads", "1"]) == 0
    err = capsys.readouterr().err
    assert f"{BAR[command]}: done, " in err and "\r" not in err, err
    assert main([*args, "--threads", "1", "--no-progress"]) == 0
    assert BAR[command] not in capsys.readouterr().err


def test_training_logs_its_evaluation_and_samples_into_a_file(cfg, tmp_path, capsys, monkeypatch):
    """`pixelar train` into a log file: the step lines it always printed, and now lines of its final evaluation
    and samples too (that evaluation once ran 6.5 minutes without a word)."""
    monkeypatch.setattr(pixelar.progress, "LOG_INTERVAL", 0.0)
    argv = ["train", "--dataset", cfg.dataset, "--size", "tiny", "--batch-size", "8", "--steps", "2"]
    argv += ["--sample-n", "2", "--log-every", "1", "--run-dir", str(tmp_path / "run"), "--threads", "1"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "step 2/2: train" in captured.out
    assert "evaluating: done, " in captured.err and "sampling: done, " in captured.err
    assert "\r" not in captured.err


def test_threads_flag_sets_the_count_for_the_command(cli_setup, tmp_path, step_threads):
    before = torch.get_num_threads()
    args = _commands(cli_setup, tmp_path)["sample"]
    assert main([*args, "--threads", "3", "--no-progress"]) == 0
    assert set(step_threads) == {3} and torch.get_num_threads() == before
    step_threads.clear()
    assert main([*args, "--no-progress"]) == 0
    assert set(step_threads) == {1}  # a tiny cached job: one thread
    with pytest.raises(SystemExit):  # argparse: "expected an integer >= 1"
        main(["train", "--threads", "0"])


def test_a_real_terminal_gets_the_bar(cli_setup, tmp_path):
    """The command as a user runs it, its stderr a pseudo-terminal: the bar with its count appears."""
    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 100 columns for the bar
    env = {**os.environ, "PYTHONPATH": str(Path(pixelar.__file__).parents[1])}
    args = _commands(cli_setup, tmp_path)["sample"]
    proc = subprocess.Popen([sys.executable, "-m", "pixelar", *args], stderr=secondary, stdout=subprocess.PIPE, env=env)
    os.close(secondary)
    err = b""
    try:
        while chunk := os.read(primary, 4096):  # read as it runs: a full terminal buffer would block the command
            err += chunk
    except OSError:  # the command has exited and closed the terminal: all is read
        pass
    os.close(primary)
    assert proc.wait(timeout=120) == 0, err
    proc.stdout.close()
    assert b"sampling" in err and b"20/20" in err, err


def test_training_shows_bars_for_its_test_evaluation_and_samples(cfg, tmp_path, capsys):
    from pixelar.training import train

    train(dataclasses.replace(cfg, max_steps=2, sample_n=2), tmp_path / "run", progress=True, log=lambda m: None)
    err = capsys.readouterr().err
    assert "2/2" in err and "evaluating" in err and "sampling" in err
