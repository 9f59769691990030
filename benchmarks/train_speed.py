"""Training throughput of PixelCNN++ next to this machine's matrix-multiply peak, measured in the same run.

For each configuration: seconds per training step (forward + backward + Adam), images/s, achieved GFLOP/s
(FLOPs counted by torch.utils.flop_counter for one step: forward and backward matmuls/convolutions) and the
fraction of the measured fp32 / bf16 matmul peak. Prints a Markdown table; `--readme` also writes it into
README.md.

    python benchmarks/train_speed.py [--quick] [--readme]
"""
from __future__ import annotations

import argparse
import platform
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

import pixelar
from pixelar import ImageSpec


def matmul_peak(dtype: torch.dtype, n: int = 2048, reps: int = 5) -> float:
    """Best-of-reps FLOP/s of an n x n x n matmul."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def step_fn(model, opt, x, precision):
    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = -model.log_prob(x).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def measure(size: str, image: ImageSpec, batch: int, precision: str, reps: int, overrides: dict) -> dict:
    torch.manual_seed(0)
    model = pixelar.create_model("pixelcnn_pp", image, size, **overrides).train()
    opt = torch.optim.Adam(model.parameters(), 1e-4)
    x = torch.randint(0, image.num_values, (batch, *image.shape))
    step = step_fn(model, opt, x, precision)
    with FlopCounterMode(display=False) as fc:
        step()
    flops = fc.get_total_flops()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    s = min(times)
    return dict(params=model.num_parameters(), flops=flops, seconds=s, images_per_s=batch / s, flops_per_s=flops / s)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="small configurations only, one timed repetition")
    ap.add_argument("--readme", action="store_true", help="write the table into README.md")
    args = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    peak32, peak16 = matmul_peak(torch.float32), matmul_peak(torch.bfloat16)
    configs = [  # (label, size, image, batch, overrides)
        ("small, 28x28x1, batch 32", "small", ImageSpec(1, 28, 28), 32, {}),
        ("small, 32x32x3, batch 16", "small", ImageSpec(3, 32, 32), 16, {}),
    ]
    if not args.quick:
        configs.append(("paper, 32x32x3, batch 16", "paper", ImageSpec(3, 32, 32), 16, {}))
    rows = []
    for label, size, image, batch, overrides in configs:
        for precision in ("fp32", "bf16"):
            r = measure(size, image, batch, precision, 1 if args.quick else 3, overrides)
            peak = peak32 if precision == "fp32" else peak16
            rows.append(f"| {label} | {r['params'] / 1e6:.2f}M | {precision} | {r['flops'] / 1e9:.0f} | {r['seconds']:.2f} | "
                        f"{r['images_per_s']:.1f} | {r['flops_per_s'] / 1e9:.0f} | {100 * r['flops_per_s'] / peak:.0f}% |")
            print(rows[-1], flush=True)
    cpu = platform.processor() or platform.machine()
    table = "\n".join([
        f"Measured on {torch.get_num_threads()} CPU threads ({cpu}), torch {torch.__version__}; matmul peak in the same run: "
        f"fp32 {peak32 / 1e9:.0f} GFLOP/s, bf16 {peak16 / 1e9:.0f} GFLOP/s.",
        "",
        "| PixelCNN++ | params | precision | GFLOP/step | s/step | images/s | GFLOP/s | % of matmul peak |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
    ])
    print(table)
    if args.readme:
        from readme_table import write_table

        write_table("train-speed", table)


if __name__ == "__main__":
    main()
