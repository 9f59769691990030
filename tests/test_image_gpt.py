"""Image GPT: the colour palette (k-means, round trip, determinism), the model's released structure and
conditioning, leaks the likelihood checks catch, cached == naive sampling over palette tokens, the linear
probe, and the command line end to end (train -> eval -> sample -> complete -> probe -> resume).

The shared likelihood and cached-sampling tests cover image_gpt too (tiny size: no palette, so every image
of a tiny spec can be enumerated); here the palette models get their own checks.
"""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from likelihood_checks import causality_violations, conditional_sums
from PIL import Image

import pixelar
from pixelar import ImageSpec, create_model
from pixelar.data import ImageDataset
from pixelar.evaluation import evaluate
from pixelar.evaluation.probe import linear_probe, probe_layer
from pixelar.models.image_gpt import IGPT_L, IGPT_M
from pixelar.models.palette import Palette

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def planted_colours(n_per=300, seed=0):
    """Pixels around 4 well-separated RGB colours (noise +-6): (4*n_per, 3, 1, 1) uint8 and the true centres."""
    g = torch.Generator().manual_seed(seed)
    true = torch.tensor([[20, 30, 200], [220, 40, 40], [40, 210, 60], [230, 230, 220]])
    pix = true.repeat_interleave(n_per, 0) + torch.randint(-6, 7, (4 * n_per, 3), generator=g)
    return pix.to(torch.uint8).view(-1, 3, 1, 1), true


def random_rgb(n=40, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)


# ----- palette -----------------------------------------------------------------------------------------------
def test_palette_round_trip_tokens_colours_tokens():
    p = Palette(32, 3).fit(random_rgb(), seed=0, steps=30)
    n = int(p.num_colours)
    assert n == 32  # far more distinct colours than k: every centre is used and distinct
    tokens = torch.arange(n).view(1, 1, 4, 8)
    colours = p.decode(tokens)
    assert colours.shape == (1, 3, 4, 8) and colours.dtype == torch.long
    assert torch.equal(p.encode(colours), tokens)
    # images -> tokens -> colours -> the same tokens (encoding is idempotent on the palette's colours)
    t = p.encode(random_rgb(4, seed=1))
    assert torch.equal(p.encode(p.decode(t)), t)


def test_kmeans_is_deterministic_for_a_seed():
    imgs = random_rgb()
    a = Palette(16, 3).fit(imgs, seed=3, steps=20).centres
    b = Palette(16, 3).fit(imgs, seed=3, steps=20).centres
    c = Palette(16, 3).fit(imgs, seed=4, steps=20).centres
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_kmeans_finds_planted_clusters():
    pix, true = planted_colours()
    p = Palette(4, 3).fit(pix, seed=0, steps=50)
    found = p.centres.long()
    # every true colour has a centre within the noise, and each pixel's token is its cluster's
    dist = torch.cdist(true.double(), found.double())  # (4 true, 4 found)
    assert dist.min(1).values.max() < 3, found
    tokens = p.encode(pix).view(4, -1)
    assert all(len(row.unique()) == 1 for row in tokens) and len(tokens[:, 0].unique()) == 4


def test_grayscale_with_fewer_levels_than_k_is_lossless():
    g = torch.Generator().manual_seed(0)
    imgs = (torch.randint(0, 50, (10, 1, 6, 6), generator=g) * 5).to(torch.uint8)  # 50 grey levels
    p = Palette(512, 1).fit(imgs)
    assert int(p.num_colours) == len(imgs.unique())
    err = p.reconstruction_error(imgs)
    assert err["sq_err_sum"] == 0 and err["exact_pixels"] == err["pixels"]
    # a small grayscale palette: k-means on grey levels, lossy but sensible
    small = Palette(4, 1).fit(imgs, steps=30)
    assert int(small.num_colours) == 4
    assert math.sqrt(small.reconstruction_error(imgs)["sq_err_sum"] / imgs.numel()) < 40


def test_palette_refuses_bad_input():
    p = Palette(8, 3)
    with pytest.raises(ValueError, match="not fitted"):
        p.encode(random_rgb(1))
    p.fit(random_rgb(), steps=5)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        p.encode(torch.zeros(1, 1, 4, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match="8-bit"):
        p.encode(torch.full((1, 3, 2, 2), 300))
    with pytest.raises(ValueError, match="integer"):
        p.encode(torch.zeros(1, 3, 2, 2))
    with pytest.raises(ValueError, match=r"\[0, 8\)"):
        p.decode(torch.full((1, 1, 2, 2), 8))


def test_palette_is_saved_with_the_model(tmp_path):
    model = create_model("image_gpt", ImageSpec(3, 8, 8, 256), "tiny", palette=16)
    assert model.image == ImageSpec(1, 8, 8, 16) and model.data_image == ImageSpec(3, 8, 8, 256)
    model.tokenizer.fit(random_rgb(), steps=10)
    model.save(tmp_path / "m")
    assert not list(tmp_path.glob("m/*.p*kl*")) and not list(tmp_path.glob("m/*.pt"))
    loaded = pixelar.load_model(tmp_path / "m")
    imgs = random_rgb(3, seed=2).long()
    assert torch.equal(loaded.tokenizer.centres, model.tokenizer.centres)
    x = model.encode(imgs)
    assert torch.equal(loaded.encode(imgs), x)
    torch.testing.assert_close(loaded.log_prob(x), model.log_prob(x))


def test_float_centres_encode_to_the_nearest_float_centre(tmp_path):
    g = torch.Generator().manual_seed(0)
    clusters = torch.rand(512, 3, generator=g, dtype=torch.float64) * 2 - 1  # iGPT's: (k, 3) on [-1, 1]
    imgs = random_rgb(20, size=16, seed=5)
    pts = imgs.permute(0, 2, 3, 1).reshape(-1, 3).double() / 127.5 - 1
    nearest = torch.cdist(pts, clusters).argmin(1).view(20, 1, 16, 16)  # the released code's tokens
    exact = Palette(512, 3, float_centres=True).set_centres(clusters)
    rounded = Palette(512, 3).set_centres(clusters)  # the same centres held as 8-bit colours
    assert torch.equal(exact.encode(imgs), nearest)
    changed = (rounded.encode(imgs) != nearest).double().mean().item()
    assert 0.001 < changed < 0.1  # what rounding the centres would cost (here: 2.7% of the pixels)
    colours = torch.round(127.5 * (clusters + 1)).long()  # both decode to the released rounding
    tokens = torch.arange(512).view(1, 1, 16, 32)
    assert torch.equal(exact.decode(tokens), colours.T.reshape(1, 3, 16, 32))
    assert torch.equal(rounded.decode(tokens), exact.decode(tokens))
    # in a model: saved and loaded with its float centres (model.safetensors), encoding as before
    model = create_model("image_gpt", ImageSpec(3, 16, 16, 256), "tiny", palette=512, float_centres=True)
    model.tokenizer.set_centres(clusters)
    model.save(tmp_path / "m")
    loaded = pixelar.load_model(tmp_path / "m")
    assert torch.equal(loaded.encode(imgs.long()), nearest)
    with pytest.raises(ValueError, match="float_centres is an option of the palette"):
        create_model("image_gpt", ImageSpec(3, 4, 4, 256), "tiny", float_centres=True)
    with pytest.raises(ValueError, match=r"centres must have shape \(n, 3\) with 1 <= n <= 512"):
        exact.set_centres(torch.zeros(513, 3))


def test_models_saved_before_bias_and_float_centres_load_as_they_were(tmp_path):
    model = create_model("image_gpt", ImageSpec(3, 4, 4, 256), "tiny", palette=16)
    model.tokenizer.fit(random_rgb(size=4), steps=5)
    model.save(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    del config["hparams"]["bias"], config["hparams"]["float_centres"]
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    loaded = pixelar.load_model(tmp_path / "m")
    assert loaded.hparams["bias"] is False and loaded.hparams["float_centres"] is False
    x = model.encode(random_rgb(2, size=4).long())
    torch.testing.assert_close(loaded.log_prob(x), model.log_prob(x), rtol=0, atol=0)


def test_bias_option_gives_zero_initialised_biases():
    model = create_model("image_gpt", ImageSpec(3, 4, 4, 256), "tiny", palette=16, bias=True)
    biases = [p for n, p in model.named_parameters() if n.endswith(".bias")]
    assert len(biases) == 4 * 2 + 1 and all(not bool(b.any()) for b in biases)  # 4 per block, the head's


# ----- model -------------------------------------------------------------------------------------------------
def test_parameter_counts_match_the_paper():
    image = ImageSpec(3, 32, 32, 256)
    with torch.device("meta"):
        s = create_model("image_gpt", image, "paper").num_parameters()
        m = create_model("image_gpt", image, "paper", **IGPT_M).num_parameters()
        l_ = create_model("image_gpt", image, "paper", **IGPT_L).num_parameters()
    assert 76.0e6 < s < 77.0e6, s  # iGPT-S: 76M
    assert abs(m / 455e6 - 1) < 0.01, m  # iGPT-M: 455M
    assert abs(l_ / 1.4e9 - 1) < 0.05, l_  # iGPT-L: 1.4B


def test_released_structure():
    model = create_model("image_gpt", ImageSpec(3, 8, 8, 256), "small")
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert linears and all(m.bias is None for m in linears)  # no biases anywhere
    assert not any(isinstance(m, nn.LayerNorm) for m in model.modules())  # RMS-style norm only
    assert torch.count_nonzero(model.head.weight) == 0  # zero-initialised untied head (wtet)
    assert model.row_emb is None and model.pos_emb.weight.shape == (64, 64)  # 1D positions, no 2D structure
    n_layer, d = len(model.blocks), 64
    proj = torch.cat([b.attn.proj.weight.flatten() for b in model.blocks])
    assert abs(proj.std().item() * math.sqrt(d * n_layer) - 1) < 0.1  # c_proj std 1/sqrt(n_state * n_layer)
    h = torch.linspace(-3, 3, 7)
    torch.testing.assert_close(model.blocks[0].act(h), h * torch.sigmoid(1.702 * h))
    # uniform over the 512 tokens at initialisation (zero head)
    x = torch.randint(0, 512, (2, *model.image.shape))
    torch.testing.assert_close(model.log_prob(x), torch.full((2,), -64 * math.log(512)))


@pytest.mark.parametrize("kind", ["class", "vector"])
def test_conditioning_enters_the_start_token_only(kind):
    spec = ImageSpec(1, 3, 3, 4)
    kw, c1, c2 = (
        ({"num_classes": 3}, torch.tensor([0]), torch.tensor([2]))
        if kind == "class"
        else ({"cond_dim": 4}, torch.zeros(1, 4), torch.ones(1, 4))
    )
    model = _strong(create_model("image_gpt", spec, "tiny", **kw))  # random weights (head and cond_emb start at 0)
    x = torch.randint(0, 4, (1, *spec.shape))
    diff = (model.embed(x, c1) - model.embed(x, c2)).abs().sum(-1)[0]  # (N,)
    assert diff[0] > 0 and torch.count_nonzero(diff[1:]) == 0
    assert not torch.allclose(model.log_prob(x, c1), model.log_prob(x, c2))  # every position reads it


def test_palette_options_are_checked():
    with pytest.raises(ValueError, match="8-bit"):
        create_model("image_gpt", ImageSpec(1, 4, 4, 2), "tiny", palette=16)
    with pytest.raises(ValueError, match="categorical"):
        create_model("image_gpt", ImageSpec(3, 4, 4, 256), "tiny", palette=16, output="logistic_mixture")
    with pytest.raises(ValueError, match="palette"):
        create_model("image_gpt", ImageSpec(3, 4, 4, 256), "tiny", palette=1)


def _strong(model):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model.eval()


def test_likelihood_checks_catch_leaks(float64):
    """The shared checks must fail on an Image GPT that reads the token it predicts (no shift right) or
    whose attention looks ahead."""
    spec = ImageSpec(1, 3, 3, 4)
    x = torch.randint(0, 4, (1, *spec.shape))
    model = _strong(create_model("image_gpt", spec, "tiny"))
    sums = conditional_sums(model, x)
    assert torch.allclose(sums, torch.ones_like(sums))
    assert causality_violations(model, x)[0] == []

    embed = model.embed

    def leaky_embed(x, cond, positions=None):  # also adds the embedding of the token each position predicts
        positions = torch.arange(model.image.dims) if positions is None else positions
        return embed(x, cond, positions) + model.value_emb(x.reshape(x.shape[0], -1)[:, model.unit_order[positions]])

    model.embed = leaky_embed
    sums = conditional_sums(model, x)
    assert not torch.allclose(sums, torch.ones_like(sums)), "reading the current token must break normalization"

    model = _strong(create_model("image_gpt", spec, "tiny"))
    for blk in model.blocks:
        blk.attn.forward = _bidirectional(blk.attn)
    assert causality_violations(model, x)[0], "attention to later positions must be caught"


def _bidirectional(attn):
    def forward(x):
        q, k, v = attn._heads(x)
        y = F.scaled_dot_product_attention(q, k, v)  # no causal mask
        return attn.proj(y.transpose(1, 2).reshape(x.shape[0], x.shape[1], attn.v_dim))

    return forward


def test_cached_sampling_and_completion_equal_naive_over_palette_tokens():
    torch.manual_seed(0)
    model = _strong(create_model("image_gpt", ImageSpec(3, 5, 5, 256), "tiny", palette=16, num_classes=3))
    model.tokenizer.fit(random_rgb(10, size=5), steps=10)
    cond = torch.tensor([0, 1, 2])
    for seed, temperature in [(0, 1.0), (1, 0.6)]:
        a = model.sample(3, cond=cond, temperature=temperature, generator=torch.Generator().manual_seed(seed))
        b = model.sample(
            3, cond=cond, temperature=temperature, generator=torch.Generator().manual_seed(seed), method="naive"
        )
        assert torch.equal(a, b) and a.shape == (3, 1, 5, 5) and int(a.max()) < 16
    x_known = model.encode(random_rgb(3, size=5, seed=3).long())
    known = torch.zeros(3, 5, 5, dtype=torch.bool)
    known[:, :2] = True
    out = [
        model.sample(3, cond=cond, generator=torch.Generator().manual_seed(5), method=m, x_known=x_known, known=known)
        for m in ("cached", "naive")
    ]
    assert torch.equal(out[0], out[1]) and torch.equal(out[0][:, :, :2], x_known[:, :, :2])
    assert model.decode(out[0]).shape == (3, 3, 5, 5)


def test_features_are_the_normed_block_inputs_averaged():
    model = _strong(create_model("image_gpt", ImageSpec(1, 4, 4, 4), "tiny"))
    x = torch.randint(0, 4, (2, 1, 4, 4))
    feats = model.features(x)
    assert sorted(feats) == [0, 1, 2] and all(f.shape == (2, 16) for f in feats.values())
    h = model.embed(x, None)
    torch.testing.assert_close(feats[0], model.blocks[0].ln1(h).mean(1))
    h = model.blocks[1](model.blocks[0](h))
    torch.testing.assert_close(feats[2], model.ln_f(h).mean(1))
    for bad in ([3], []):
        with pytest.raises(ValueError, match=r"0 \.\. 2"):
            model.features(x, layers=bad)


# ----- linear probe ------------------------------------------------------------------------------------------
def test_probe_separates_planted_classes_and_not_random_labels():
    g = torch.Generator().manual_seed(0)
    means = 3 * torch.randn(3, 20, generator=g, dtype=torch.float64)
    y = torch.arange(600) % 3
    x = means[y] + torch.randn(600, 20, generator=g, dtype=torch.float64) * 2
    res = probe_layer(x[:400], y[:400], x[400:], y[400:], 3)
    assert res["test_accuracy"] > 0.95, res
    shuffled = y[torch.randperm(600, generator=g)]
    res = probe_layer(x[:400], shuffled[:400], x[400:], shuffled[400:], 3)
    assert res["test_accuracy"] < 0.6, res  # labels unrelated to the features: about chance (1/3)


def _two_class_dataset(n, split, seed):
    """Dark (class 0) vs bright (class 1) 6x6 grayscale noise images."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    imgs = torch.randint(0, 120, (n, 1, 6, 6), generator=g) + 120 * y.view(n, 1, 1, 1)
    return ImageDataset(imgs.to(torch.uint8), y, ImageSpec(1, 6, 6, 256), 2, "planted", split=split)


def test_linear_probe_end_to_end_on_a_tiny_model():
    torch.manual_seed(0)
    model = create_model("image_gpt", ImageSpec(1, 6, 6, 256), "tiny", palette=8)
    train, test = _two_class_dataset(80, "train", 0), _two_class_dataset(40, "test", 1)
    model.tokenizer.fit(train.images, steps=20)
    rows = linear_probe(model, train, test)
    assert [r["layer"] for r in rows] == [0, 1, 2] and rows[0]["num_train"] == 80 and rows[0]["num_test"] == 40
    assert rows[0]["test_accuracy"] > 0.9, rows  # token histograms separate dark from bright
    with pytest.raises(NotImplementedError, match="features"):
        linear_probe(create_model("pixelcnn", ImageSpec(1, 6, 6, 256), "tiny"), train, test)


# ----- command line, on a small npz dataset ------------------------------------------------------------------
@pytest.fixture(scope="module")
def rgb_npz(tmp_path_factory):
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("data") / "rgb.npz"
    y_train, y_test = np.arange(40) % 2, np.arange(20) % 2
    x_train = rng.integers(0, 128, (40, 8, 8, 3)) + 127 * y_train[:, None, None, None]
    x_test = rng.integers(0, 128, (20, 8, 8, 3)) + 127 * y_test[:, None, None, None]
    np.savez(path, x_train=x_train.astype(np.uint8), y_train=y_train, x_test=x_test.astype(np.uint8), y_test=y_test)
    return f"npz:{path}"


def test_cli_train_eval_sample_complete_probe_resume(rgb_npz, tmp_path, capsys):
    from pixelar.cli import main

    run = tmp_path / "run"
    args = [
        "train",
        "--model",
        "image_gpt",
        "--size",
        "tiny",
        "--set",
        "palette=16",
        "--dataset",
        rgb_npz,
        "--batch-size",
        "8",
        "--sample-n",
        "2",
        "--no-progress",
        "--checkpoint-every",
        "2",
        "--run-dir",
        str(run),
    ]
    assert main([*args, "--steps", "2"]) == 0
    out = capsys.readouterr().out
    assert "nats per token" in out and "NOT comparable with bits/dim" in out and "Palette(k=16" in out
    assert Image.open(run / "samples.png").mode == "RGB"  # decoded to colours
    centres = pixelar.load_model(run).tokenizer.centres.clone()

    assert main(["eval", str(run), "--json", "--subset", "10"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["tokenized"] and res["num_images"] == 10 and 0 < res["nats_per_token"] < math.log(16) + 0.5
    assert res["palette_rmse"] > 0 and "NOT comparable" in res["note"]
    assert main(["eval", str(run), "--subset", "10"]) == 0
    assert "nats per palette token" in capsys.readouterr().out

    grid = tmp_path / "grid.png"
    assert main(["sample", str(run), "--n", "2", "--out", str(grid)]) == 0
    assert Image.open(grid).mode == "RGB"
    img = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(img)
    done = tmp_path / "done.png"
    assert main(["complete", str(run), "--image", str(img), "--keep", "top-half", "--n", "1", "--out", str(done)]) == 0
    tiles = np.asarray(Image.open(done))
    shown, completed = tiles[2:10, 12:20], tiles[2:10, 22:30]  # kept pixels (through the palette), completion
    assert np.array_equal(completed[:4], shown[:4])

    assert main(["probe", str(run), "--layer", "all"]) == 0
    text = capsys.readouterr().out
    assert "trained on 36 training images, accuracy on 20 test images" in text and "<- best" in text
    assert main(["probe", str(run), "--layer", "1", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["layers"]
    assert [r["layer"] for r in rows] == [1] and 0 <= rows[0]["test_accuracy"] <= 1
    assert main(["probe", str(run), "--layer", "9"]) == 2
    assert "0 .. 2" in capsys.readouterr().err

    # resuming restores the palette from the checkpoint (it is not refitted)
    assert main(["train", "--resume", str(run), "--steps", "3", "--no-progress"]) == 0
    assert torch.equal(pixelar.load_model(run).tokenizer.centres, centres)


def test_evaluate_reports_the_palette_error():
    torch.manual_seed(0)
    model = create_model("image_gpt", ImageSpec(1, 6, 6, 256), "tiny", palette=4)
    test = _two_class_dataset(10, "test", 2)
    model.tokenizer.fit(test.images, steps=10)
    res = evaluate(model, test)
    assert res["tokenized"] and res["num_images"] == 10
    assert res["nats_per_token"] == pytest.approx(res["bpd"] * math.log(2))
    assert res["nats_per_token"] == pytest.approx(math.log(4), abs=1e-5)  # zero head: uniform over 4 tokens
    assert res["palette_rmse"] > 0 and 0 <= res["palette_exact_fraction"] < 1


def test_distaug_wraps_a_palette_model(rgb_npz, tmp_path, capsys):
    """Distribution Augmentation of image_gpt: the wrapper transforms the palette tokens, keeps the base's
    tokenizer and data images, saves and loads them; plain augmentation transforms the colour images first."""
    from pixelar.cli import main
    from pixelar.models.distaug import create_distaug_model

    torch.manual_seed(0)
    model = create_distaug_model("image_gpt", ImageSpec(3, 8, 8, 256), "tiny", ["rot90"], palette=16)
    assert model.image == ImageSpec(1, 8, 8, 16) and model.data_image == ImageSpec(3, 8, 8, 256)
    model.tokenizer.fit(random_rgb(), steps=10)
    x = model.encode(random_rgb(2, seed=5).long())
    _strong(model.base)
    rot = model.augmenter.apply(x, torch.ones(2, 1, dtype=torch.long))
    torch.testing.assert_close(
        model.log_prob(x, aug=torch.ones(2, 1, dtype=torch.long)),
        model.base.log_prob(rot, model.base_cond(None, torch.ones(2, 1, dtype=torch.long), 2)),
    )
    model.save(tmp_path / "m")
    loaded = pixelar.load_model(tmp_path / "m")
    assert loaded.data_image == model.data_image and torch.equal(
        loaded.encode(random_rgb(1).long()), model.encode(random_rgb(1).long())
    )
    for flag in ("--distaug", "--augment"):
        run = tmp_path / flag.strip("-")
        assert (
            main(
                [
                    "train",
                    "--model",
                    "image_gpt",
                    "--size",
                    "tiny",
                    "--set",
                    "palette=16",
                    "--dataset",
                    rgb_npz,
                    "--batch-size",
                    "8",
                    "--steps",
                    "2",
                    "--sample-n",
                    "0",
                    "--no-progress",
                    flag,
                    "rot90,colour" if flag == "--augment" else "rot90",
                    "--run-dir",
                    str(run),
                ]
            )
            == 0
        )
        assert main(["eval", str(run), "--subset", "4", "--per-augmentation"]) == 0
        assert "bits/tok per transformation" in capsys.readouterr().out
