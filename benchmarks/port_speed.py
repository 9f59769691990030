"""The PixelCNN++ training step, pixelar against the public PyTorch port (pclucas14/pixel-cnn-pp), side by side.

Both models at the same configuration, fp32, on the same batches, in one process: the port's PixelCNN with
its discretized_mix_logistic_loss and torch's Adam (its training loop's step), pixelar's pixelcnn_pp with its
log_prob (its training loss, in bits/dim), gradient clipping and Adam (the step of pixelar's training loop
without the bookkeeping). Dropout 0.5 in both (the port's is fixed at 0.5; pixelar's paper setting). Steps
alternate, port then pixelar, so that the machine's load, which comes and goes, affects both alike; the
median step of each is reported, and their ratio.

    git clone https://github.com/pclucas14/pixel-cnn-pp /tmp/pixel-cnn-pp
    python -m benchmarks.port_speed --port /tmp/pixel-cnn-pp [--sizes small,paper] [--threads 1] [--write]

small: 32 filters, 1 resnet per stage, 5 mixture components (pixelar's `small`); paper: 160, 5, 10. Batch 16
of random 32x32x3 images.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

import torch

import pixelar
from pixelar.threads import num_threads

from .authors_code import pclucas14
from .tables import cpu_model, load_average, write_table

SIZES = {"small": (32, 1, 5), "paper": (160, 5, 10)}


def port_step(net, loss_fn, opt, x01):
    x = x01 * 2.0 - 1.0  # the port's rescaling of ToTensor's [0, 1]
    opt.zero_grad(set_to_none=True)
    loss = loss_fn(x, net(x))
    loss.backward()
    opt.step()


def pixelar_step(model, opt, x, dims_ln2):
    opt.zero_grad(set_to_none=True)
    loss = -model.log_prob(x).mean() / dims_ln2
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()


def measure(port, size: str, steps: int, batch: int) -> tuple[float, float]:
    """(port's median s/step, pixelar's median s/step) at `size`."""
    model_mod, utils = port
    F_, R, M = SIZES[size]
    torch.manual_seed(0)
    net = model_mod.PixelCNN(nr_resnet=R, nr_filters=F_, nr_logistic_mix=M, input_channels=3).train()
    port_opt = torch.optim.Adam(net.parameters(), lr=2e-4)
    image = pixelar.ImageSpec(3, 32, 32, 256)
    ours = pixelar.create_model(
        "pixelcnn_pp", image, size="paper", nr_filters=F_, nr_resnet=R, dropout=0.5, output={"nr_mix": M}
    ).train()
    our_opt = torch.optim.Adam(ours.parameters(), lr=2e-4)
    dims_ln2 = image.dims * math.log(2)
    g = torch.Generator().manual_seed(0)
    times = {"port": [], "pixelar": []}
    for i in range(steps + 1):  # the first of each: warm-up, not counted
        x = torch.randint(0, 256, (batch, 3, 32, 32), generator=g)
        t = time.perf_counter()
        port_step(net, utils.discretized_mix_logistic_loss, port_opt, x.float() / 255.0)
        t1 = time.perf_counter()
        pixelar_step(ours, our_opt, x, dims_ln2)
        t2 = time.perf_counter()
        if i:
            times["port"].append(t1 - t)
            times["pixelar"].append(t2 - t1)
    return statistics.median(times["port"]), statistics.median(times["pixelar"])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=Path, required=True, help="checkout of pclucas14/pixel-cnn-pp")
    ap.add_argument("--sizes", default="small,paper")
    ap.add_argument("--threads", default="1,2", help="thread counts to measure at")
    ap.add_argument("--steps", type=int, default=12, help="timed steps per model (paper: a third of them)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--write", action="store_true", help="write the table into docs/benchmarks.md")
    args = ap.parse_args(argv)
    port = pclucas14(args.port)
    load_before, rows = load_average(), []
    for size in args.sizes.split(","):
        for threads in (int(t) for t in args.threads.split(",")):
            with num_threads(threads):
                steps = args.steps if size == "small" else max(3, args.steps // 3)
                port_s, ours_s = measure(port, size, steps, args.batch)
            F_, R, M = SIZES[size]
            rows.append(
                f"| {size} ({F_} filters, {R} resnets, {M} mixtures) | {threads} | {port_s:.3f} | {ours_s:.3f} | "
                f"{port_s / ours_s:.2f}x |"
            )
            print(rows[-1], flush=True)
    table = "\n".join(
        [
            f"Measured by `python -m benchmarks.port_speed` on {cpu_model()}, torch {torch.__version__}, fp32, "
            f"batch {args.batch} of 32x32x3, dropout 0.5 in both; load average {load_before} before, "
            f"{load_average()} after. Median seconds per training step, the two models' steps alternating.",
            "",
            "| configuration | threads | port s/step | pixelar s/step | pixelar faster by |",
            "|---|---|---|---|---|",
            *rows,
        ]
    )
    print(table)
    if args.write:
        write_table("port-speed", table)


if __name__ == "__main__":
    main()
