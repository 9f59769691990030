"""Image GPT on Fashion-MNIST: generative pretraining, then the linear probe accuracy per layer, and the
sampling speed of the KV cache against the naive sampler.

1. Trains `image_gpt` (default size `small`, 512-colour palette: lossless on grayscale, whose 256 grey levels
   all get a token) on the first --train-subset training images (5,000 by default) for --steps
   steps, through pixelar.training.train (Adam with beta2 = 0.95 and a linear warm-up, as the paper).
2. Linear probe (pixelar.evaluation.probe) at every layer on the first --probe-train training and
   --probe-test test images, for the trained model and for the same architecture untrained (random init,
   its palette fitted the same way): what pretraining adds.
3. Naive vs cached (KV cache) sampling of the trained model over the first --rows rows (the rest marked
   known, so both skip it), extrapolated to the whole image; both give the same images (checked).

    python -m benchmarks.igpt_probe --quick          # a minute or two: checks that everything runs
    python -m benchmarks.igpt_probe [--steps 2000 --batch-size 16 --probe-train 5000 --probe-test 10000] --write
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time

import torch

import pixelar
from pixelar.config import TrainConfig
from pixelar.data import first_images, load_dataset
from pixelar.evaluation.probe import linear_probe, probe_layer
from pixelar.training import train

from .attention_sampling_speed import time_rows  # the same row-extrapolated timing
from .tables import show_progress, write_table


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny settings: 10 steps, probe on 200 / 100 images")
    ap.add_argument("--size", default="small")
    ap.add_argument("--dataset", default="fashion_mnist")
    ap.add_argument("--train-subset", type=int, default=5000)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup-steps", type=int, default=100)
    ap.add_argument("--probe-train", type=int, default=5000, help="training images the probe is fitted on")
    ap.add_argument("--probe-test", type=int, default=10000, help="test images the probe is scored on")
    ap.add_argument("--rows", type=int, default=2, help="image rows sampled for the speed comparison")
    ap.add_argument("--sample-batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--write", action="store_true", help="write the table into docs/benchmarks.md (igpt-probe block)")
    args = ap.parse_args(argv)
    if args.quick:
        args.steps, args.batch_size, args.probe_train, args.probe_test = 10, 4, 200, 100
        args.rows, args.sample_batch, args.warmup_steps = 1, 2, 2
    torch.set_num_threads(args.threads)

    cfg = TrainConfig(
        model="image_gpt",
        size=args.size,
        dataset=args.dataset,
        train_subset=args.train_subset,
        max_steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        betas=(0.9, 0.95),
        warmup_steps=args.warmup_steps,
        lr_decay=1.0,
        test_subset=args.probe_test,
        sample_n=0,
        checkpoint_every=max(args.steps, 1),
    )
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        res = train(cfg, f"{d}/run", progress=show_progress(), log=lambda *a: None)
        train_s = time.perf_counter() - t
        model = pixelar.load_model(f"{d}/run")
    print(
        f"trained {args.steps} steps x {args.batch_size} in {train_s / 60:.1f} min: "
        f"{res['test_nats_per_token']:.4f} nats per token on {args.probe_test} test images",
        flush=True,
    )

    train_ds = first_images(load_dataset(args.dataset, "train"), args.train_subset)
    test_ds = load_dataset(args.dataset, "test")
    torch.manual_seed(0)
    untrained = pixelar.create_model("image_gpt", train_ds.spec, args.size)
    untrained.tokenizer.fit(train_ds.images, seed=cfg.seed)
    probes = {}
    for label, m in (("pretrained", model), ("untrained", untrained)):
        t = time.perf_counter()
        probes[label] = linear_probe(m, train_ds, test_ds, train_subset=args.probe_train, test_subset=args.probe_test)
        print(
            f"probe ({label}): {time.perf_counter() - t:.0f} s: "
            + ", ".join(f"L{r['layer']} {100 * r['test_accuracy']:.1f}%" for r in probes[label]),
            flush=True,
        )

    # reference: the same probe on the raw pixels (C*H*W values scaled to [0, 1]), no model
    raw = probe_layer(
        train_ds.images[: args.probe_train].flatten(1).double() / 255,
        train_ds.labels[: args.probe_train],
        test_ds.images[: args.probe_test].flatten(1).double() / 255,
        test_ds.labels[: args.probe_test],
        train_ds.num_classes,
    )
    print(f"probe (raw pixels): {100 * raw['test_accuracy']:.1f}%", flush=True)

    naive_s, a = time_rows(model, args.sample_batch, args.rows, "naive")
    cached_s, b = time_rows(model, args.sample_batch, args.rows, "cached")
    same = "identical images" if torch.equal(a, b) else "WARNING: samples differ"
    print(f"sampling: naive {naive_s:.1f} s, cached {cached_s:.1f} s per batch of {args.sample_batch} ({same})")

    n_layer = model.num_feature_layers - 1
    best = max(probes["pretrained"], key=lambda r: r["test_accuracy"])
    lines = [
        f"`image_gpt` {args.size} ({model.num_parameters():,} parameters, {n_layer} layers, 512-colour palette: "
        f"lossless on Fashion-MNIST's 256 grey levels), trained {args.steps} steps x batch {args.batch_size} on the "
        f"first {args.train_subset} {args.dataset} training images ({train_s / 60:.1f} min; test "
        f"{res['test_nats_per_token']:.4f} nats per token on {args.probe_test} test images). Linear probe: "
        f"logistic regression on features averaged over positions, fitted on {args.probe_train} training images, "
        f"accuracy on {args.probe_test} test images. CPU ({platform.machine()}, {args.threads} thread(s)), "
        f"torch {torch.__version__}.",
        "",
        "| layer | pretrained: test accuracy | untrained (random init): test accuracy |",
        "|---|---|---|",
    ]
    for r, u in zip(probes["pretrained"], probes["untrained"]):
        name = f"{r['layer']}" + (" (final norm)" if r["layer"] == n_layer else "")
        mark = " (best)" if r is best else ""
        lines.append(f"| {name} | {100 * r['test_accuracy']:.1f}%{mark} | {100 * u['test_accuracy']:.1f}% |")
    lines += [
        "",
        f"The same logistic regression on the raw pixels ({train_ds.spec.dims} values, no model): "
        f"{100 * raw['test_accuracy']:.1f}%.",
        "",
        f"Sampling a batch of {args.sample_batch} (extrapolated from the first {args.rows} row(s)): naive "
        f"{naive_s:.1f} s, KV-cached {cached_s:.1f} s ({naive_s / cached_s:.1f}x; {same}).",
    ]
    table = "\n".join(lines)
    print(table)
    if args.write:
        write_table("igpt-probe", table)


if __name__ == "__main__":
    main()
