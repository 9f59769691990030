"""The ajayjain-lmconv converter: a converted checkpoint gives ajayjain/lmconv's own per-image loss, under each of
the run's generation orders and under their mixture.

tests/fixtures/ajayjain_lmconv/ holds four small random-weight models of its model.py, built from main.py
command lines and saved as main.py saves them (the dictionary with args, model_state_dict, ...), and
expected.npz: per model the images, each image's nats by its loss code under each of the run's orders and
under their uniform mixture, and those orders (tests/fixtures/make_ajayjain_lmconv.py wrote them by running its
code: data only)."""

from __future__ import annotations

import argparse
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import pixelar
from pixelar import converters
from pixelar.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

FIXTURES = Path(__file__).parent / "fixtures" / "ajayjain_lmconv"
NAMES = ["cifar_pono_s8", "binary_mnist_gilbert8_wn", "celebahq8_5bit_hilbert", "mnist_raster_variants"]


def _expected(name: str):
    e = np.load(FIXTURES / "expected.npz")
    x = torch.from_numpy(e[f"{name}_images"]).long()
    return x, e[f"{name}_nats_per_order"], e[f"{name}_nats"], torch.from_numpy(e[f"{name}_orders"])


def _convert(path):
    return pixelar.convert("ajayjain-lmconv", path)


def _pixelar_index(model, their_orders) -> list[int]:
    """Each of lmconv's orders as the index of the same pixel order among the model's."""
    return [next(k for k in range(model.num_orders) if torch.equal(o, model.orders[k])) for o in their_orders]


def _nats(model, x, index):
    with torch.no_grad():
        per = -model.log_prob_per_order(x, orders=index).double().numpy()
        mixture = -model.log_prob(x, orders="all").double().numpy()
    return per, mixture


@pytest.mark.parametrize("name", NAMES)
def test_lmconv_gives_the_authors_per_image_loss_in_every_order_and_their_mixture(name):
    model = _convert(FIXTURES / f"{name}.pth")
    x, want_per, want, theirs = _expected(name)
    index = _pixelar_index(model, theirs)  # every one of its orders is one of the model's, and no other
    assert sorted(index) == list(range(model.num_orders)) == list(range(len(theirs)))
    got_per, got = _nats(model, x, index)
    # measured: 5.1e-7 (cifar), 2.1e-7 (binary), 1.1e-7 (celebahq), 7.7e-7 (mnist) relative, float32 on both
    # sides. A missing normalisation, a mixture row or an order in the wrong place moves these by far more.
    assert np.abs(got_per / want_per - 1).max() < 1e-5, (got_per, want_per)
    assert np.abs(got / want - 1).max() < 1e-5, (got, want)
    # its single-order evaluation (its first order) is the model with that order selected
    model.set_order(index[0])
    with torch.no_grad():
        single = -model.log_prob(x).double().numpy()
    assert np.abs(single / want_per[:, 0] - 1).max() < 1e-5
    assert not model.training


@pytest.mark.parametrize("name", ["cifar_pono_s8", "celebahq8_5bit_hilbert"])
def test_positional_normalisation_is_needed(name):
    """The same weights without pono are far off on every image: the fixtures tell the option apart (measured: per
    image and order 3.7e-5 to 0.11 relative, at least 1.7e-2 for every image in some order)."""
    model = _convert(FIXTURES / f"{name}.pth")
    assert model.hparams["normalization"] == "pono"
    plain = pixelar.create_model("lmconv", model.image, "paper", **{**model.hparams, "normalization": "none"})
    plain.load_state_dict(model.state_dict())
    x, want_per, _, theirs = _expected(name)
    got_per, _ = _nats(plain.eval(), x, _pixelar_index(model, theirs))
    assert np.abs(got_per / want_per - 1).max(1).min() > 1e-2


def test_the_published_layouts_and_the_weights_converted(tmp_path):
    path = FIXTURES / "cifar_pono_s8.pth"
    assert not zipfile.is_zipfile(path)  # torch's legacy format, as files saved by torch 1.4/1.5 are
    ckpt = torch.load(path, weights_only=True)
    assert set(ckpt) == {
        "test_loss_3x32x32",
        "epoch",
        "global_step",
        "args",
        "model_state_dict",
        "optimizer_state_dict",
    }
    assert isinstance(ckpt["args"], dict) and ckpt["optimizer_state_dict"]["state"]  # vars(args); one Adam step
    assert not any(k.startswith("module.") for k in ckpt["model_state_dict"])
    # the current code with --ema also saves its EMA, which main.py never evaluates: model_state_dict is converted
    path = FIXTURES / "binary_mnist_gilbert8_wn.pth"
    ckpt = torch.load(path, weights_only=True)
    model, ema = ckpt["model_state_dict"], ckpt["ema_state_dict"]
    assert zipfile.is_zipfile(path) and model.keys() == ema.keys()
    assert sum(not torch.equal(model[k], ema[k]) for k in model) > len(model) // 2
    x, want_per, want, theirs = _expected("binary_mnist_gilbert8_wn")
    torch.save({**ckpt, "model_state_dict": ema}, tmp_path / "ema_as_model.pth")
    wrong = _convert(tmp_path / "ema_as_model.pth")
    assert np.abs(_nats(wrong, x, _pixelar_index(wrong, theirs))[1] / want - 1).min() > 1e-3


def test_convert_to_dir_writes_the_card(tmp_path):
    out = tmp_path / "lm"
    model = converters.convert_to_dir("ajayjain-lmconv", FIXTURES / "binary_mnist_gilbert8_wn.pth", out)
    card = json.loads((out / "card.json").read_text())
    assert card["source"] == "ajayjain-lmconv" and card["model"] == "lmconv" and card["paper_bpd"].startswith("2.887")
    assert card["image"] == {"channels": 1, "height": 28, "width": 28, "num_values": 2}
    assert card["num_parameters"] == model.num_parameters()
    notes = " | ".join(card["conversion"])
    assert "gilbert2d -> pixelar's 'gilbert', 8 orders" in notes and "variants [4, 5, 6, 7, 0, 1, 2, 3]" in notes
    assert "set_order(4)" in notes and "ema_state_dict left alone" in notes and "weight norm folded" in notes
    assert "args['no_bias']" in notes and "mask_weight" in notes and "mnist_dynamic" in notes
    assert model.hparams["mask_weight"] and model.hparams["output"] == {"kind": "categorical"}
    loaded = pixelar.load_model(out)
    x, _, want, _ = _expected("binary_mnist_gilbert8_wn")
    with torch.no_grad():
        got = -loaded.log_prob(x, orders="all").double().numpy()
    assert np.abs(got / want - 1).max() < 1e-5


def _with_args(tmp_path, name: str, **args) -> Path:
    ckpt = torch.load(FIXTURES / f"{name}.pth", weights_only=True)
    ckpt["args"] = {**ckpt["args"], **args}
    path = tmp_path / f"{name}-changed.pth"
    torch.save(ckpt, path)
    return path


def test_orders_that_are_the_same_set_in_another_numbering_convert(tmp_path):
    """--base_order_reflect_rows with --randomize_order trains on the same 8 orders, numbered from the reflected
    one; --train_masks 2 0 1 after --order_variants 0 1 2 on the same 3: the mixture is unchanged."""
    x, want_per, want, _ = _expected("cifar_pono_s8")
    model = _convert(_with_args(tmp_path, "cifar_pono_s8", base_order_reflect_rows=True))
    assert model.num_orders == 8
    assert np.abs(_nats(model, x, list(range(8)))[1] / want - 1).max() < 1e-5
    x, want_per, want, _ = _expected("mnist_raster_variants")
    model = _convert(_with_args(tmp_path, "mnist_raster_variants", train_masks=[2, 0, 1]))
    assert model.num_orders == 3
    assert np.abs(_nats(model, x, [0, 1, 2])[1] / want - 1).max() < 1e-5


@pytest.mark.parametrize(
    "args, message",
    [
        ({"normalization": "order_rescale"}, "order_rescale divides .* count of open taps"),
        ({"ours": False}, "baseline PixelCNN\\+\\+ .* pclucas14-pixelcnn_pp"),
        ({"order": ["s_curve", "hilbert"]}, "orders of 2 base orders"),
        ({"order": ["s_curve_center_quarter_last"]}, "centre quarter moved last\\) has no pixelar base order"),
        (
            {"randomize_order": False, "base_order_reflect_rows": True},
            "1 order, pixelar's 's_curve' variants \\[1\\] .* generates in variant 0",
        ),
        ({"order_variants": [1, 2]}, "variants \\[1, 2\\] .* in variants 0..1"),
        ({"train_masks": [0, 0, 1]}, "once each"),
        ({"order_variants": [8]}, "must name orders 0..7"),
        ({"binarize": True}, r"args\['binarize'\] with dataset cifar"),
        ({"dataset": "imagenet"}, "dataset 'imagenet' is none of main.py's"),
        ({"n_bits": 5}, "n_bits 5: main.py takes 8 bits for cifar"),
        ({"nr_filters": 8}, "does not fit its args: it has filters 6, .* the args give filters 8"),
        ({"nr_logistic_mix": 10}, "output rows 30; the args give .* output rows 100"),
        ({"nr_resnet": "5"}, "args\\['nr_resnet'\\] must be an integer"),
        ({"dropout_prob": 1.0}, "dropout_prob'\\] must be in \\[0, 1\\)"),
        ({"order": []}, "args\\['order'\\] is empty"),
    ],
)
def test_args_that_pixelar_cannot_match_are_refused_with_the_reason(tmp_path, args, message):
    with pytest.raises(ValueError, match=message):
        _convert(_with_args(tmp_path, "cifar_pono_s8", **args))


def test_files_of_another_layout_are_refused(tmp_path):
    ckpt = torch.load(FIXTURES / "cifar_pono_s8.pth", weights_only=True)
    state = ckpt["model_state_dict"]
    torch.save({**ckpt, "model_state_dict": {**state, "extra.weight": torch.zeros(1)}}, tmp_path / "extra.pth")
    with pytest.raises(ValueError, match=r"does not map \(extra.weight\)"):
        _convert(tmp_path / "extra.pth")
    del state["down_layers.2.u_stream.1.nin_skip.lin_a.bias"]
    torch.save(ckpt, tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="has no tensor 'down_layers.2.u_stream.1.nin_skip.lin_a.bias'"):
        _convert(tmp_path / "missing.pth")
    torch.save(state, tmp_path / "bare.pth")  # the state dict alone: no args to fix the model
    with pytest.raises(ValueError, match="not a checkpoint of ajayjain/lmconv's main.py .* no model_state_dict"):
        _convert(tmp_path / "bare.pth")
    torch.save({"model_state_dict": state}, tmp_path / "no_args.pth")
    with pytest.raises(ValueError, match="has no args dictionary"):
        _convert(tmp_path / "no_args.pth")
    # args as the Namespace itself (main.py saves vars(args)): an object only code rebuilds, refused unread
    torch.save({**ckpt, "args": argparse.Namespace(**ckpt["args"])}, tmp_path / "namespace.pth")
    with pytest.raises(ValueError, match=r"holds an object \(argparse.Namespace\) .* never runs code"):
        _convert(tmp_path / "namespace.pth")
    with pytest.raises(ValueError, match="takes no option 'image'"):
        pixelar.convert("ajayjain-lmconv", FIXTURES / "cifar_pono_s8.pth", image=pixelar.ImageSpec(3, 32, 32))


def test_cli_convert_then_eval_and_sample(tmp_path, capsys):
    out = tmp_path / "lm"
    src = str(FIXTURES / "mnist_raster_variants.pth")
    assert main(["convert", "ajayjain-lmconv", src, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}: lmconv" in printed and "raster_scan -> pixelar's 'raster', 3 orders" in printed
    args = ["eval", str(out), "--dataset", "fashion_mnist", "--subset", "4", "--json", "--no-progress"]
    assert main(args) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    _, _, want, _ = _expected("mnist_raster_variants")  # its first 4 images are the first 4 Fashion-MNIST test images
    assert res["num_orders"] == 3 and res["bpd"] == pytest.approx(want[:4].sum() / (4 * 784 * np.log(2)), rel=1e-5)
    assert main(["sample", str(out), "--n", "1", "--out", str(tmp_path / "s.png"), "--no-progress"]) == 0
    assert main(["convert"]) == 0
    assert "ajayjain-lmconv" in capsys.readouterr().out
