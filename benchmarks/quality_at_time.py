"""Quality at equal time: test bits/dim of `pixelar train` defaults after a given number of steps, with wall time.

Each run is exactly `pixelar train --steps N` (default model, data and seed), so the bpd for a step count is
reproducible; the wall time depends on the machine. Prints a Markdown table; `--write` writes it into
docs/benchmarks.md.

    python -m benchmarks.quality_at_time --steps 1600 5700 [--write]   # the default run; about 20 minutes of training
"""

from __future__ import annotations

import argparse
import tempfile
import time

from pixelar.config import TrainConfig
from pixelar.training import train

from .tables import show_progress, write_table


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, nargs="+", default=[1600, 5700])
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    rows = []
    for steps in args.steps:
        cfg = TrainConfig(max_steps=steps)
        with tempfile.TemporaryDirectory() as d:
            t = time.perf_counter()
            res = train(cfg, f"{d}/run", progress=show_progress(), log=lambda *a: None)
            wall = time.perf_counter() - t
        rows.append(f"| {cfg.model} {cfg.size} | {steps} | {wall / 60:.1f} min | {res['test_bpd']:.3f} |")
        print(rows[-1], flush=True)
    table = "\n".join(
        [
            f"| model | steps (batch {TrainConfig().batch_size}) | wall time incl. test eval + 64 samples "
            "| test bits/dim (10,000 images) |",
            "|---|---|---|---|",
            *rows,
        ]
    )
    print(table)
    if args.write:
        write_table("quality", table)


if __name__ == "__main__":
    main()
