"""Learning curves of training runs: their metrics.jsonl read back, and drawn as a PNG with matplotlib.

read_curves(run_dir) -> Curves: the train bits/dim of every metrics line (the mean over the steps since the
previous line) and the final test bits/dim, with their steps and training times. plot_runs(run_dirs, path)
draws several runs on one figure (Agg, no display: a Figure of its own, not pyplot, so that the caller's
matplotlib backend and figures are left alone) and writes it atomically (pixelar.io).
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from ..io import write_atomic
from .checkpoint import METRICS_NAME

X_AXES = ("step", "time")


@dataclass
class Curves:
    """One run's curves. train_*: one entry per metrics line with a train_bpd; test_*: the final evaluation (None
    until the run has ended). Times are training seconds (elapsed_s; the test point at train_s, the end of the
    steps, where the final line has it). tokenized: the numbers are bits per palette token (Image GPT)."""

    name: str
    train_step: list[int] = field(default_factory=list)
    train_s: list[float] = field(default_factory=list)
    train_bpd: list[float] = field(default_factory=list)
    test_step: int | None = None
    test_s: float | None = None
    test_bpd: float | None = None
    tokenized: bool = False


def read_curves(run_dir, name: str | None = None) -> Curves:
    """The curves in run_dir/metrics.jsonl (lines cut short by a crash are skipped). FileNotFoundError where the
    directory or its metrics.jsonl is missing, ValueError where it holds no bits/dim yet."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"no run directory at {run_dir}")
    path = run_dir / METRICS_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"{run_dir} has no {METRICS_NAME}: not a training run directory, or a run that has not logged yet"
        )
    curves = Curves(name if name is not None else run_dir.name)
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(rec, dict) or not _finite(rec.get("step")):
            continue
        if rec.get("final") and _finite(rec.get("test_bpd")):
            curves.test_step, curves.test_bpd = int(rec["step"]), float(rec["test_bpd"])
            curves.test_s = rec.get("train_s") if _finite(rec.get("train_s")) else None
            curves.tokenized = bool(rec.get("tokenized", False))
        elif _finite(rec.get("train_bpd")):
            curves.train_step.append(int(rec["step"]))
            curves.train_s.append(float(rec["elapsed_s"]) if _finite(rec.get("elapsed_s")) else math.nan)
            curves.train_bpd.append(float(rec["train_bpd"]))
    if not curves.train_bpd and curves.test_bpd is None:
        raise ValueError(
            f"{path} holds no train or test bits/dim yet (a line is written every log_every steps, the test "
            "result at the end)"
        )
    if curves.test_bpd is not None and curves.test_s is None and curves.train_s:
        curves.test_s = curves.train_s[-1]  # a run written before train_s was recorded: its last line's time
    return curves


def plot_runs(run_dirs, path, x: str = "step", title: str | None = None) -> list[Curves]:
    """Draw the train (lines) and test (markers) bits/dim of the runs in run_dirs on one figure, against the step
    (x="step") or the training time in minutes (x="time"), legend = the runs' directory names (their paths where
    two share a name); write it as a PNG to `path`, atomically. Returns the curves drawn."""
    if x not in X_AXES:
        raise ValueError(f"x must be one of {', '.join(X_AXES)}, got {x!r}")
    run_dirs = [Path(d) for d in run_dirs]
    if not run_dirs:
        raise ValueError("run_dirs is empty: give at least one run directory")
    names = [d.name for d in run_dirs]
    if len(set(names)) < len(names):
        names = [str(d) for d in run_dirs]
    runs = [read_curves(d, n) for d, n in zip(run_dirs, names)]
    png = _draw(runs, x, title)
    write_atomic(path, lambda tmp: Path(tmp).write_bytes(png))
    return runs


def _draw(runs: list[Curves], x: str, title: str | None) -> bytes:
    # imported here: matplotlib takes a moment to import, and only drawing needs it
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    fig = Figure(figsize=(8, 5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    colours = [f"C{k % 10}" for k in range(len(runs))]
    for run, colour in zip(runs, colours):
        if x == "step":
            xs, test_x = run.train_step, run.test_step
        else:
            xs = [s / 60 for s in run.train_s]
            test_x = None if run.test_s is None else run.test_s / 60
        if run.train_bpd:
            ax.plot(xs, run.train_bpd, color=colour, linewidth=1.5)
        if run.test_bpd is not None and test_x is not None:
            ax.plot([test_x], [run.test_bpd], color=colour, marker="*", markersize=14, linestyle="none")
    ax.set_xlabel("step" if x == "step" else "training time (min)")
    tokenized = {run.tokenized for run in runs}
    ax.set_ylabel(
        "bits per token"
        if tokenized == {True}
        else "bits/dim (bits per token: palette models)"
        if True in tokenized
        else "bits/dim"
    )
    ax.grid(True, alpha=0.3)
    handles = [Line2D([], [], color=c, linewidth=3) for c in colours]
    handles += [
        Line2D([], [], color="0.3", linewidth=1.5),
        Line2D([], [], color="0.3", marker="*", markersize=12, linestyle="none"),
    ]
    labels = [run.name for run in runs] + ["train (mean since the previous line)", "test (EMA weights)"]
    ax.legend(handles, labels, fontsize="small")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
