"""Training-step time and peak memory of the Sparse Transformer with dense, strided and fixed attention.

For each colour image size (16x16, 32x32, 64x64: 768, 3072, 12288 sub-pixels) and pattern, one training
step (forward, backward, Adam update) of a `sparse_transformer` at size `small` (4 layers, d 64, 2 heads)
with every layer on that pattern and the default stride of one image row (48, 96, 192 sub-pixels, about
sqrt(N)), batch 1, random images. Reported:

- attention pairs: query-key pairs one layer evaluates per head (deterministic): N(N+1)/2 for dense, the
  block tables' size for the sparse patterns (O(N*sqrt(N)) with the row stride), averaged over the head
  groups of a split entry ("strided.local+strided.stride");
- s/step: median over the repetitions after one warm-up step;
- peak memory: on CUDA `torch.cuda.max_memory_allocated` of the step; on CPU the growth of the process's
  peak resident memory during the step, each configuration in a fresh subprocess.

Dense attention runs through scaled_dot_product_attention with is_causal, which uses a memory-efficient
kernel where PyTorch has one (then its memory grows like N, its time like N^2).

    python -m benchmarks.attention_speed --quick             # 16x16 and 32x32, 2 layers; ~1 minute on CPU
    python -m benchmarks.attention_speed [--device cuda] [--write]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch

import pixelar
from pixelar import ImageSpec

from .tables import write_table

PATTERNS = ("dense", "strided", "fixed")


def one_config(pattern: str, size: int, n_layer: int, reps: int, device: str) -> dict:
    torch.manual_seed(0)
    image = ImageSpec(3, size, size, 256)
    model = pixelar.create_model("sparse_transformer", image, "small", attention=[pattern], n_layer=n_layer).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.randint(0, 256, (1, *image.shape), device=device)
    N = image.dims
    groups = model.blocks[0].attn.patterns  # one pattern, or one per head group ("a+b": split heads)
    pairs = sum(N * (N + 1) // 2 if p.kind == "dense" else p.block_work for p in groups) // len(groups)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = -model.log_prob(x).mean()
        loss.backward()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()

    step()  # warm-up: allocations, kernels, Adam state
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {
        "pattern": pattern,
        "size": size,
        "N": N,
        "pairs": pairs,
        "s_per_step": statistics.median(times),
        "peak_bytes": max(int(peak), 0),
    }


def run(pattern, size, n_layer, reps, device) -> dict:
    if device == "cuda":
        return one_config(pattern, size, n_layer, reps, device)
    # CPU: a fresh process per configuration, so the peak resident memory belongs to this step alone
    cmd = [sys.executable, "-m", __spec__.name, "--child", pattern, str(size), str(n_layer), str(reps)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(rows, device, n_layer) -> str:
    dense = {r["size"]: r for r in rows if r["pattern"] == "dense"}
    lines = [
        f"Sparse Transformer `small` with {n_layer} layers (d 64, 2 heads), batch 1, one training step; "
        f"{device_name(device)}, torch {torch.__version__}.",
        "",
        "| image (sub-pixels) | pattern | attention pairs / layer | s / step | peak memory | time vs dense |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        d = dense.get(r["size"])
        rel = f"{r['s_per_step'] / d['s_per_step']:.2f}x" if d else "-"
        lines.append(
            f"| {r['size']}x{r['size']}x3 ({r['N']}) | {r['pattern']} | {r['pairs']:,} | "
            f"{r['s_per_step']:.3f} | {r['peak_bytes'] / 2**20:.0f} MiB | {rel} |"
        )
    return "\n".join(lines)


def device_name(device):
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="16x16 and 32x32, 2 layers, 2 repetitions")
    ap.add_argument("--sizes", default=None, help="comma-separated image sizes (default 16,32,64)")
    ap.add_argument("--layers", type=int, default=None, help="layers (default 4; quick 2)")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument(
        "--patterns",
        default=",".join(PATTERNS),
        help="comma-separated attention entries, e.g. strided,strided.local+strided.stride (split heads)",
    )
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument(
        "--write", action="store_true", help="write the table into docs/benchmarks.md (attention-speed block)"
    )
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        pattern, size, n_layer, reps = args.child
        print(json.dumps(one_config(pattern, int(size), int(n_layer), int(reps), "cpu")))
        return
    sizes = [int(s) for s in (args.sizes or ("16,32" if args.quick else "16,32,64")).split(",")]
    n_layer = args.layers or (2 if args.quick else 4)
    reps = args.reps or (2 if args.quick else 3)
    rows = []
    for size in sizes:
        for pattern in args.patterns.split(","):
            r = run(pattern, size, n_layer, reps, args.device)
            print(
                f"{size}x{size}x3 {pattern:8s} pairs {r['pairs']:>12,}  {r['s_per_step']:.3f} s/step  "
                f"peak {r['peak_bytes'] / 2**20:.0f} MiB",
                flush=True,
            )
            rows.append(r)
    text = table(rows, args.device, n_layer)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    if args.write:
        write_table("attention-speed", text)


if __name__ == "__main__":
    main()
