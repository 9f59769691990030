"""The hf-imagegpt converter: a converted transformers ImageGPT gives transformers' own per-image loss.

Each test builds transformers' ImageGPTForCausalImageModeling at a small size with random weights (every
gain and bias moved away from its initialisation, weights large enough that a misplaced row changes the
loss), saves it as transformers does, with a preprocessor_config.json of random clusters in [-1, 1] as the
Hub's have, converts it and compares. transformers is a test dependency (the dev extra); without it these
tests skip.
"""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import pixelar
from pixelar import converters
from pixelar.cli import main
from pixelar.io import file_sha256

FASHION = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")
K = 512  # the Hub models' palette


def _transformers():
    return pytest.importorskip("transformers")


def make_hf_model(H: int, W: int, seed: int, biases: bool = True, n_layer: int = 2, n_embd: int = 32, n_head: int = 4):
    """A random transformers ImageGPT over H x W images of a 512-colour palette, in eval mode."""
    tf = _transformers()
    torch.manual_seed(seed)
    config = tf.ImageGPTConfig(
        vocab_size=K + 1, n_positions=H * W, n_embd=n_embd, n_layer=n_layer, n_head=n_head, tie_word_embeddings=False
    )
    model = tf.ImageGPTForCausalImageModeling(config).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name.endswith("ln_f.weight"):
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=g))  # RMS-norm gains
            elif name.endswith(".bias"):
                p.copy_(0.2 * torch.randn(p.shape, generator=g) if biases else torch.zeros(p.shape))
            elif p.dim() == 2:  # embeddings (rows, d), Conv1D (in, out), lm_head (k, d)
                fan_in = p.shape[0] if "transformer.h." in name else p.shape[1]
                scale = 0.5 if name.endswith("wte.weight") or name.endswith("wpe.weight") else 1.5 / math.sqrt(fan_in)
                p.copy_(scale * torch.randn(p.shape, generator=g))
    return model


def save_hf_dir(model, directory: Path, H: int, W: int, seed: int, form: str = "safetensors") -> Path:
    """Write `model` as a Hub model directory: config.json, the weights in `form` and preprocessor_config.json.

    form "safetensors": transformers' save_pretrained. "bin": pytorch_model.bin as transformers 4 wrote it
    (torch.save of the state dict, which transformers 5 no longer writes), with the attention's causal-mask
    buffers attn.bias and attn.masked_bias that it saved beside the weights (the Hub's files are of that era)."""
    model.save_pretrained(directory)
    if form == "bin":
        (directory / "model.safetensors").unlink()
        state = dict(model.state_dict())
        N = H * W
        for i in range(model.config.n_layer):
            state[f"transformer.h.{i}.attn.bias"] = torch.tril(torch.ones(N, N, dtype=torch.uint8)).view(1, 1, N, N)
            state[f"transformer.h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
        torch.save(state, directory / "pytorch_model.bin")
    g = torch.Generator().manual_seed(seed + 1)
    clusters = (torch.rand(K, 3, generator=g, dtype=torch.float64) * 2 - 1).float()
    pre = {
        "clusters": clusters.tolist(),
        "do_normalize": True,
        "do_resize": True,
        "resample": 2,
        "size": {"height": H, "width": W},
        "image_processor_type": "ImageGPTImageProcessor",
    }
    (directory / "preprocessor_config.json").write_text(json.dumps(pre))
    return directory


def hf_nats(model, directory: Path, images: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' tokens of uint8 images (B, H, W, 3) and its loss of them, nats per image (B,) float64: the
    model's logits given the SOS and the tokens before each one, cross-entropy summed over the image."""
    tf = _transformers()
    processor = tf.ImageGPTImageProcessorPil.from_pretrained(directory)
    ids = torch.as_tensor(
        np.stack(processor(images=list(images), do_resize=False, input_data_format="channels_last")["input_ids"])
    ).long()  # (B, N)
    sos = torch.full((len(ids), 1), model.config.vocab_size - 1)
    with torch.no_grad():
        logits = model(input_ids=torch.cat([sos, ids[:, :-1]], 1)).logits  # (B, N, K): position t predicts t
    ce = torch.nn.functional.cross_entropy(logits.double().transpose(1, 2), ids, reduction="none")  # (B, N)
    return ids, ce.sum(1)


def fashion_rgb(n: int, H: int, W: int) -> np.ndarray:
    """The first n Fashion-MNIST test images as RGB (grey repeated), cropped to H x W: uint8 (n, H, W, 3)."""
    if not FASHION.is_file():
        pytest.skip(f"Fashion-MNIST not found at {FASHION}")
    with gzip.open(FASHION) as f:
        x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)[:n, :H, :W]
    return np.repeat(x[..., None], 3, axis=3)


def random_rgb(n: int, H: int, W: int, seed: int) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, H, W, 3), generator=g, dtype=torch.uint8).numpy()


def pixelar_nats(model, images: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(images).permute(0, 3, 1, 2).long()
    tokens = model.encode(x)  # (B, 1, H, W)
    with torch.no_grad():
        return tokens.flatten(1), -model.log_prob(tokens).double()


@pytest.mark.parametrize("form", ["safetensors", "bin"])
def test_converted_imagegpt_gives_transformers_loss(tmp_path, form):
    H = W = 28
    hf = make_hf_model(H, W, seed=0)
    directory = save_hf_dir(hf, tmp_path / "igpt", H, W, seed=0, form=form)
    model = pixelar.convert("hf-imagegpt", directory)
    assert model.name == "image_gpt" and not model.training
    assert model.data_image == pixelar.ImageSpec(3, H, W, 256) and model.image == pixelar.ImageSpec(1, H, W, K)
    assert model.hparams["bias"] and model.hparams["float_centres"]
    for images in (fashion_rgb(6, H, W), random_rgb(6, H, W, seed=1)):
        want_tokens, want = hf_nats(hf, directory, images)
        tokens, got = pixelar_nats(model, images)
        # the palette's tokens are transformers' (the nearest float cluster; rounded centres would move 1-3%)
        assert torch.equal(tokens, want_tokens)
        # measured: 1.2e-7 relative at most (float32 on both sides); a misplaced row, the SOS taken from the
        # wrong row or an untransposed Conv1D moves the loss by far more than 1e-4
        rel = (got / want - 1).abs().max().item()
        assert rel < 1e-4, (got, want)
    assert want.min() > 0.5 * H * W and (want.max() - want.min()) > 1.0  # a loss with something to get wrong


def test_published_layout_zero_biases_and_mask_buffers(tmp_path):
    """The Hub's files: biases all zero, the old mask buffers beside the weights -> the released architecture."""
    H = W = 6
    hf = make_hf_model(H, W, seed=2, biases=False)
    directory = save_hf_dir(hf, tmp_path / "igpt", H, W, seed=2, form="bin")
    out = tmp_path / "converted"
    model = converters.convert_to_dir("hf-imagegpt", directory, out)
    assert not model.hparams["bias"]
    plain = pixelar.create_model("image_gpt", model.data_image, "paper", n_layer=2, d_model=32, n_head=4)
    assert model.num_parameters() == plain.num_parameters()  # no bias anywhere
    images = random_rgb(4, H, W, seed=3)
    want_tokens, want = hf_nats(hf, directory, images)
    tokens, got = pixelar_nats(model, images)
    assert torch.equal(tokens, want_tokens)
    assert (got / want - 1).abs().max().item() < 1e-4
    card = json.loads((out / "card.json").read_text())
    assert card["source"] == "hf-imagegpt" and card["source_file"] == "igpt" and card["name"] == "igpt"
    files = ("config.json", "preprocessor_config.json", "pytorch_model.bin")
    assert card["source_files"] == {f: file_sha256(directory / f) for f in files}
    assert card["sha256"] == file_sha256(out / "model.safetensors") and "source_sha256" not in card
    assert any("biases: all zero" in n for n in card["conversion"])
    assert any("4 stored causal-mask buffers" in n for n in card["conversion"])
    assert card["paper_bpd"].startswith("none in bits/dim")
    # the directory loads as any model: the float centres travel in model.safetensors
    loaded = pixelar.load_model(out)
    assert torch.equal(loaded.tokenizer.clusters, model.tokenizer.clusters)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).long()
    assert torch.equal(loaded.encode(x), model.encode(x))
    torch.testing.assert_close(loaded.log_prob(loaded.encode(x)), model.log_prob(model.encode(x)), rtol=0, atol=0)


def test_converted_imagegpt_cached_sampling_equals_naive(tmp_path):
    H = W = 4
    directory = save_hf_dir(make_hf_model(H, W, seed=4), tmp_path / "igpt", H, W, seed=4)
    model = pixelar.convert("hf-imagegpt", directory)
    draws = {m: model.sample(3, generator=torch.Generator().manual_seed(5), method=m) for m in ("cached", "naive")}
    assert torch.equal(draws["cached"], draws["naive"])
    colours = model.decode(draws["cached"])  # (3, 3, H, W): the clusters' rounded colours
    want = torch.round(127.5 * (model.tokenizer.clusters.double() + 1)).long()[draws["cached"][:, 0]]
    assert torch.equal(colours, want.permute(0, 3, 1, 2))


def _small_dir(tmp_path: Path, name: str = "igpt", **kw) -> Path:
    H = W = 4
    return save_hf_dir(make_hf_model(H, W, seed=6, **kw), tmp_path / name, H, W, seed=6)


def _edit_json(path: Path, **changes) -> None:
    obj = json.loads(path.read_text())
    obj.update(changes)
    path.write_text(json.dumps(obj))


def test_directories_of_another_layout_are_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    d = _small_dir(tmp_path)
    state = load_file(d / "model.safetensors")

    def refused(match: str, path: Path = d):
        with pytest.raises(ValueError, match=match):
            pixelar.convert("hf-imagegpt", path)

    save_file({**state, "extra.weight": torch.zeros(2)}, d / "model.safetensors")
    refused(r"does not map \(extra.weight\)")
    save_file({k: v for k, v in state.items() if k != "lm_head.weight"}, d / "model.safetensors")
    refused("no lm_head.weight .* not an ImageGPTForCausalImageModeling")
    save_file({k: v for k, v in state.items() if k != "transformer.h.1.mlp.c_fc.bias"}, d / "model.safetensors")
    refused("has no tensor 'transformer.h.1.mlp.c_fc.bias'")
    save_file(state, d / "model.safetensors")
    pixelar.convert("hf-imagegpt", d)  # whole again

    bad_mask = dict(state)
    bad_mask["transformer.h.0.attn.bias"] = torch.ones(1, 1, 16, 16, dtype=torch.bool)  # attends to the future
    save_file(bad_mask, d / "model.safetensors")
    refused(r"transformer.h.0.attn.bias is not the causal mask")
    save_file(state, d / "model.safetensors")

    for changes, match in (
        ({"model_type": "gpt2"}, "model_type 'gpt2', not an ImageGPT"),
        ({"activation_function": "gelu"}, "activation_function is 'gelu'"),
        ({"n_positions": 32}, r"images are 4x4 = 16 tokens, the model's n_positions is 32"),
        ({"n_layer": 3}, "hold 2 blocks; the config says n_layer 3"),
        ({"vocab_size": 257}, r"clusters have shape \(512, 3\); the model's vocabulary needs \(256, 3\)"),
        ({"n_inner": 64}, "n_inner is 64"),
    ):
        original = (d / "config.json").read_text()
        _edit_json(d / "config.json", **changes)
        refused(match)
        (d / "config.json").write_text(original)

    pre = json.loads((d / "preprocessor_config.json").read_text())
    for changes, match in (
        ({"clusters": (np.array(pre["clusters"]) * 127.5 + 127.5).tolist()}, "on the \\[-1, 1\\] scale"),
        ({"do_normalize": False}, "does not scale pixels to \\[-1, 1\\]"),
        ({"size": "big"}, "size must be an integer"),
        ({"clusters": None}, "has no clusters"),
    ):
        _edit_json(d / "preprocessor_config.json", **changes)
        refused(match)
        (d / "preprocessor_config.json").write_text(json.dumps(pre))

    refused("hf-imagegpt reads a model directory .* is a file: give its directory", d / "model.safetensors")
    with pytest.raises(ValueError, match="pclucas14-pixelcnn_pp reads one checkpoint file .* is a directory"):
        pixelar.convert("pclucas14-pixelcnn_pp", d)
    (d / "model.safetensors").unlink()
    refused("holds no ImageGPT weights")
    (d / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="model config not found"):
        pixelar.convert("hf-imagegpt", d)
    with pytest.raises(ValueError, match="takes no option 'image'"):
        pixelar.convert("hf-imagegpt", d, image=pixelar.ImageSpec(3, 4, 4))


def test_a_bin_that_would_run_code_is_refused(tmp_path):
    d = _small_dir(tmp_path)
    (d / "model.safetensors").unlink()

    class Payload:
        def __reduce__(self):
            return (print, ("code ran",))

    torch.save({"transformer.wte.weight": torch.zeros(1), "obj": Payload()}, d / "pytorch_model.bin")
    with pytest.raises(ValueError, match="never runs code from a checkpoint"):
        pixelar.convert("hf-imagegpt", d)


def test_sharded_safetensors_are_read_through_their_index(tmp_path):
    from safetensors.torch import load_file, save_file

    d = _small_dir(tmp_path)
    whole = pixelar.convert("hf-imagegpt", d)
    state = load_file(d / "model.safetensors")
    (d / "model.safetensors").unlink()
    names = sorted(state)
    parts = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, keys in parts.items():
        save_file({k: state[k] for k in keys}, d / file)
    index = {"metadata": {}, "weight_map": {k: f for f, keys in parts.items() for k in keys}}
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    model = pixelar.convert("hf-imagegpt", d)
    x = torch.randint(0, K, (2, 1, 4, 4))
    torch.testing.assert_close(model.log_prob(x), whole.log_prob(x), rtol=0, atol=0)
    (d / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="shard model-00002-of-00002.safetensors"):
        pixelar.convert("hf-imagegpt", d)


def test_cli_convert_then_sample_and_score(tmp_path, capsys):
    hf = make_hf_model(4, 4, seed=6)
    d = save_hf_dir(hf, tmp_path / "igpt", 4, 4, seed=6)
    out = tmp_path / "igpt-s"
    assert main(["convert", "hf-imagegpt", str(d), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}: image_gpt" in printed and "float clusters kept" in printed
    assert main(["sample", str(out), "--n", "2", "--out", str(tmp_path / "s.png"), "--no-progress"]) == 0
    image = random_rgb(1, 4, 4, seed=7)
    Image.fromarray(image[0]).save(tmp_path / "a.png")
    capsys.readouterr()
    assert main(["score", str(out), str(tmp_path / "a.png"), "--json"]) == 0
    scored = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    _, want = hf_nats(hf, d, image)  # the PNG's pixels, scored by transformers
    assert scored[0]["nats"] == pytest.approx(want.item(), rel=1e-4)
    assert main(["convert", "hf-imagegpt", str(d / "config.json"), "--out", str(tmp_path / "x")]) == 2
    assert "is a file: give its directory" in capsys.readouterr().err
    assert main(["convert"]) == 0
    assert "hf-imagegpt" in capsys.readouterr().out
