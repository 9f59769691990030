"""fp32 vs bf16 training curves: the same run (model, data order, seed) in both precisions, side by side.

Trains `pixelar train`'s default model twice with the Python API, reads each run's metrics.jsonl (train
bits/dim averaged over every `log_every` steps) and the final exact test bits/dim (fp32 evaluation of the
EMA weights in both cases), and writes a Markdown table and a PNG plot of the two curves.

    python -m benchmarks.precision_curves --steps 200 [--test-subset 2000] [--write] [--png docs/precision_curves.png]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageDraw

from pixelar.config import TrainConfig
from pixelar.training import train

from .tables import show_progress, write_table


def run(cfg: TrainConfig, run_dir: Path) -> tuple[list[tuple[int, float]], float, float]:
    t = time.perf_counter()
    res = train(cfg, run_dir, progress=show_progress(), log=lambda m: None)
    wall = time.perf_counter() - t
    curve = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        m = json.loads(line)
        if "train_bpd" in m:
            curve.append((m["step"], m["train_bpd"]))
    return curve, res["test_bpd"], wall


def plot(curves: dict[str, list[tuple[int, float]]], path: Path, size=(640, 400), margin=50) -> None:
    """A minimal line plot (Pillow only): train bits/dim against step, one colour per precision."""
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    pts = [p for c in curves.values() for p in c]
    x0, x1 = 0, max(s for s, _ in pts)
    ys = sorted(b for _, b in pts)
    y0, y1 = ys[0], ys[int(0.9 * (len(ys) - 1))]  # clip the first steps' very high loss
    W, H = size

    def xy(s, b):
        return (
            margin + (W - 2 * margin) * (s - x0) / max(x1 - x0, 1),
            H - margin - (H - 2 * margin) * (min(b, y1) - y0) / max(y1 - y0, 1e-9),
        )

    d.rectangle([margin, margin, W - margin, H - margin], outline="black")
    for frac in (0, 0.5, 1):
        b = y0 + frac * (y1 - y0)
        d.text((4, xy(0, b)[1] - 6), f"{b:.2f}", fill="black")
        s = int(x0 + frac * (x1 - x0))
        d.text((xy(s, y0)[0] - 10, H - margin + 6), str(s), fill="black")
    d.text((W // 2 - 60, H - 18), "step (train bits/dim)", fill="black")
    for (name, curve), colour in zip(curves.items(), ("#1f77b4", "#d62728")):
        d.line([xy(s, b) for s, b in curve], fill=colour, width=2)
        d.text((W - margin - 80, margin + 8 + 14 * list(curves).index(name)), name, fill=colour)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--test-subset", type=int, default=None, help="evaluate on the first N test images only")
    ap.add_argument("--png", default="docs/precision_curves.png")
    ap.add_argument("--write", action="store_true", help="write the table into docs/benchmarks.md")
    args = ap.parse_args()
    base = TrainConfig(max_steps=args.steps, sample_n=0, test_subset=args.test_subset, checkpoint_every=10**9)
    if args.batch_size:
        base = dataclasses.replace(base, batch_size=args.batch_size)
    curves, finals, walls = {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for precision in ("fp32", "bf16"):
            curve, test_bpd, wall = run(dataclasses.replace(base, precision=precision), Path(tmp) / precision)
            curves[precision], finals[precision], walls[precision] = curve, test_bpd, wall
            print(f"{precision}: test {test_bpd:.4f} bits/dim, {wall:.0f} s", flush=True)
    plot(curves, Path(args.png))
    steps = [s for s, _ in curves["fp32"]]
    b16 = dict(curves["bf16"])
    pick = sorted(set(steps[:: max(1, len(steps) // 8)] + [steps[-1]]))
    n_test = args.test_subset or 10000
    lines = [
        f"`{base.model}` ({base.size}) on {base.dataset}, batch {base.batch_size}, same seed and data order; "
        f"train bits/dim averaged over {base.log_every} steps; test bits/dim on {n_test:,} test images "
        f"(fp32 evaluation of the EMA weights). Plot: `{args.png}`.",
        "",
        "| step | fp32 train bits/dim | bf16 train bits/dim | difference |",
        "|---|---|---|---|",
    ]
    for s, b in curves["fp32"]:
        if s in pick:
            lines.append(f"| {s} | {b:.4f} | {b16[s]:.4f} | {b16[s] - b:+.4f} |")
    lines.append(
        f"| test (after {args.steps}) | {finals['fp32']:.4f} | {finals['bf16']:.4f} | "
        f"{finals['bf16'] - finals['fp32']:+.4f} |"
    )
    lines.append(f"| wall time | {walls['fp32']:.0f} s | {walls['bf16']:.0f} s | |")
    table = "\n".join(lines)
    print(table)
    if args.write:
        write_table("precision-curves", table)


if __name__ == "__main__":
    main()
