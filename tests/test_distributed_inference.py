"""Sampling, completion, scoring, evaluation and compression under torchrun: 2 processes on the CPU (gloo), tiny
models.

Each process does its share (chunks of samples, of images to score or evaluate, segments of the stream) and
rank 0 writes; the files and printed lines (full float digits in --json) must equal one process's, byte for
byte, for an exact model and for a VAE, whose draws must not depend on the process that makes them. One
launch runs every command through `pixelar.cli.main` in one process group (its `finish` kept from leaving the
group between commands), so the whole command-line path runs as under `torchrun -m pixelar`, for the price of
one start of the processes.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from codec_helpers import perturbed
from PIL import Image
from run_helpers import launch

import pixelar
from pixelar import distributed
from pixelar.cli import main
from pixelar.sampling import sample_seeded

CHUNK = 16  # --batch-size of the sampling commands
N_SAMPLES = 2 * CHUNK + 3  # 3 chunks: rank 0 draws 1 of them, rank 1 the other 2 (16 + 3 images)
N_FILES = 35  # 3 segments of the stream: 1 coded by rank 0, 2 by rank 1
# 18 files: one process scores them in one batch; two processes in halves of 9 would round differently
N_ROUNDING = 18


def commands(d: str, files: list[str], out: str, threads: int = 1) -> list[list[str]]:
    """The command lines to compare, each writing into directory `out` (score, eval: their printed lines); d is
    setup's directory (model, vae, vqvae, data.npz); the VQ-VAE's compress and decompress on `threads` threads."""
    run, vae, vq, data = f"{d}/model", f"{d}/vae", f"{d}/vqvae", f"npz:{d}/data.npz"
    return [
        [
            "sample",
            run,
            "--n",
            str(N_SAMPLES),
            "--seed",
            "3",
            "--batch-size",
            str(CHUNK),
            "--out",
            f"{out}/samples.png",
        ],
        ["complete", run, "--image", files[0], "--keep", "top-half", "--n", "3", "--out", f"{out}/complete.png"],
        ["score", run, *files[:5]],
        ["score", run, *files, "--json"],
        ["compress", run, *files, "--out", f"{out}/imgs.pxar"],
        ["decompress", run, f"{out}/imgs.pxar", "--out-dir", f"{out}/decoded"],
        ["score", run, *files[:N_ROUNDING], "--json"],
        # 40 images in chunks of 17 + 17 + 6; halves of 20 in batches of 17 + 3 would round differently
        ["eval", run, "--dataset", data, "--json", "--batch-size", "17"],
        ["eval", vae, "--dataset", data, "--json", "--subset", "13", "--batch-size", "4", "--num-samples", "3"],
        ["score", vae, *files[:3], "--json"],
        ["compress", vq, *files, "--out", f"{out}/vq.pxar", "--threads", str(threads)],
        ["decompress", vq, f"{out}/vq.pxar", "--out-dir", f"{out}/vq", "--threads", str(threads)],
    ]


SCRIPT = textwrap.dedent(
    """
    import contextlib, io, json, sys
    import torch.distributed as dist
    from pixelar import distributed
    from pixelar.cli import main

    distributed.finish = lambda wait=True: dist.barrier()  # stay in the group between the commands
    for k, argv in enumerate(json.loads(sys.argv[1])):
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            code = main(argv)
        assert code == 0, (argv, code)
        if distributed.rank() == 0:
            open(f"{sys.argv[2]}/stdout{k}.txt", "w").write(printed.getvalue())
    dist.destroy_process_group()
    """
)


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, list[str]]:
    """A tiny PixelCNN++ and a tiny VDVAE for 8x8 greyscale images and a tiny VQ-VAE (random weights: its
    decoder's floats on the last segment's 3 images differ on 2 threads), saved as model directories, N_FILES PNG
    files and a dataset of 40 such images (data.npz)."""
    d = tmp_path_factory.mktemp("inference")
    torch.manual_seed(0)
    pixelar.create_model("pixelcnn_pp", pixelar.ImageSpec(1, 8, 8, 256), "tiny").save(d / "model")
    pixelar.create_model("vdvae", pixelar.ImageSpec(1, 8, 8, 256), "tiny").save(d / "vae")
    perturbed("vqvae", pixelar.ImageSpec(1, 8, 8, 256)).save(d / "vqvae")
    rng = np.random.default_rng(0)
    np.savez(
        d / "data.npz",
        x_train=rng.integers(0, 256, (8, 8, 8), dtype=np.uint8),
        x_test=rng.integers(0, 256, (40, 8, 8), dtype=np.uint8),
    )
    files = []
    for k in range(N_FILES):
        files.append(str(d / f"img{k:02d}.png"))
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(files[-1])
    return d, files


def run_here(cmds: list[list[str]], out: Path) -> None:
    """The commands in this process, one thread (as each launched process) unless a command's --threads says
    otherwise, printed lines kept as the script keeps them."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for k, argv in enumerate(cmds):
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                assert main(argv) == 0, argv
            (out / f"stdout{k}.txt").write_text(printed.getvalue())
    finally:
        torch.set_num_threads(threads)


def printed(out: Path, k: int) -> str:
    """What command k printed, with its output directory and the seconds it took (they differ) left out."""
    return re.sub(r"[0-9.]+ s\b", "T s", (out / f"stdout{k}.txt").read_text().replace(str(out), "OUT"))


def test_two_processes_write_the_files_and_lines_of_one(setup, tmp_path):
    d, files = setup
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    # the VQ-VAE's stream: one process on 2 threads against 2 of one, so it depends on neither count
    run_here(commands(str(d), files, str(one), threads=2), one)
    script = tmp_path / "commands.py"
    script.write_text(SCRIPT)
    launch(2, json.dumps(commands(str(d), files, str(two))), str(two), script=script, cwd=tmp_path)
    for name in ("samples.png", "complete.png", "imgs.pxar", "vq.pxar"):
        assert (two / name).read_bytes() == (one / name).read_bytes(), name
    decoded = sorted(p.name for p in (two / "decoded").iterdir())
    assert decoded == [f"image_{k:03d}.png" for k in range(N_FILES)]
    for k, path in enumerate(files):  # lossless, in the files' order
        for images in (two / "decoded", two / "vq", one / "vq"):
            assert np.array_equal(np.asarray(Image.open(images / decoded[k])), np.asarray(Image.open(path)))
    for k in range(len(commands("", files, ""))):
        assert printed(two, k) == printed(one, k), k
    lines = (two / "stdout2.txt").read_text().splitlines()
    assert [line.split(":")[0] for line in lines[:5]] == files[:5]  # the files' order, once each


def test_sample_seeded_images_do_not_depend_on_the_chunks_drawn_beside_them(setup, one_thread):
    model = pixelar.load_model(setup[0] / "model")
    x = sample_seeded(model, CHUNK + 2, 7, temperature=0.9, batch_size=CHUNK)
    assert x.shape == (CHUNK + 2, 1, 8, 8) and not distributed.active()
    # the first chunk of 18 images is that of 16 images: a chunk depends on its seed and index only
    assert torch.equal(sample_seeded(model, CHUNK, 7, temperature=0.9, batch_size=CHUNK), x[:CHUNK])
    assert not torch.equal(x[:2], x[CHUNK:])  # the chunks draw their own streams
    assert not torch.equal(sample_seeded(model, 2, 8, temperature=0.9, batch_size=CHUNK), x[:2])
    with pytest.raises(ValueError, match="cond must have one row per image"):
        sample_seeded(model, 3, 0, cond=torch.zeros(2, dtype=torch.long))


def test_chunks_are_the_batches_of_one_process_whatever_the_number_of_processes(monkeypatch):
    one = distributed.chunks(13, 4)
    assert one == [slice(0, 4), slice(4, 8), slice(8, 12), slice(12, 13)]
    for world in (2, 3, 5):  # 5 processes for 4 chunks: one gets none
        got = []
        for r in range(world):
            monkeypatch.setattr(distributed, "rank", lambda r=r: r)
            monkeypatch.setattr(distributed, "world_size", lambda world=world: world)
            got.append(distributed.chunks(13, 4))
        assert [c for share in got for c in share] == one, world  # every chunk once, in order


@pytest.mark.parametrize("command", ["sample", "complete"])
def test_torchrun_command_lines_set_the_count_with_count(command, setup, tmp_path):
    """The documented `torchrun ... -m pixelar sample|complete RUN --count N` (torchrun's own parser refuses --n,
    an ambiguous prefix of its options): two processes draw the images that one process draws with --n."""
    d, files = setup
    argv = [command, str(d / "model"), "--count", "3", "--batch-size", "2", "--seed", "3"]  # 2 chunks: 1 each
    if command == "complete":
        argv += ["--image", files[0], "--keep", "top-half"]
    two, one = tmp_path / "two.png", tmp_path / "one.png"
    out = launch(2, *argv, "--out", str(two), cwd=tmp_path)
    assert ("wrote 3 samples" if command == "sample" else "and 3 completion(s)") in out
    run_here([[a if a != "--count" else "--n" for a in argv] + ["--out", str(one)]], tmp_path)
    assert two.read_bytes() == one.read_bytes()
