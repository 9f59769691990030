"""benchmarks/vae_comparison.py end to end on a tiny synthetic dataset: tiny models, a budget of a fraction of a
second, a handful of test images (the real run takes hours; this checks its wiring and its arithmetic)."""

import re

import numpy as np
import pytest

from benchmarks import vae_comparison


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (80, 8, 8), dtype=np.uint8)
    np.savez(path, x_train=images[:64], x_test=images[64:])
    sizes = "--test-images 8 --iw-images 2 --codec-images 4 --sample-n 2"
    return vae_comparison.main(f"--datasets npz:{path} --size tiny --minutes 0.005 {sizes}".split())


def cells(table: str, model: str) -> list[str]:
    (line,) = [line for line in table.splitlines() if f"`{model}` tiny |" in line]
    return [c.strip() for c in line.strip("|").split("|")]


def test_rows_say_what_each_model_is_measured_by(table):
    pcnn, vdvae, vqvae = (cells(table, m) for m in ("pixelcnn_pp", "vdvae", "vqvae"))
    assert not pcnn[3].startswith("<=") and vdvae[3].startswith("<=") and vqvae[3].startswith("<=")
    # the vdvae alone has importance-weighted bounds; the vqvae alone a reconstruction and a prior over codes
    assert all(c.startswith("<=") for c in vdvae[5:8]) and pcnn[5:10] == vqvae[5:8] + ["-", "-"] == ["-"] * 5
    assert re.fullmatch(r"\d+ \(RMSE [\d.]+\)", vqvae[8]) and float(vqvae[9]) > 0
    # the distortion and rate add up to the bound
    d, r = map(float, vdvae[4].split(" + "))
    assert d + r == pytest.approx(float(vdvae[3][3:]), abs=2e-3)
    assert "| `vdvae` paper | 39,145,700 | 39M" in table


def test_codec_rate_is_the_stream_in_bits_per_dim(table):
    # 4 images of 8x8: the header and one segment length cost (33 + 4) * 8 / 256 = 1.16 bits/dim beyond the
    # model's figure; the coder itself adds little
    for model in ("pixelcnn_pp", "vqvae"):
        stream, ref = re.match(r"([\d.]+) \((?:<= )?([\d.]+)\)", cells(table, model)[10]).groups()
        assert 1.1 < float(stream) - float(ref) < 1.3, model
    # images 2..n net of the first (header and start-up left out): near the model's figure on them
    pattern = r"([\d.]+) \((?:<= )?([\d.]+)\); images 2..n: ([\d.]+) \((?:<= )?([\d.]+)\)"
    stream, _, net, ref = map(float, re.match(pattern, cells(table, "pixelcnn_pp")[10]).groups())
    assert abs(net - ref) < 0.1 and net < stream
    # bits-back: the first image pays the start-up (8 bits for each of the latent dimensions), the rest far less
    stream, _, net, _ = map(float, re.match(pattern, cells(table, "vdvae")[10]).groups())
    assert net < stream - 1
