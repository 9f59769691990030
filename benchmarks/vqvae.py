"""VQ-VAE on Fashion-MNIST in two stages: what a short CPU run reaches. Needs quiet cores (it trains).

Stage 1 trains the encoder, decoder and EMA codebook on `stage1_loss` (distortion -log p(x | z_q) in nats +
commitment); stage 2 fits the prior over the 7x7 code maps of the training images (`pixelar.data.codes_dataset`),
as the paper does (`pixelar train --model vqvae` instead trains both in one loop). The
table reports, on the first N test images: the reconstruction term -log p(x | z(x)) in bits/dim, the RMSE
of `reconstruct` (the decoder's most likely image) in pixel values 0..255, the codebook perplexity (codes in
effective use), the prior's bits per code, and the total bound -log p(x | z(x)) - log p(z(x)) in bits/dim,
an upper bound of the model's exact negative log-likelihood.

    python -m benchmarks.vqvae --quick     # smoke run: 30 + 30 steps, 100 test images
    python -m benchmarks.vqvae --write     # the table in docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import math
import platform
import time

import torch

import pixelar
from pixelar.data import codes_dataset, load_dataset, select
from pixelar.models.vqvae import codebook_perplexity

from .tables import write_table


def batches(images: torch.Tensor, batch_size: int, steps: int, seed: int):
    """`steps` random batches (int64) of `images`, drawn with their own generator."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        yield images[torch.randint(len(images), (batch_size,), generator=g)].long()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="30 + 30 steps, 100 test images: a smoke run")
    ap.add_argument("--size", default="small")
    ap.add_argument("--prior", default="pixelcnn:small", help="the prior over codes, as MODEL:SIZE")
    ap.add_argument("--steps", type=int, default=1500, help="stage-1 steps")
    ap.add_argument("--prior-steps", type=int, default=600, help="stage-2 steps")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--train-images", type=int, default=10000, help="training images whose codes fit the prior")
    ap.add_argument("--test-images", type=int, default=500)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--write", action="store_true", help="write the table into docs/benchmarks.md")
    args = ap.parse_args()
    steps, prior_steps = (30, 30) if args.quick else (args.steps, args.prior_steps)
    n_test = 100 if args.quick else args.test_images
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    train = select(load_dataset("fashion_mnist", "train"), slice(0, args.train_images))
    test = select(load_dataset("fashion_mnist", "test"), slice(0, n_test))
    prior_kind, _, prior_size = args.prior.partition(":")
    model = pixelar.create_model(
        "vqvae", train.spec, args.size, prior={"kind": prior_kind, "size": prior_size or "tiny"}
    )
    dims = train.spec.dims

    # ----- stage 1: encoder, decoder, codebook
    stage1 = [p for n, p in model.named_parameters() if not n.startswith("priors.")]
    opt = torch.optim.Adam(stage1, lr=args.lr)
    model.train()
    t0 = time.perf_counter()
    for step, x in enumerate(batches(train.images, args.batch_size, steps, args.seed), 1):
        losses = model.stage1_loss(x)
        loss = sum(v.mean() for v in losses.values()) / dims  # nats per sub-pixel
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % max(1, steps // 10) == 0:
            bpd = losses["distortion"].mean().item() / (dims * math.log(2))
            print(f"stage 1 step {step}: distortion {bpd:.3f} bits/dim", flush=True)
    time1 = time.perf_counter() - t0
    model.eval()

    # ----- stage 2: the prior over the training images' codes
    codes = codes_dataset(model, train, batch_size=500)
    prior = model.priors[0]
    opt = torch.optim.Adam(prior.parameters(), lr=args.lr)
    prior.train()
    t0 = time.perf_counter()
    per_code = codes.spec.dims * math.log(2)  # nats -> bits per code
    for step, z in enumerate(batches(codes.images, args.batch_size, prior_steps, args.seed + 1), 1):
        loss = -prior.log_prob(z).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % max(1, prior_steps // 10) == 0:
            print(f"stage 2 step {step}: prior {loss.item() / per_code:.3f} bits/code", flush=True)
    time2 = time.perf_counter() - t0
    model.eval()

    # ----- the test images
    with torch.no_grad():
        x = test.images.long()
        terms = model.elbo(x)  # distortion -log p(x | z(x)), rate -log p(z(x))
        recon = model.reconstruct(x)
        z = model.quantize(x)
    bits = math.log(2)
    recon_bpd = terms["distortion"].mean().item() / (dims * bits)
    prior_bpc = terms["rate"].mean().item() / per_code
    total_bpd = (terms["distortion"] + terms["rate"]).mean().item() / (dims * bits)
    rmse = (recon - x).double().pow(2).mean().sqrt().item()
    perplexity = codebook_perplexity(z, model.num_codes)
    h, w = model.code_shapes[0]
    n_enc = sum(p.numel() for p in stage1)
    n_prior = sum(p.numel() for p in prior.parameters())
    head = (
        f"`vqvae` {args.size} ({n_enc:,} parameters; {h}x{w} codes, K = {model.num_codes}, "
        f"D = {model.code_dim}; output {model.hparams['output']['kind']}) with a `{prior_kind}` {prior_size} "
        f"prior ({n_prior:,} parameters); Fashion-MNIST, batch {args.batch_size}, Adam lr {args.lr}; stage 2 on "
        f"the codes of {len(train):,} training images; measured on the first {n_test} test images; "
        f"{platform.machine()}, {args.threads} threads, torch {torch.__version__}."
    )
    table = "\n".join(
        [
            head,
            "",
            "| stage-1 steps | stage-2 steps | reconstruction -log p(x\\|z(x)), bits/dim | reconstruction RMSE "
            "(0..255) | codebook perplexity | prior, bits/code | bound, bits/dim | wall time (stage 1 + 2) |",
            "|---|---|---|---|---|---|---|---|",
            f"| {steps} | {prior_steps} | {recon_bpd:.3f} | {rmse:.1f} | {perplexity:.1f} of {model.num_codes} "
            f"| {prior_bpc:.3f} | **{total_bpd:.3f}** | {time1:.0f} s + {time2:.0f} s |",
        ]
    )
    print(table)
    if args.write:
        write_table("vqvae", table)


if __name__ == "__main__":
    main()
