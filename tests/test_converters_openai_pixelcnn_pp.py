"""openai-pixelcnn_pp: the original TensorFlow PixelCNN++ checkpoints, read without TensorFlow, give the
per-image loss of the authors' own TensorFlow code.

The fixtures (tests/fixtures/make_openai_pixelcnn_pp.py) were written by running openai/pixel-cnn's
model_spec, initialisation, EMA, optimizer and loss under TensorFlow, and saved by tf.train.Saver: one in
the published params_cifar.ckpt's V1 format, one class-conditional in the V2 format."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tf_checkpoint_helpers import write_v2

import pixelar
from pixelar import converters
from pixelar.cli import main
from pixelar.converters.tf_checkpoint import CheckpointError, TFCheckpoint
from pixelar.io import file_sha256

FIXTURES = Path(__file__).parent / "fixtures" / "openai_pixelcnn_pp"
V1 = FIXTURES / "unconditional_v1.ckpt"
V2 = FIXTURES / "conditional_v2.ckpt.index"
EMA = "/ExponentialMovingAverage"


def _expected(name: str):
    e = np.load(FIXTURES / "expected.npz")
    labels = torch.from_numpy(e[f"{name}_labels"]) if f"{name}_labels" in e else None
    return torch.from_numpy(e[f"{name}_images"]).long(), labels, e[f"{name}_nats"]


def _nats(model, x, labels=None) -> np.ndarray:
    with torch.no_grad():
        return -model.log_prob(x, cond=labels).double().numpy()


@pytest.mark.parametrize("name, file, size", [("unconditional", V1, 32), ("conditional", V2, 16)])
def test_converted_checkpoints_give_the_authors_tensorflow_loss(name, file, size):
    model = pixelar.convert("openai-pixelcnn_pp", file, image=pixelar.ImageSpec(3, size, size))
    x, labels, want = _expected(name)
    got = _nats(model, x, labels)
    # measured: 1.0e-6 (V1) and 2.5e-6 (V2) relative, float32 TensorFlow against float32 torch
    np.testing.assert_allclose(got, want, rtol=1e-4)
    assert np.abs(got / want - 1).max() < 2e-5


def test_the_reader_reads_tensorflows_own_files():
    for path, fmt in ((V1, "V1"), (V2, "V2")):
        ckpt = TFCheckpoint(path)
        assert ckpt.format == fmt
        names = set(ckpt)
        weights = {k for k in names if k.startswith("model/") and not k.endswith(EMA)}
        assert weights and {k + EMA for k in weights} == {k for k in names if k.endswith(EMA)}
        assert any(k.startswith("Variable") for k in names)  # their optimizer's unnamed variables
        for k in list(weights)[:40]:
            t = ckpt[k]
            assert tuple(t.shape) == ckpt.shape(k) and t.dtype == torch.float32
            # the fixtures' EMA copies differ from the training weights (else EMA would not be tested)
            assert not torch.equal(t, ckpt[k + EMA])
    prefix = str(V2)[: -len(".index")]
    same = TFCheckpoint(prefix)  # the prefix, or its data file, name the same checkpoint
    assert torch.equal(same["model/dense_0/V"], TFCheckpoint(prefix + ".data-00000-of-00001")["model/dense_0/V"])


def test_the_test_writer_writes_what_the_reader_reads_as_tensorflow_wrote_it(tmp_path):
    ckpt = TFCheckpoint(V1)
    tensors = {k: ckpt[k].numpy() for k in ckpt}
    write_v2(tmp_path / "copy", tensors)
    x, _, want = _expected("unconditional")
    copy = pixelar.convert("openai-pixelcnn_pp", tmp_path / "copy.index")
    np.testing.assert_allclose(_nats(copy, x), want, rtol=1e-4)
    tensors["counter"] = np.array(7, np.int64)
    tensors["half"] = np.array([[1.5, -2.0]], np.float16)
    tensors["ints"] = np.array([-3, 4], np.int32)
    write_v2(tmp_path / "more", tensors)
    copy = TFCheckpoint(tmp_path / "more.index")
    assert set(copy) == set(tensors)
    for k, v in tensors.items():
        assert copy.dtype(k) == v.dtype and np.array_equal(copy[k].numpy(), v)


def _tensors(path=V1) -> dict[str, np.ndarray]:
    ckpt = TFCheckpoint(path)
    return {k: ckpt[k].numpy() for k in ckpt}


def test_the_ema_copies_are_converted_and_a_file_without_them_converts_its_weights(tmp_path):
    x, _, want = _expected("unconditional")
    tensors = _tensors()
    ema_as_weights = {k[: -len(EMA)]: v for k, v in tensors.items() if k.endswith(EMA)}
    write_v2(tmp_path / "ema", ema_as_weights)
    model = converters.convert_to_dir("openai-pixelcnn_pp", tmp_path / "ema.index", tmp_path / "m1")
    np.testing.assert_allclose(_nats(model, x), want, rtol=1e-4)
    notes = json.loads((tmp_path / "m1" / "card.json").read_text())["conversion"]
    assert "the file has no EMA copies: its training weights converted" in notes
    training = {k: v for k, v in tensors.items() if k.startswith("model/") and not k.endswith(EMA)}
    write_v2(tmp_path / "training", training)
    got = _nats(pixelar.convert("openai-pixelcnn_pp", tmp_path / "training.index"), x)
    assert np.abs(got / want - 1).min() > 1e-3  # the training weights are another model


def test_convert_to_dir_card_records_the_file_and_what_was_left_out(tmp_path):
    model = converters.convert_to_dir("openai-pixelcnn_pp", V1, tmp_path / "pcnn")
    card = json.loads((tmp_path / "pcnn" / "card.json").read_text())
    assert card["source"] == "openai-pixelcnn_pp" and card["source_sha256"] == file_sha256(V1)
    assert card["paper_bpd"].startswith("2.92") and card["num_parameters"] == model.num_parameters()
    assert card["image"] == {"channels": 3, "height": 32, "width": 32, "num_values": 256}
    notes = "\n".join(card["conversion"])
    assert "TensorFlow V1 checkpoint" in notes and "EMA (Polyak-averaged) weights" in notes
    n_unnamed = sum(1 for k in TFCheckpoint(V1) if k.startswith("Variable"))
    assert f"{n_unnamed} unnamed variables (adam_updates' moments and step) left out" in notes
    v2 = converters.convert_to_dir("openai-pixelcnn_pp", V2, tmp_path / "cond", image=pixelar.ImageSpec(3, 16, 16))
    assert v2.num_classes == 10
    notes = json.loads((tmp_path / "cond" / "card.json").read_text())["conversion"]
    data = V2.with_name("conditional_v2.ckpt.data-00000-of-00001")
    assert any(f"data file {data.name} sha256 {file_sha256(data)}" in n for n in notes)
    assert any("conditioned on 10 classes" in n for n in notes)


def test_other_layouts_and_models_are_refused_not_half_converted(tmp_path):
    base = _tensors()

    def refused(tensors, match):
        write_v2(tmp_path / "bad", tensors)
        with pytest.raises(ValueError, match=match):
            pixelar.convert("openai-pixelcnn_pp", tmp_path / "bad.index")

    refused({**base, "model/extra/V": np.zeros(3, np.float32)}, r"does not map \(model/extra/V\)")
    refused({k: v for k, v in base.items() if k != "model/dense_0/b" + EMA}, "has no tensor 'model/dense_0/b/Expon")
    refused({"model/other/V": np.zeros(1, np.float32)}, "not an openai/pixel-cnn checkpoint")
    last_dense = max(int(k.split("/")[1].split("_")[1]) for k in base if k.startswith("model/dense_"))
    fewer = {k: v for k, v in base.items() if not k.startswith(f"model/dense_{last_dense}/")}
    refused(fewer, "not those of model_spec's likelihood model")  # e.g. an --energy_distance network
    grey = dict(base, **{"model/conv2d_0/V": np.zeros((2, 3, 2, 8), np.float32)})
    refused(grey, "reads 2 channels; openai/pixel-cnn models RGB")
    elu = dict(base, **{"model/conv2d_3/V": np.zeros((2, 3, 8, 8), np.float32)})
    refused(elu, "resnet_nonlinearity elu or relu")
    with pytest.raises(ValueError, match="3-channel images of 256 values"):
        pixelar.convert("openai-pixelcnn_pp", V1, image=pixelar.ImageSpec(1, 32, 32))


def test_files_that_are_no_tensorflow_checkpoint_get_a_clear_error(tmp_path):
    (tmp_path / "text.ckpt").write_text("not a checkpoint at all, but long enough to have a footer's 48 bytes")
    with pytest.raises(CheckpointError, match="is not a TensorFlow checkpoint table"):
        pixelar.convert("openai-pixelcnn_pp", tmp_path / "text.ckpt")
    (tmp_path / "empty.ckpt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="is not a TensorFlow checkpoint table"):
        pixelar.convert("openai-pixelcnn_pp", tmp_path / "empty.ckpt")
    whole = V1.read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(whole[: len(whole) // 2] + whole[-48:])  # a footer, the middle gone
    with pytest.raises(CheckpointError, match="truncated or damaged|damaged"):
        pixelar.convert("openai-pixelcnn_pp", tmp_path / "cut.ckpt")
    write_v2(tmp_path / "lonely", _tensors())
    (tmp_path / "lonely.data-00000-of-00001").unlink()
    with pytest.raises(CheckpointError, match="its data file .*lonely.data-00000-of-00001 is missing"):
        pixelar.convert("openai-pixelcnn_pp", tmp_path / "lonely.index")
    write_v2(tmp_path / "short", _tensors())
    data = tmp_path / "short.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="bytes at .* do not hold"):
        pixelar.convert("openai-pixelcnn_pp", tmp_path / "short.index")


def test_cli_convert_then_load(tmp_path, capsys):
    out = tmp_path / "pcnn"
    assert main(["convert", "openai-pixelcnn_pp", str(V1), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}: pixelcnn_pp" in printed and "TensorFlow V1 checkpoint" in printed
    x, _, want = _expected("unconditional")
    model = pixelar.load_model(out)
    np.testing.assert_allclose(_nats(model, x), want, rtol=1e-4)
    assert main(["convert"]) == 0
    assert "openai-pixelcnn_pp: PixelCNN++" in capsys.readouterr().out
