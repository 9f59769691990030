"""`hf-imagegpt`: a Hugging Face ImageGPT model directory (openai/imagegpt-small, -medium, -large).

The Hub's three iGPT models are the released TF checkpoints (openai/image-gpt) converted to transformers'
ImageGPTForCausalImageModeling and written by its save_pretrained. The directory holds:

    config.json               n_layer, n_embd, n_head, n_positions (= H*W), vocab_size (k colours + the SOS)
    preprocessor_config.json  clusters: the k colour centres (k, 3) on the [-1, 1] scale; size: H x W
    model.safetensors         or pytorch_model.bin (torch.save of the state dict: read with weights_only=True),
                              or a sharded checkpoint's *.index.json and its shards

Its tensors -> pixelar's `image_gpt` (size paper, overridden):

    transformer.wte.weight (k + 1, d)     rows 0..k-1 -> value_emb.weight; row k, the SOS token -> start
    transformer.wpe.weight (H*W, d)       -> pos_emb.weight (position t reads token t-1, the SOS at t = 0)
    transformer.h.L.ln_1, ln_2            -> blocks.L.ln1, ln2 (the same RMS norm: no mean, no bias)
    transformer.h.L.attn.c_attn           -> blocks.L.attn.qkv (Conv1D weights are (in, out): transposed;
                                             [q | k | v] with each head's columns contiguous, as ours)
    transformer.h.L.attn.c_proj           -> blocks.L.attn.proj
    transformer.h.L.mlp.c_fc, c_proj      -> blocks.L.ff1, ff2
    transformer.ln_f.weight               -> ln_f.weight
    lm_head.weight (k, d)                 -> head.weight (untied: the released `wtet`)

Biases: transformers' Conv1D layers have them, the released model has none (the Hub's files hold zeros).
All zero -> bias=False, the released architecture; else (a model trained with transformers) bias=True, the
head's bias zero (lm_head has none). Files written by older transformers also hold each attention's causal
mask (attn.bias, a (1, 1, N, N) lower triangle) and attn.masked_bias: buffers, not weights; the mask is
checked to be causal and both are dropped.

The palette: pixels become the nearest of the k float clusters (transformers' processor and the released
code), so the model keeps them (`float_centres=True`); tokens decode to round(127.5 * (c + 1)) as there.
Rounding the centres for encoding too would change the tokens of 0.5% to 3.3% of pixels (models/palette.py).
transformers' processor also resizes images to H x W first; pixelar takes H x W images as they are.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..io import read_json, read_tensors
from ..models import create_model
from ..types import ImageSpec
from . import register_source
from .checkpoint import Tensors, load_weights, read_torch_state

CONFIG, PREPROCESSOR = "config.json", "preprocessor_config.json"
WEIGHTS = ("model.safetensors", "pytorch_model.bin")  # transformers prefers safetensors where both exist
INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")

# config values the conversion relies on -> the value it needs (transformers' default, iGPT's)
FIXED = {
    "activation_function": "quick_gelu",  # x * sigmoid(1.702 x)
    "layer_norm_epsilon": 1e-5,
    "scale_attn_weights": True,  # 1 / sqrt(d_head)
    "scale_attn_by_inverse_layer_idx": False,
    "add_cross_attention": False,
}


def weight_files(directory: Path) -> list[Path]:
    """The weight files transformers would read in `directory`: one file, or an index and its shards."""
    for name in WEIGHTS:
        if (directory / name).is_file():
            return [directory / name]
    for name in INDEXES:
        if (directory / name).is_file():
            index = read_json(directory / name, "weights index")
            shards = index.get("weight_map")
            if not isinstance(shards, dict) or not shards:
                raise ValueError(f"weights index {directory / name} has no weight_map of tensor -> shard file")
            files = sorted(set(shards.values()))
            bad = [f for f in files if not isinstance(f, str) or Path(f).name != f]
            if bad:
                raise ValueError(f"weights index {directory / name} names shard {bad[0]!r}: not a file name")
            return [directory / name, *(directory / f for f in files)]
    present = ", ".join(sorted(p.name for p in directory.iterdir())[:8]) or "nothing"
    raise ValueError(
        f"{directory} holds no ImageGPT weights (model.safetensors, pytorch_model.bin or a sharded checkpoint's "
        f"index); it holds {present}"
    )


def source_files(directory: Path) -> list[Path]:
    """Every file the conversion reads (for the card)."""
    return [directory / CONFIG, directory / PREPROCESSOR, *weight_files(directory)]


def _read_weights(directory: Path) -> tuple[dict, list[str]]:
    """The state dict of the directory's weight files (shards merged) and their names."""
    files = weight_files(directory)
    shards = files[1:] if files[0].name in INDEXES else files
    state: dict = {}
    for f in shards:
        if not f.is_file():
            raise FileNotFoundError(f"shard {f.name} of {files[0]} not found in {directory}")
        part = read_tensors(f, "weights file") if f.suffix == ".safetensors" else read_torch_state(f)
        state.update(part)
    if files[0].name in INDEXES:
        listed = set(read_json(files[0], "weights index")["weight_map"])
        if listed != set(state):
            odd = sorted(listed ^ set(state))[:3]
            raise ValueError(f"weights index {files[0]} does not match its shards (e.g. {', '.join(odd)})")
    return state, [f.name for f in files]


def _config(directory: Path) -> dict:
    cfg = read_json(directory / CONFIG, "model config")
    where = f"model config {directory / CONFIG}"
    if cfg.get("model_type") != "imagegpt":
        raise ValueError(f"{where} is of model_type {cfg.get('model_type')!r}, not an ImageGPT ('imagegpt')")
    for key in ("n_layer", "n_embd", "n_head", "n_positions", "vocab_size"):
        v = cfg.get(key)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{where}: {key} must be a positive integer, got {v!r}")
    for key, want in FIXED.items():
        have = cfg.get(key, want)  # absent: transformers' default, which is iGPT's
        if have != want:
            raise ValueError(f"{where}: {key} is {have!r}; pixelar's image_gpt has {want!r} (iGPT's) only")
    d = cfg["n_embd"]
    if cfg.get("n_inner") not in (None, 4 * d):
        raise ValueError(f"{where}: n_inner is {cfg['n_inner']}; pixelar's image_gpt's MLP is 4 * n_embd = {4 * d}")
    if d % cfg["n_head"]:
        raise ValueError(f"{where}: n_embd {d} is not divisible by n_head {cfg['n_head']}")
    return cfg


def _preprocessor(directory: Path, k: int) -> tuple[torch.Tensor, int, int]:
    """The clusters (k, 3) float64 on the [-1, 1] scale and the image size (H, W)."""
    pre = read_json(directory / PREPROCESSOR, "preprocessor config")
    where = f"preprocessor config {directory / PREPROCESSOR}"
    if not pre.get("do_color_quantize", True):
        raise ValueError(f"{where} has do_color_quantize false: an ImageGPT over palette tokens needs it")
    # the clusters are on the [-1, 1] scale of x / 127.5 - 1: rescaling by 1/255, then normalising by 0.5, 0.5
    if not pre.get("do_normalize", True) or any(
        pre.get(key, [0.5] * 3) not in ([0.5] * 3, 0.5) for key in ("image_mean", "image_std")
    ):
        raise ValueError(f"{where} does not scale pixels to [-1, 1] (do_normalize, mean and std 0.5), as iGPT does")
    try:
        clusters = torch.tensor(pre["clusters"], dtype=torch.float64)
    except (KeyError, TypeError, ValueError, RuntimeError):
        raise ValueError(f"{where} has no clusters: a list of {k} [r, g, b] centres") from None
    if tuple(clusters.shape) != (k, 3):
        raise ValueError(f"{where}: clusters have shape {tuple(clusters.shape)}; the model's vocabulary needs ({k}, 3)")
    if not bool(torch.isfinite(clusters).all()) or float(clusters.abs().max()) > 1 + 1e-3:
        raise ValueError(f"{where}: clusters must be finite colour centres on the [-1, 1] scale")
    size = pre.get("size")
    if isinstance(size, int) and not isinstance(size, bool):
        H = W = size
    elif isinstance(size, dict) and set(size) == {"height", "width"}:
        H, W = size["height"], size["width"]
    else:
        raise ValueError(f"{where}: size must be an integer or {{'height': H, 'width': W}}, got {size!r}")
    if not all(isinstance(v, int) and v >= 1 for v in (H, W)):
        raise ValueError(f"{where}: size must be positive integers, got {size!r}")
    return clusters, H, W


@register_source(
    "hf-imagegpt",
    paper='Image GPT (Chen, Radford, Child, Wu, Jun, Luan, Sutskever 2020, "Generative Pretraining from Pixels"), '
    "the released checkpoints as converted to transformers' ImageGPT",
    paper_bpd="none in bits/dim (the 9-bit palette is lossy): 2.0895 / 2.0614 / 2.0466 nats per token for "
    "iGPT-S / M / L on ImageNet 32x32 (the released code's README; its own centre-cropped 32x32 ImageNet, in the "
    "palette: neither downsampled ImageNet of pixelar's datasets)",
    reads="a transformers ImageGPT model directory: config.json, preprocessor_config.json (the colour clusters) "
    "and model.safetensors or pytorch_model.bin",
    download="https://huggingface.co/openai/imagegpt-small (also openai/imagegpt-medium, openai/imagegpt-large)",
    options={},
    files=source_files,
)
def convert(directory: Path):
    cfg = _config(directory)
    L, d, n_head, N = cfg["n_layer"], cfg["n_embd"], cfg["n_head"], cfg["n_positions"]
    k = cfg["vocab_size"] - 1  # the last token is the SOS
    if k < 2:
        raise ValueError(f"model config {directory / CONFIG}: vocab_size {k + 1} leaves fewer than 2 colours")
    clusters, H, W = _preprocessor(directory, k)
    if H * W != N:
        raise ValueError(
            f"{directory}: the preprocessor's images are {H}x{W} = {H * W} tokens, the model's n_positions is {N}"
        )
    state, read = _read_weights(directory)
    what = f"weights in {directory} ({read[0]})"
    t = Tensors(state, what)
    if not t.has("lm_head.weight"):
        found = "transformer.wte.weight" if t.has("transformer.wte.weight") else next(iter(state), "nothing")
        raise ValueError(
            f"{what} have no lm_head.weight (first tensor: {found}): they are not an "
            "ImageGPTForCausalImageModeling (a model without the next-pixel head gives no likelihood)"
        )
    if t.count("transformer.h.{}.") != L:
        raise ValueError(f"{what} hold {t.count('transformer.h.{}.')} blocks; the config says n_layer {L}")

    weights, biases, masks = {}, [], 0
    wte = t.take("transformer.wte.weight")  # (k + 1, d)
    if tuple(wte.shape) != (k + 1, d):
        raise ValueError(f"{what}: transformer.wte.weight has shape {tuple(wte.shape)}, the config's is {(k + 1, d)}")
    weights["value_emb.weight"], weights["start"] = wte[:k], wte[k]
    weights["pos_emb.weight"] = t.take("transformer.wpe.weight")
    for i in range(L):
        src, dst = f"transformer.h.{i}", f"blocks.{i}"
        weights[f"{dst}.ln1.weight"] = t.take(f"{src}.ln_1.weight")
        weights[f"{dst}.ln2.weight"] = t.take(f"{src}.ln_2.weight")
        for theirs, ours in (("attn.c_attn", "attn.qkv"), ("attn.c_proj", "attn.proj"), ("mlp.c_fc", "ff1")):
            weights[f"{dst}.{ours}.weight"] = t.take(f"{src}.{theirs}.weight").T  # Conv1D (in, out) -> (out, in)
            biases.append((f"{dst}.{ours}.bias", t.take(f"{src}.{theirs}.bias")))
        weights[f"{dst}.ff2.weight"] = t.take(f"{src}.mlp.c_proj.weight").T
        biases.append((f"{dst}.ff2.bias", t.take(f"{src}.mlp.c_proj.bias")))
        masks += _drop_mask_buffers(t, f"{src}.attn", N, what)
    weights["ln_f.weight"] = t.take("transformer.ln_f.weight")
    weights["head.weight"] = t.take("lm_head.weight")
    t.finish()

    has_bias = any(bool(b.any()) for _, b in biases)
    model = create_model(
        "image_gpt",
        ImageSpec(3, H, W, 256),
        size="paper",
        n_layer=L,
        d_model=d,
        n_head=n_head,
        palette=k,
        dropout=0.0,  # the paper's; the config's *_pdrop act only in training
        bias=has_bias,
        float_centres=True,
    )
    if has_bias:
        weights.update(biases)
        weights["head.bias"] = torch.zeros(k)  # lm_head has no bias
    model.tokenizer.set_centres(clusters)
    weights.update({f"tokenizer.{n}": v for n, v in model.tokenizer.state_dict().items()})
    load_weights(model, weights, what)

    dtypes = sorted({str(v.dtype).replace("torch.", "") for v in state.values() if v.is_floating_point()})
    notes = [
        f"iGPT of {L} layers, width {d}, {n_head} heads, {k}-colour palette; images 3x{H}x{W} ({N} tokens)",
        f"read {', '.join(read)} ({'/'.join(dtypes)}); Conv1D weights transposed; wte's last row (the SOS token) "
        "is the start token, lm_head the untied output head",
        "biases: nonzero, kept (bias=True; the head's, absent in transformers, zero)"
        if has_bias
        else "biases: all zero (as the released model, which has none): left out (bias=False)",
        *([f"{masks} stored causal-mask buffers (attn.bias / attn.masked_bias) checked and dropped"] if masks else []),
        f"palette: the {k} float clusters kept (float_centres): pixels are encoded to the nearest of them, as "
        "transformers' processor does, and tokens decode to round(127.5 * (c + 1))",
        f"transformers' processor resizes images to {H}x{W} first; pixelar takes {H}x{W} images as they are",
        "dropout 0 (the paper's; the config's dropout rates act only in training)",
    ]
    return model, notes


def _drop_mask_buffers(t: Tensors, prefix: str, N: int, what: str) -> int:
    """Take an attention's stored causal mask (attn.bias) and mask value (attn.masked_bias) where the file has
    them (older transformers saved these buffers); a mask that is not causal is refused. -> buffers taken."""
    taken = 0
    if t.has(f"{prefix}.bias"):
        mask = t.take(f"{prefix}.bias")
        n = mask.shape[-1] if mask.dim() == 4 else 0
        causal = mask.dim() == 4 and tuple(mask.shape[:3]) == (1, 1, n) and n >= N
        if not causal or not torch.equal(mask[0, 0, :N, :N].bool(), torch.ones(N, N, dtype=torch.bool).tril()):
            raise ValueError(f"{what}: {prefix}.bias is not the causal mask (a lower triangle of ones)")
        taken += 1
    if t.has(f"{prefix}.masked_bias"):
        value = t.take(f"{prefix}.masked_bias")
        if value.numel() != 1 or not float(value) < 0:
            raise ValueError(f"{what}: {prefix}.masked_bias is not a mask value (one large negative number)")
        taken += 1
    return taken
