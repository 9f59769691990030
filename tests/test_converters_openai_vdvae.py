"""The openai-vdvae converter: a converted checkpoint gives openai/vdvae's own per-image ELBO.

tests/fixtures/openai_vdvae/ holds two small random-weight VAEs of openai/vdvae's code, saved as its train.py
saves them, with its hyperparameters as JSON, and expected.npz: each image's distortion and rate by its own
VAE.forward on its data.py's preprocessing (input normalisation per dataset), with the posterior noise drawn
after torch.manual_seed(SEED + i), and that noise (tests/fixtures/make_openai_vdvae.py wrote them by running
its code: data only)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import pixelar
from pixelar import converters
from pixelar.cli import main
from pixelar.converters.openai_vdvae import NAMED, decoder_counts, encoder_counts

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

FIXTURES = Path(__file__).parent / "fixtures" / "openai_vdvae"
SEED = 1000  # image i's noise: torch.manual_seed(SEED + i), as the fixtures were made
FILES = {"cifar10_small": "cifar10_small-model-ema.th", "imagenet32_tiny": "imagenet32_tiny-model.th"}


def _expected(name: str):
    e = np.load(FIXTURES / "expected.npz")
    return (
        torch.from_numpy(e[f"{name}_images"]).long(),
        e[f"{name}_distortion"],
        e[f"{name}_rate"],
        e[f"{name}_noise"],
    )


def _convert(name: str, **kw):
    return pixelar.convert("openai-vdvae", FIXTURES / FILES[name], hps=FIXTURES / f"{name}.json", **kw)


def _elbo_terms(model, x) -> tuple[np.ndarray, np.ndarray]:
    """Each image's (distortion, rate) by model.elbo, image i alone with its noise drawn after SEED + i."""
    d, r = [], []
    with torch.no_grad():
        for i in range(len(x)):
            torch.manual_seed(SEED + i)
            t = model.elbo(x[i : i + 1])
            d.append(t["distortion"].item())
            r.append(t["rate"].item())
    return np.array(d), np.array(r)


@pytest.mark.parametrize("name", list(FILES))
def test_openai_vdvae_gives_the_authors_per_image_elbo(name):
    model = _convert(name)
    x, want_d, want_r, noise = _expected(name)
    # the same noise on both sides: torch's generator, seeded, draws the authors' noise for these layers again
    # (vdvae draws its posterior noise as torch.randn_like per latent layer, top first, as openai/vdvae does)
    shapes = [(1, model.zdim, *model.levels[i]) for i in model.dec_level]
    for i in range(len(x)):
        torch.manual_seed(SEED + i)
        again = torch.cat([torch.randn(s).flatten() for s in shapes]).numpy()
        assert np.array_equal(again, noise[i]), "torch's generator no longer draws the fixtures' noise: rerun make_"
    got_d, got_r = _elbo_terms(model, x)
    # measured: distortion 5.3e-7 and 1.1e-6, rate 1.3e-7 and 2.6e-7 relative (float32 on both sides). The
    # authors' loss substitutes density x bin width for a component's bin mass below 1e-5: 45 of 24,219 and 1
    # of 1,396 component bins here, none where every component's is, so the substitute moves nothing measurable.
    assert np.abs(got_d / want_d - 1).max() < 1e-5, (got_d, want_d)
    assert np.abs(got_r / want_r - 1).max() < 1e-5, (got_r, want_r)
    assert not model.training


@pytest.mark.parametrize("name", list(FILES))
def test_the_encoder_input_normalisation_is_needed(name):
    """The fixtures tell a missing normalisation apart: the encoder fed [-1, 1] inputs instead moves the ELBO by
    far more than the agreement above (measured: 6e-4 to 4.5e-2 and 6e-5 to 9e-4 relative per image)."""
    model = _convert(name)
    x, want_d, want_r, _ = _expected(name)
    assert model.hparams["input_std"] != 1.0
    model.encoder.input_mean, model.encoder.input_std = 0.0, 1.0
    got_d, got_r = _elbo_terms(model, x)
    assert np.abs((got_d + got_r) / (want_d + want_r) - 1).min() > 3e-5


def test_normalisation_is_data_py_s_per_dataset():
    cifar, imagenet = _convert("cifar10_small"), _convert("imagenet32_tiny")
    # data.py: cifar10 (x - 120.63838) / 64.16736, imagenet32 (x - 116.2373) / 69.37404 on 0..255 values
    for model, mean, std in ((cifar, 120.63838, 64.16736), (imagenet, 116.2373, 69.37404)):
        u = torch.tensor([0.0, 255.0]) / 127.5 - 1
        norm = (u - model.hparams["input_mean"]) / model.hparams["input_std"]
        torch.testing.assert_close(norm, (torch.tensor([0.0, 255.0]) - mean) / std)
    assert imagenet.image == pixelar.ImageSpec(3, 8, 8, 256)


def test_named_hps_give_the_published_block_layouts():
    """hps.py's sets, read into pixelar's per-resolution counts (cifar10's are pixelar's paper size)."""
    sizes = {32: [32, 16, 8, 4, 1], 64: [64, 32, 16, 8, 4, 1]}
    want = {
        "cifar10": ([12, 7, 7, 4, 3], [22, 11, 6, 3, 1]),
        "imagenet32": ([16, 10, 9, 7, 6], [41, 20, 10, 5, 2]),
        "imagenet64": ([12, 21, 10, 9, 8, 5], [13, 32, 16, 8, 4, 2]),
    }
    for name, (enc, dec) in want.items():
        h = NAMED[name]
        s = sizes[64 if name == "imagenet64" else 32]
        assert encoder_counts(h["enc_blocks"], s, name) == enc
        assert decoder_counts(h["dec_blocks"], s, name) == dec
    paper = pixelar.models.preset("vdvae", "paper")
    assert (paper["enc_blocks"], paper["dec_blocks"]) == want["cifar10"]


def test_a_file_of_other_hps_is_refused_with_both_shapes(tmp_path):
    with pytest.raises(ValueError, match=r"does not fit hps cifar10: it has width 16, zdim 4, .*width 384"):
        pixelar.convert("openai-vdvae", FIXTURES / FILES["cifar10_small"], hps="cifar10")
    with pytest.raises(ValueError, match="pass hps=NAME"):
        pixelar.convert("openai-vdvae", FIXTURES / FILES["cifar10_small"])


@pytest.mark.parametrize(
    "hps, message",
    [
        ("ffhq256", "5-bit loss, whose bins .* overlap"),
        ("ffhq1024", "resolution 512 width 32, not width 16: pixelar's vdvae has one width"),
        ("cifar", "hps must be cifar10, imagenet32 or imagenet64"),
        ({"dataset": "ffhq_256"}, "not a normalised discrete likelihood"),
        ({"datset": "cifar10"}, "'datset' is not one of openai/vdvae's hyperparameters"),
        ({"dataset": "mnist"}, "dataset 'mnist' is none of openai/vdvae's"),
        ({"image_channels": 1}, "models RGB images"),
        ({"width": 16.5}, "width must be an integer >= 1"),
        ({"enc_blocks": 5}, "enc_blocks must be a string"),
        ({"enc_blocks": "32x2,32d4,8x1,8d8,1x1", "dec_blocks": "1x1"}, "visits|does not fit .* 32, 16, 8, 4, 1"),
        ({"enc_blocks": "32x1,32d2,16d2,8d2,4d4", "dec_blocks": "1x1"}, "at least one block at 1x1"),
        ({"enc_blocks": "32x1,32d2,16d2,8d2,4d4,1", "dec_blocks": "1x1,4m1,8m4,16m8,32m8"}, "32m8 does not follow"),
        ({"enc_blocks": "32x1,32d2,16d2,8d2,4d4,1", "dec_blocks": "1x1,4m1,8m4"}, "stops below 32x32"),
        ({"enc_blocks": "32x1,32q2", "dec_blocks": "1x1"}, "'32q2' is not RESxN"),
        ({"custom_width_str": "32-16", "enc_blocks": "1", "dec_blocks": "1"}, "is not RES:WIDTH"),
    ],
)
def test_hps_that_pixelar_cannot_match_are_refused_with_the_reason(hps, message):
    with pytest.raises(ValueError, match=message):
        pixelar.convert("openai-vdvae", FIXTURES / FILES["cifar10_small"], hps=hps)


def test_hps_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "h.json"
    bad.write_text('{"width": 16,')
    with pytest.raises(ValueError, match=f"hps file {bad} is corrupt"):
        pixelar.convert("openai-vdvae", FIXTURES / FILES["cifar10_small"], hps=bad)
    with pytest.raises(FileNotFoundError, match="hps file not found"):
        pixelar.convert("openai-vdvae", FIXTURES / FILES["cifar10_small"], hps=tmp_path / "none.json")
    bad.write_text(json.dumps({"width": 16, "lr": 0.1}))
    with pytest.raises(ValueError, match=f"hps file {bad}: 'lr' is not one of"):
        pixelar.convert("openai-vdvae", FIXTURES / FILES["cifar10_small"], hps=bad)


def test_the_published_layouts_and_the_card(tmp_path):
    ema = torch.load(FIXTURES / FILES["cifar10_small"], weights_only=True)
    assert not any(k.startswith("module.") for k in ema) and "decoder.bias_xs.4" in ema  # the EMA VAE, unwrapped
    raw = torch.load(FIXTURES / FILES["imagenet32_tiny"], weights_only=True)
    assert all(k.startswith("module.") for k in raw)  # -model.th: the wrapped model's state dict
    assert "module.decoder.bias_xs.1" in raw and "module.decoder.bias_xs.2" not in raw  # none at 8 px
    out = tmp_path / "vd"
    model = converters.convert_to_dir(
        "openai-vdvae", FIXTURES / FILES["imagenet32_tiny"], out, hps=str(FIXTURES / "imagenet32_tiny.json")
    )
    card = json.loads((out / "card.json").read_text())
    assert card["source"] == "openai-vdvae" and card["model"] == "vdvae" and card["paper_bpd"].startswith("<= 2.87")
    notes = " | ".join(card["conversion"])
    assert "'module.' prefix stripped" in notes and "no learned constant at 8 px" in notes
    assert "(x - 116.2373) / 69.37404" in notes and "-> [3, 2, 2] per resolution from 8 down" in notes
    assert "-> [2, 1, 2] (5 latent layers)" in notes
    assert "evaluate on pixelar's imagenet32_oord" in notes and "imagenet32_oord" in card["paper_bpd"]
    assert torch.count_nonzero(model.start[0]) == 0 and torch.count_nonzero(model.start[1]) > 0
    # the directory loads as the same model, normalisation included
    x, want_d, want_r, _ = _expected("imagenet32_tiny")
    got_d, got_r = _elbo_terms(pixelar.load_model(out), x)
    assert np.abs((got_d + got_r) / (want_d + want_r) - 1).max() < 1e-5


def test_a_path_given_as_hps_is_written_into_the_card_as_text(tmp_path):
    hps = FIXTURES / "cifar10_small.json"  # a Path, not a str
    converters.convert_to_dir("openai-vdvae", FIXTURES / FILES["cifar10_small"], tmp_path / "vd", hps=hps)
    assert json.loads((tmp_path / "vd" / "card.json").read_text())["options"] == {"hps": str(hps)}


def test_files_of_another_layout_are_refused(tmp_path):
    state = torch.load(FIXTURES / FILES["cifar10_small"], weights_only=True)
    torch.save({**state, "decoder.extra": torch.zeros(1)}, tmp_path / "extra.th")
    with pytest.raises(ValueError, match=r"does not map \(decoder.extra\)"):
        _convert_file(tmp_path / "extra.th")
    del state["decoder.dec_blocks.3.resnet.c2.bias"]
    torch.save(state, tmp_path / "missing.th")
    with pytest.raises(ValueError, match="has no tensor 'decoder.dec_blocks.3.resnet.c2.bias'"):
        _convert_file(tmp_path / "missing.th")
    torch.save({"state": {}, "param_groups": []}, tmp_path / "x-opt.th")  # the optimizer's file
    with pytest.raises(ValueError, match="not an openai/vdvae model state dict .* its first keys: state, param_groups"):
        _convert_file(tmp_path / "x-opt.th")


def _convert_file(path):
    return pixelar.convert("openai-vdvae", path, hps=FIXTURES / "cifar10_small.json")


def test_cli_convert_with_hps(tmp_path, capsys):
    src, hps = str(FIXTURES / FILES["cifar10_small"]), str(FIXTURES / "cifar10_small.json")
    out = tmp_path / "vd"
    assert main(["convert", "openai-vdvae", src, "--hps", hps, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}: vdvae" in printed and "encoder input normalised" in printed
    assert main(["convert", "openai-vdvae", src, "--out", str(tmp_path / "other")]) == 2
    assert "pass --hps NAME (cifar10, imagenet32 or imagenet64" in capsys.readouterr().err
    assert main(["convert", "openai-vdvae", src, "--hps", "ffhq256", "--out", str(tmp_path / "other")]) == 2
    assert "5-bit" in capsys.readouterr().err and not (tmp_path / "other").exists()
    assert main(["sample", str(out), "--n", "2", "--out", str(tmp_path / "s.png"), "--no-progress"]) == 0
    assert main(["convert"]) == 0
    listed = capsys.readouterr().out
    assert "openai-vdvae" in listed and "--hps" in listed
