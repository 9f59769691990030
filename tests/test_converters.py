"""Converters of published checkpoints: each converted model gives its authors' code's per-image loss.

The fixtures hold small random-weight models of the authors' code, saved in the layouts the published files
have, and the losses the authors' code computed for them (tests/fixtures/make_*.py wrote them by running that
code: data only, none of its code is kept here)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import pixelar
from pixelar import converters
from pixelar.cli import main
from pixelar.converters.checkpoint import fold_weight_norm
from pixelar.io import file_sha256

FIXTURES = Path(__file__).parent / "fixtures"
PCLUCAS14 = FIXTURES / "pclucas14_pixelcnn_pp"


def _expected(name: str):
    e = np.load(PCLUCAS14 / "expected.npz")
    return torch.from_numpy(e[f"{name}_images"]).long(), e[f"{name}_nats"]


@pytest.mark.parametrize("name, file", [("colour", "colour_published_layout.pth"), ("grey", "grey_current.pth")])
def test_pclucas14_pixelcnn_pp_gives_the_ports_loss(name, file):
    model = pixelar.convert("pclucas14-pixelcnn_pp", PCLUCAS14 / file)
    x, want = _expected(name)
    with torch.no_grad():
        got = -model.log_prob(x).double().numpy()
    # measured: 3.4e-7 (colour) and 3.0e-7 (grey) relative, float32 on both sides. A mixture row in the wrong
    # place, a weight norm over the wrong axis or a missing layer moves the loss by far more than 1e-4. No
    # component's bin mass in these images falls below the port's 1e-5, where it would substitute a density.
    assert np.abs(got / want - 1).max() < 1e-5, (got, want)
    assert not model.training


def test_pclucas14_published_layout_has_the_forms_the_converter_detects():
    state = torch.load(PCLUCAS14 / "colour_published_layout.pth", weights_only=True)
    assert all(k.startswith("module.") for k in state)
    assert "module.u_init.conv.weight" in state and "module.u_init.conv.weight_g" not in state
    assert "module.upsize_u_stream.0.deconv.weight_g" in state and "module.nin_out.lin_a.weight_v" in state


def test_fold_weight_norm_per_input_channel_of_a_transposed_convolution():
    with pytest.warns(FutureWarning):  # the hook the port used, deprecated in torch 2.1
        deconv = torch.nn.utils.weight_norm(torch.nn.ConvTranspose2d(3, 5, (2, 3), stride=2))  # dim=0: per INPUT
    with torch.no_grad():
        deconv.weight_g.mul_(torch.linspace(0.5, 2.0, 3)[:, None, None, None])
        deconv(torch.zeros(1, 3, 2, 2))  # the hook recomputes .weight from (g, v)
        want = deconv.weight.clone()
    assert deconv.weight_g.shape == (3, 1, 1, 1)
    torch.testing.assert_close(fold_weight_norm(deconv.weight_g, deconv.weight_v, dim=0), want)
    with pytest.raises(ValueError, match="does not fit"):
        fold_weight_norm(deconv.weight_g.reshape(1, 3, 1, 1), deconv.weight_v.transpose(0, 1), dim=0)


def test_convert_to_dir_writes_a_model_directory_with_its_card(tmp_path):
    src = PCLUCAS14 / "grey_current.pth"
    out = tmp_path / "pcnn"
    model = converters.convert_to_dir("pclucas14-pixelcnn_pp", src, out)
    assert sorted(p.name for p in out.iterdir()) == ["card.json", "config.json", "model.safetensors"]
    card = json.loads((out / "card.json").read_text())
    assert card["source"] == "pclucas14-pixelcnn_pp" and card["source_file"] == "grey_current.pth"
    assert card["source_sha256"] == file_sha256(src) and card["sha256"] == file_sha256(out / "model.safetensors")
    assert card["image"] == {"channels": 1, "height": 28, "width": 28, "num_values": 256}
    assert card["paper_bpd"].startswith("2.95") and card["num_parameters"] == model.num_parameters()
    assert any("weight norm folded" in n for n in card["conversion"])
    x, want = _expected("grey")
    loaded = pixelar.load_model(out)
    torch.testing.assert_close(loaded.log_prob(x), model.log_prob(x), rtol=0, atol=0)
    # an existing directory is kept unless asked, then replaced whole
    with pytest.raises(ValueError, match="exists: pass overwrite=True"):
        converters.convert_to_dir("pclucas14-pixelcnn_pp", src, out)
    converters.convert_to_dir("pclucas14-pixelcnn_pp", PCLUCAS14 / "colour_published_layout.pth", out, overwrite=True)
    assert json.loads((out / "card.json").read_text())["source_file"] == "colour_published_layout.pth"
    assert [p.name for p in tmp_path.iterdir()] == ["pcnn"]  # no temporary directory left
    with pytest.raises(ValueError, match="is the name of a pretrained model"):
        converters.convert_to_dir("pclucas14-pixelcnn_pp", src, "fashion_mnist-pixelcnn_pp")


def test_colour_card_notes_the_prefix_and_the_plain_layers(tmp_path):
    converters.convert_to_dir("pclucas14-pixelcnn_pp", PCLUCAS14 / "colour_published_layout.pth", tmp_path / "m")
    notes = json.loads((tmp_path / "m" / "card.json").read_text())["conversion"]
    assert "DataParallel's 'module.' prefix stripped" in notes
    assert any("layers plain" in n and "layers weight norm" in n for n in notes)


def test_image_option_sets_the_size_and_checks_the_channels(tmp_path):
    model = pixelar.convert("pclucas14-pixelcnn_pp", PCLUCAS14 / "grey_current.pth", image=pixelar.ImageSpec(1, 8, 12))
    assert model.image == pixelar.ImageSpec(1, 8, 12)
    assert model.log_prob(torch.zeros(2, 1, 8, 12, dtype=torch.long)).shape == (2,)
    with pytest.raises(ValueError, match="models 1-channel images of 256 values"):
        pixelar.convert("pclucas14-pixelcnn_pp", PCLUCAS14 / "grey_current.pth", image=pixelar.ImageSpec(3, 28, 28))
    with pytest.raises(ValueError, match="256 values"):
        pixelar.convert("pclucas14-pixelcnn_pp", PCLUCAS14 / "grey_current.pth", image=pixelar.ImageSpec(1, 28, 28, 16))
    with pytest.raises(ValueError, match="takes no option 'hps'"):
        pixelar.convert("pclucas14-pixelcnn_pp", PCLUCAS14 / "grey_current.pth", hps="cifar10")


class _Payload:
    def __reduce__(self):
        return (print, ("code ran",))


def test_a_file_that_would_run_code_is_refused(tmp_path):
    bad = tmp_path / "bad.pth"
    with open(bad, "wb") as f:
        pickle.dump({"u_init.conv.weight": _Payload()}, f)
    torch.save({"a": torch.zeros(1), "obj": _Payload()}, tmp_path / "bad2.pth")
    for path in (bad, tmp_path / "bad2.pth"):
        with pytest.raises(ValueError, match="never runs code from a checkpoint|not a readable torch checkpoint"):
            pixelar.convert("pclucas14-pixelcnn_pp", path)


def test_files_of_another_layout_are_refused_not_half_converted(tmp_path):
    state = torch.load(PCLUCAS14 / "grey_current.pth", weights_only=True)
    torch.save({**state, "extra.weight": torch.zeros(2)}, tmp_path / "extra.pth")
    with pytest.raises(ValueError, match=r"does not map \(extra.weight\)"):
        pixelar.convert("pclucas14-pixelcnn_pp", tmp_path / "extra.pth")
    del state["down_layers.2.ul_stream.0.nin_skip.lin_a.bias"]
    torch.save(state, tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="has no tensor 'down_layers.2.ul_stream.0.nin_skip.lin_a.bias'"):
        pixelar.convert("pclucas14-pixelcnn_pp", tmp_path / "missing.pth")
    torch.save({"encoder.weight": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="not a pclucas14/pixel-cnn-pp state dict"):
        pixelar.convert("pclucas14-pixelcnn_pp", tmp_path / "other.pth")
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="holds a list, not a dictionary"):
        pixelar.convert("pclucas14-pixelcnn_pp", tmp_path / "list.pth")
    (tmp_path / "text.pth").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="not a readable torch checkpoint"):
        pixelar.convert("pclucas14-pixelcnn_pp", tmp_path / "text.pth")
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        pixelar.convert("pclucas14-pixelcnn_pp", tmp_path / "none.pth")
    with pytest.raises(
        ValueError,
        match="unknown checkpoint source 'pixelcnn'; sources: openai-distaug, openai-vdvae, pclucas14-pixelcnn_pp",
    ):
        pixelar.convert("pixelcnn", tmp_path / "none.pth")


def test_cli_convert_then_eval_and_sample(tmp_path, capsys):
    out = tmp_path / "pcnn"
    assert main(["convert", "pclucas14-pixelcnn_pp", str(PCLUCAS14 / "grey_current.pth"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}: pixelcnn_pp" in printed and "weight norm folded" in printed
    assert main(["convert", "pclucas14-pixelcnn_pp", str(PCLUCAS14 / "grey_current.pth"), "--out", str(out)]) == 2
    assert "exists: pass --force to replace it" in capsys.readouterr().err
    args = ["eval", str(out), "--dataset", "fashion_mnist", "--subset", "4", "--json", "--no-progress"]
    assert main(args) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    x, want = _expected("grey")  # its first 4 images are the first 4 Fashion-MNIST test images
    assert res["bpd"] == pytest.approx(want[:4].sum() / (4 * 784 * np.log(2)), rel=1e-5)
    assert main(["sample", str(out), "--n", "2", "--out", str(tmp_path / "s.png"), "--no-progress"]) == 0
    assert main(["convert"]) == 0
    assert "pclucas14-pixelcnn_pp" in capsys.readouterr().out
    assert main(["convert", "pclucas14-pixelcnn_pp", str(PCLUCAS14 / "grey_current.pth")]) == 2
    assert "--out DIR is required" in capsys.readouterr().err
