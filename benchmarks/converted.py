"""Converting a published checkpoint at its paper size, and sampling from the converted model.

For each source whose authors' code is given (a checkout of its public repository; nothing of it is
committed): a random checkpoint of the published shapes, written by the authors' code in the published
layout into a temporary directory; `pixelar convert` on it in a fresh process (wall time, peak resident
memory); then cached and naive sampling of the converted model (images/s at batch 1 and 16, naive
extrapolated from a few full passes, cached from a few rows, as benchmarks/sampling_speed does; a VAE's
ancestral sampling, one pass through its decoder, timed whole).

    git clone https://github.com/pclucas14/pixel-cnn-pp /tmp/pixel-cnn-pp
    git clone https://github.com/openai/vdvae /tmp/vdvae
    git clone https://github.com/ajayjain/lmconv /tmp/lmconv
    git clone https://github.com/openai/pixel-cnn /tmp/pixel-cnn       # and a Python with TensorFlow to run it:
    python -m venv /tmp/tf && /tmp/tf/bin/pip install tensorflow==2.18.0 tf_slim torch==2.13.0
    python -m benchmarks.converted --pclucas14 /tmp/pixel-cnn-pp --vdvae /tmp/vdvae --lmconv /tmp/lmconv \
        --openai-pixelcnn /tmp/pixel-cnn --tf-python /tmp/tf/bin/python --hf-imagegpt --distaug [--write]
    python -m benchmarks.converted --distaug --no-sampling     # any sources together, or one alone

`--hf-imagegpt` needs transformers (a test dependency), no checkout. `--distaug` needs no checkout
(openai/distribution_augmentation's code does not run on a CPU): a random file of its 150M rotation +
transposition model (c10-150m-rot-tr-dist-aug.npz, hyperparams.py's c10-150m-rot-tr), in
the layout its utils.save_params writes (weights, moving averages, Adam's moments: about 1.8 GB in the
temporary directory), written by benchmarks/authors_code.write_distaug_npz. `--no-sampling` times the
conversions alone (a naive pass of the 150M model over 3,072 positions takes minutes on a CPU).
"""

from __future__ import annotations

import argparse
import functools
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import pixelar
from pixelar.threads import step_work, threads_for

from .authors_code import (
    lmconv,
    lmconv_args,
    lmconv_checkpoint,
    lmconv_losses,
    lmconv_masks,
    lmconv_model,
    lmconv_orders,
    pclucas14,
    pclucas14_published_layout,
    perturb,
    perturb_all,
    vdvae,
    vdvae_hyperparameters,
    without_stubs,
    write_distaug_npz,
)
from .sampling_speed import cached_image_time, naive_step_time
from .tables import cpu_model, load_average, write_table

PAGE = Path(__file__).resolve().parent.parent / "docs" / "converted.md"


def pclucas14_checkpoint(port: Path, tmp: Path) -> tuple[str, Path, list[str]]:
    """The port's CIFAR-10 model (160 filters, 5 resnets, 10 mixtures), random, in the published layout, in tmp.
    -> (source, the file, further `pixelar convert` arguments)."""
    model, _ = pclucas14(port)
    torch.manual_seed(0)
    net = model.PixelCNN(nr_resnet=5, nr_filters=160, nr_logistic_mix=10, input_channels=3).eval()
    perturb(net, torch.Generator().manual_seed(0))
    out = tmp / "published.pth"
    torch.save(pclucas14_published_layout(net), out)
    return "pclucas14-pixelcnn_pp", out, []


def openai_pixelcnn_checkpoint(code: Path, tmp: Path, tf_python: str) -> tuple[str, Path, list[str]]:
    """openai/pixel-cnn's CIFAR-10 model (160 filters, 5 resnets, 10 mixtures), random, saved by its own Saver
    in the published params_cifar.ckpt's format (V1: weights, EMA copies, Adam's variables), written by
    benchmarks/authors_code.write_openai_pixelcnn under `tf_python` (TensorFlow does not run beside torch's
    pinned CPU build in one environment)."""
    out = tmp / "params_cifar.ckpt"
    root = Path(__file__).resolve().parent.parent
    cmd = [tf_python, "-m", "benchmarks.authors_code", "openai-pixelcnn", str(code), str(out)]
    subprocess.run(cmd, cwd=root, check=True, capture_output=True)
    return "openai-pixelcnn_pp", out, []


def hf_imagegpt_checkpoint(_, tmp: Path) -> tuple[str, Path, list[str]]:
    """iGPT-S as the Hub's openai/imagegpt-small holds it (n_embd 512, 24 layers, 8 heads, 32x32 tokens of a
    512-colour palette, untied head), random weights from transformers' own initialisation, written by its
    save_pretrained, with a preprocessor_config.json of 512 random clusters in [-1, 1]."""
    import json

    out = tmp / "imagegpt-small"
    with without_stubs():  # the other sources' checkouts stub torchvision, which transformers would then import
        import transformers

        torch.manual_seed(0)
        config = transformers.ImageGPTConfig(
            vocab_size=513, n_positions=1024, n_embd=512, n_layer=24, n_head=8, tie_word_embeddings=False
        )
        transformers.ImageGPTForCausalImageModeling(config).eval().save_pretrained(out)
    clusters = torch.rand(512, 3, generator=torch.Generator().manual_seed(1)) * 2 - 1
    pre = {"clusters": clusters.tolist(), "do_normalize": True, "size": {"height": 32, "width": 32}}
    (out / "preprocessor_config.json").write_text(json.dumps(pre))
    return "hf-imagegpt", out, []


def vdvae_checkpoint(code: Path, tmp: Path) -> tuple[str, Path, list[str]]:
    """openai/vdvae's CIFAR-10 model (hps cifar10: width 384, 43 latent layers), random, saved as its published
    -model-ema.th files are (the unwrapped VAE's state dict)."""
    _, hps, vae = vdvae(code)
    H = vdvae_hyperparameters(hps, {**hps.HPARAMS_REGISTRY["cifar10"], "image_size": 32, "image_channels": 3})
    torch.manual_seed(0)
    model = vae.VAE(H).eval()
    perturb_all(model, torch.Generator().manual_seed(0), 0.02)
    out = tmp / "published-model-ema.th"
    torch.save(model.state_dict(), out)
    return "openai-vdvae", out, ["--hps", "cifar10"]


def distaug_checkpoint(_, tmp: Path) -> tuple[str, Path, list[str]]:
    """A random c10-150m-rot-tr-dist-aug.npz (hyperparams.py's c10-150m-rot-tr: n_embd 512, 16 heads, 48 layers,
    'b,bT,b,b', rotation and transposition) in its save layout, under the published name (whose hps the
    converter takes by default)."""
    from pixelar.converters.openai_distaug import NAMED

    out = tmp / "c10-150m-rot-tr-dist-aug.npz"
    write_distaug_npz(out, NAMED["c10-150m-rot-tr"], 32, 32, 3, seed=0)
    return "openai-distaug", out, []


def lmconv_checkpoint_file(code: Path, tmp: Path) -> tuple[str, Path, list[str]]:
    """ajayjain/lmconv's CIFAR-10 model of its README command (160 filters, 5 resnets, 10 mixtures, pono, 8
    S-curve orders), random, after one training step of its loop on a noise image (so the Adam state is in the
    file, as in a published one), saved as its main.py saves an epoch (the layout before its EMA commit)."""
    model_mod, layers, utils, masking = lmconv(code)
    argv = "--ours -d cifar -b 32 -k 3 --normalization pono --order s_curve --randomize_order -dp 0 --disable_wandb"
    args = lmconv_args(code, argv.split())
    torch.manual_seed(0)
    net = lmconv_model(model_mod, layers, args)
    perturb_all(net, torch.Generator().manual_seed(0), 0.01)
    optimizer = torch.optim.Adam(net.parameters(), lr=args.lr)
    masks = lmconv_masks(masking, lmconv_orders(masking, args, 32, 32)[0], args, 32, 32)
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    lmconv_losses(utils, args)[0](
        x, net(x, mask_init=masks[0], mask_undilated=masks[1], mask_dilated=masks[2])
    ).backward()
    optimizer.step()
    out = tmp / "cifar_s8.pth"
    torch.save(lmconv_checkpoint(args, net.eval(), optimizer, epoch=0), out, _use_new_zipfile_serialization=False)
    return "ajayjain-lmconv", out, []


def convert_in_child(source: str, path: Path, out: Path, extra: list[str]) -> tuple[float, int]:
    """(wall seconds, peak RSS bytes) of `pixelar convert` in a fresh process. The peak is the process's own
    high-water mark (VmHWM, which exec starts afresh): ru_maxrss survives exec on Linux and so would also count
    the pages this process, holding the authors' model, had resident when it forked the child."""
    code = (
        "import resource, sys, time; t = time.perf_counter(); from pixelar.cli import main; "
        f"rc = main(['convert', {source!r}, {str(path)!r}, '--out', {str(out)!r}, *{extra!r}]); "
        "hwm = [ln.split()[1] for ln in open('/proc/self/status') if ln.startswith('VmHWM:')] "
        "if sys.platform == 'linux' else []; "
        "kib = hwm[0] if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; "
        "print('RESULT', time.perf_counter() - t, kib); "
        "sys.exit(rc)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    line = next(ln for ln in res.stdout.splitlines() if ln.startswith("RESULT"))
    _, seconds, kib = line.split()
    return float(seconds), int(kib) * 1024


def ancestral(model, batch: int, repeats: int = 3) -> float:
    """images/s of a latent-variable model's sampling at `batch` (one decoder pass), the best of `repeats`, fp32,
    on the threads model.sample picks."""
    best = float("inf")
    with torch.no_grad():
        for _ in range(repeats):
            t = time.perf_counter()
            model.sample(batch)
            best = min(best, time.perf_counter() - t)
    return batch / best


def sampling(model, batch: int, naive_steps: int, cached_rows: int) -> tuple[float, float]:
    """(naive, cached) images/s of the converted model at `batch`, fp32, on the threads model.sample picks."""
    image = model.image
    x = torch.zeros(batch, *image.shape, dtype=torch.long)
    with threads_for(None, step_work(model, batch, incremental=False)):
        naive_s = naive_step_time(model, x.clone(), naive_steps, "fp32") * image.height * image.width
    with threads_for(None, step_work(model, batch, incremental=True)):
        cached_s = cached_image_time(model, x.clone(), cached_rows, "fp32")[0]
    return batch / naive_s, batch / cached_s


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pclucas14", type=Path, help="checkout of pclucas14/pixel-cnn-pp")
    ap.add_argument("--vdvae", type=Path, help="checkout of openai/vdvae")
    ap.add_argument("--lmconv", type=Path, help="checkout of ajayjain/lmconv")
    ap.add_argument("--openai-pixelcnn", type=Path, help="checkout of openai/pixel-cnn (run by --tf-python)")
    ap.add_argument("--tf-python", default="python3", help="a Python with tensorflow and tf_slim installed")
    ap.add_argument("--hf-imagegpt", action="store_true", help="iGPT-S in the Hub's layout (needs transformers)")
    ap.add_argument("--distaug", action="store_true", help="openai-distaug's 150M model (no checkout needed)")
    ap.add_argument("--no-sampling", action="store_true", help="time the conversions only")
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--naive-steps", type=int, default=3, help="full passes measured per naive figure")
    ap.add_argument("--cached-rows", type=int, default=4, help="rows measured per cached figure")
    ap.add_argument("--write", action="store_true", help="write the table into docs/converted.md")
    args = ap.parse_args(argv)
    given = (
        (pclucas14_checkpoint, args.pclucas14),
        (vdvae_checkpoint, args.vdvae),
        (lmconv_checkpoint_file, args.lmconv),
        (functools.partial(openai_pixelcnn_checkpoint, tf_python=args.tf_python), args.openai_pixelcnn),
    )
    makers = [(make, code) for make, code in given if code is not None]
    makers += [(hf_imagegpt_checkpoint, None)] if args.hf_imagegpt else []
    makers += [(distaug_checkpoint, None)] if args.distaug else []
    if not makers:
        raise SystemExit(
            "give at least one source (--pclucas14 PATH, --vdvae PATH, --lmconv PATH, --openai-pixelcnn PATH, "
            "--hf-imagegpt, --distaug)"
        )
    load_before, rows = load_average(), []
    for make, code in makers:
        with tempfile.TemporaryDirectory() as tmp:
            source, path, extra = make(code, Path(tmp))
            files = [path] if path.is_file() else [f for f in path.iterdir() if f.is_file()]
            size_mb = sum(os.path.getsize(f) for f in files) / 2**20
            seconds, peak = convert_in_child(source, path, Path(tmp) / "converted", extra)
            model = pixelar.load_model(Path(tmp) / "converted")
            speeds = []
            # the naive and cached timings below step whole pixels; a model of one step per sub-pixel (the
            # sparse transformer: 3,072 steps of 150M parameters) is not measured
            per_pixel = model.likelihood == "bound" or getattr(getattr(model, "distribution", None), "joint", False)
            for batch in [] if args.no_sampling or not per_pixel else (int(b) for b in args.batches.split(",")):
                if model.likelihood == "bound":  # a VAE: ancestral, one pass whatever the method
                    speeds.append(f"batch {batch}: ancestral {ancestral(model, batch):.2f} img/s")
                    continue
                naive, cached = sampling(model, batch, args.naive_steps, args.cached_rows)
                speeds.append(f"batch {batch}: {naive:.4f} / {cached:.3f} img/s ({cached / naive:.0f}x)")
        rows.append(
            f"| `{source}` | {model.num_parameters():,} | {size_mb:.0f} MB | {seconds:.1f} s | "
            f"{peak / 2**20:.0f} MiB | {'; '.join(speeds) or 'not measured'} |"
        )
        print(rows[-1], flush=True)
    table = "\n".join(
        [
            f"Measured by `python -m benchmarks.converted` on {cpu_model()} ({os.cpu_count()} cores), torch "
            f"{torch.__version__}, fp32; load average {load_before} before, {load_average()} after. Conversion: "
            "`pixelar convert` in a fresh process, a random checkpoint of the published shapes written by the "
            "authors' code (openai-distaug: in its save layout, by benchmarks/authors_code.write_distaug_npz). "
            f"Sampling: naive extrapolated from {args.naive_steps} full passes, cached from "
            f"{args.cached_rows} rows, on the threads `model.sample` chooses; a VAE's ancestral sampling timed "
            "whole (best of 3).",
            "",
            "| source | parameters | file | conversion time | conversion peak memory | sampling naive / cached |",
            "|---|---|---|---|---|---|",
            *rows,
        ]
    )
    print(table)
    if args.write:
        write_table("converted-speed", table, PAGE)


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"{time.perf_counter() - t0:.0f} s in all")
