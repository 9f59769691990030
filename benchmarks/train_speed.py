"""Training throughput of every model next to this machine's matrix-multiply peak, measured in the same run.

For each (model, size, mode): seconds per training step (log_prob forward, backward, gradient clipping, Adam),
images/s, achieved TFLOP/s (FLOPs counted by torch.utils.flop_counter for one step: the matmuls and
convolutions of forward and backward), the fraction of the matmul peak of the step's precision, and the
peak memory (CUDA: max allocated; CPU: the peak resident set of a fresh process per configuration, so
configurations do not inflate each other). Modes: fp32 (eager), bf16 (autocast, fp32 master weights),
compiled (torch.compile of log_prob, fp32; the compile time is reported separately and excluded from s/step),
compiled-bf16. The last column is the time of one CIFAR-10 epoch (50,000 images) at that rate, for projecting
a full run (the released PixelCNN++ took about 5 days on 8 Maxwell TITAN X to reach 2.92 bits/dim, about
40 GPU-days). Prints a Markdown table; `--write` writes it into docs/benchmarks.md.

    python -m benchmarks.train_speed --quick                  # small sizes, fp32/bf16, 1 repetition
    python -m benchmarks.train_speed --models pixelcnn_pp --sizes paper --modes bf16 compiled-bf16
    python -m benchmarks.train_speed --write                 # the docs/benchmarks.md table (long: paper sizes)
    python -m benchmarks.train_speed --models pixelsnail lmconv grayscale_pixelcnn pyramid_pixelcnn \
        image_transformer image_transformer_dmol sparse_transformer image_gpt --sizes small --modes fp32 bf16 \
        --no-reference --block train-speed-models --write   # the other families at small size
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

import pixelar
from pixelar import ImageSpec

from .tables import write_table

MODES = ("fp32", "bf16", "compiled", "compiled-bf16")


def matmul_peak(dtype: torch.dtype, device: str = "cpu", n: int = 2048, reps: int = 5) -> float:
    """Best-of-reps FLOP/s of an n x n x n matmul."""
    a, b = torch.randn(n, n, device=device).to(dtype), torch.randn(n, n, device=device).to(dtype)
    a @ b
    best = float("inf")
    for _ in range(reps):
        _sync(device)
        t = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def run_one(spec: dict) -> dict:
    """One configuration in this process: {model, size, image [C,H,W], batch, mode, reps, overrides, device}."""
    device = spec["device"]
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    image = ImageSpec(*spec["image"])
    model = pixelar.create_model(spec["model"], image, spec["size"], **spec.get("overrides", {})).to(device).train()
    opt = torch.optim.Adam(model.parameters(), 1e-4)
    # the model's own input (image_gpt: palette tokens, one channel)
    x = torch.randint(0, model.image.num_values, (spec["batch"], *model.image.shape), device=device)
    mode = spec["mode"]
    bf16 = mode.endswith("bf16")
    log_prob = model.log_prob
    if mode.startswith("compiled"):
        log_prob = pixelar.models.compiled_log_prob(model, log=lambda m: print(m, file=sys.stderr))

    def step():
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            loss = -log_prob(x).float().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    t = time.perf_counter()
    step()  # warm-up (and compilation)
    _sync(device)
    first = time.perf_counter() - t
    with FlopCounterMode(display=False) as fc:  # counted eagerly: the same math as the compiled step
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            loss = -model.log_prob(x).float().mean()
        loss.backward()
    flops = fc.get_total_flops()
    times = []
    for _ in range(spec["reps"]):
        _sync(device)
        t = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t)
    s = min(times)
    if device == "cuda":
        peak_mem = torch.cuda.max_memory_allocated()
    else:
        peak_mem = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    compiled = getattr(log_prob, "compiled", None)
    return dict(
        params=model.num_parameters(),
        flops=flops,
        seconds=s,
        first_step_s=first,
        images_per_s=spec["batch"] / s,
        flops_per_s=flops / s,
        peak_mem=peak_mem,
        compiled=compiled,
    )


def _duration(seconds: float) -> str:
    """'12 s', '3.4 min', '5.1 h' or '2.3 days'."""
    for unit, size in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= 2 * size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


def configs(args) -> list[tuple[str, dict]]:
    out = []
    for model in args.models:
        for size in args.sizes:
            out.append(
                (f"{model} {size}, 32x32x3, batch 16", dict(model=model, size=size, image=[3, 32, 32], batch=16))
            )
    if "pixelcnn_pp" in args.models and not args.no_reference:
        # the configuration of the public port's published timing: 64 filters, 2 resnets
        out.append(
            (
                "pixelcnn_pp 64 filters, 2 resnets, 28x28x1, batch 32",
                dict(
                    model="pixelcnn_pp",
                    size="small",
                    image=[1, 28, 28],
                    batch=32,
                    overrides=dict(nr_filters=64, nr_resnet=2, dropout=0.5),
                ),
            )
        )
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["pixelcnn", "gated_pixelcnn", "pixelcnn_pp"])
    ap.add_argument("--sizes", nargs="+", default=["small", "paper"])
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="small sizes, fp32 and bf16, one timed repetition")
    ap.add_argument("--no-reference", action="store_true", help="skip the 64-filter 28x28x1 reference configuration")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: all cores)")
    ap.add_argument("--reps-paper", type=int, default=None, help="timed repetitions for paper sizes (default --reps)")
    ap.add_argument(
        "--compiled-configs",
        default="pixelcnn_pp",
        help="comma-separated models that run the "
        "compiled modes (compiling takes minutes per model on a CPU); 'all' for every model",
    )
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--write", action="store_true", help="write the table into docs/benchmarks.md")
    ap.add_argument(
        "--block",
        default="train-speed",
        help="docs/benchmarks.md block to write (train-speed-models: the other model families)",
    )
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one configuration given as JSON
    args = ap.parse_args()
    if args.one:
        print("RESULT " + json.dumps(run_one(json.loads(args.one))), flush=True)
        return
    if args.quick:
        args.sizes, args.modes, args.reps = ["small"], ["fp32", "bf16"], 1
    if args.threads:
        torch.set_num_threads(args.threads)
    peak = {"fp32": matmul_peak(torch.float32, args.device), "bf16": matmul_peak(torch.bfloat16, args.device)}
    print(f"matmul peak: fp32 {peak['fp32'] / 1e12:.3f} TFLOP/s, bf16 {peak['bf16'] / 1e12:.3f} TFLOP/s", flush=True)
    rows = []
    for label, spec in configs(args):
        for mode in args.modes:
            if (
                mode.startswith("compiled")
                and args.compiled_configs != "all"
                and (spec["model"] not in args.compiled_configs.split(",") or spec["size"] == "paper")
            ):
                continue  # compile only where asked: minutes per model on a CPU (paper sizes: tens of minutes)
            reps = args.reps_paper if spec["size"] == "paper" and args.reps_paper else args.reps
            one = dict(spec, mode=mode, reps=reps, device=args.device, threads=args.threads)
            proc = subprocess.run(
                [sys.executable, "-m", __spec__.name, "--one", json.dumps(one)], capture_output=True, text=True
            )
            line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
            if line is None:
                err = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                print(f"{label} {mode}: failed ({err})", flush=True)
                continue
            r = json.loads(line[len("RESULT ") :])
            shown = mode if r["compiled"] is not False else f"{mode} (eager fallback)"
            p = peak["bf16" if mode.endswith("bf16") else "fp32"]
            rows.append(
                f"| {label} | {r['params'] / 1e6:.2f}M | {shown} | {r['flops'] / 1e9:.0f} | {r['seconds']:.2f} | "
                f"{r['images_per_s']:.1f} | {r['flops_per_s'] / 1e12:.3f} | {100 * r['flops_per_s'] / p:.0f}% | "
                f"{r['peak_mem'] / 2**30:.2f} | {r['first_step_s']:.0f} | {_duration(50000 / r['images_per_s'])} |"
            )
            print(rows[-1], flush=True)
    where = (
        torch.cuda.get_device_name()
        if args.device == "cuda"
        else f"{torch.get_num_threads()} CPU threads ({platform.processor() or platform.machine()})"
    )
    table = "\n".join(
        [
            f"Measured on {where}, torch {torch.__version__}; matmul peak in the same run: "
            f"fp32 {peak['fp32'] / 1e12:.3f} TFLOP/s, bf16 {peak['bf16'] / 1e12:.3f} TFLOP/s. "
            "% of peak is against the peak of the step's precision; first step includes warm-up and compilation.",
            "",
            "| configuration | params | mode | GFLOP/step | s/step | images/s | TFLOP/s | % of matmul peak "
            "| peak memory GiB | first step s | one CIFAR-10 epoch |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
            *rows,
        ]
    )
    print(table)
    if args.write:
        write_table(args.block, table)


if __name__ == "__main__":
    main()
