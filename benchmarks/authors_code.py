"""The papers' authors' code, run from a checkout of their public repository, to make reference outputs and
random checkpoints in their layouts (test fixtures, conversion benchmarks). Nothing of theirs is copied: the
checkout's path is given on the command line, and its modules are loaded from there.

    git clone https://github.com/pclucas14/pixel-cnn-pp /tmp/pixel-cnn-pp
    git clone https://github.com/openai/vdvae /tmp/vdvae

openai/distribution_augmentation cannot run on a CPU (TensorFlow 1 and blocksparse's GPU kernels): for it
there is only its save format, transcribed from its train.py and utils.save_params (`distaug_variables`,
`write_distaug_npz`), which writes random files of its variable names, shapes and dtypes.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.machinery
import math
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn


def load_flat_modules(path: Path, names: list[str], fixes: dict[str, str] | None = None) -> dict[str, types.ModuleType]:
    """Modules of a checkout whose files import each other flatly (`from utils import *`), loaded in the order
    given; `fixes` replaces text in their source as it is read (Python 2 statements), never on disk."""
    modules = {}
    for name in names:
        file = Path(path) / f"{name}.py"
        source = file.read_text()
        for old, new in (fixes or {}).items():
            source = source.replace(old, new)
        module = types.ModuleType(name)
        module.__file__ = str(file)
        sys.modules[name] = module  # the next module's `from NAME import *` finds this one
        exec(compile(source, str(file), "exec"), module.__dict__)
        modules[name] = module
    return modules


def pclucas14(path: Path):
    """(model module, utils module) of pclucas14/pixel-cnn-pp, runnable on a CPU. Its utils.py has one Python 2
    statement (`print e`, in a checkpoint loader not used here), read as print(e); its loss puts a buffer on
    the GPU with .cuda(), made a no-op."""
    torch.Tensor.cuda = lambda self, *a, **k: self
    m = load_flat_modules(path, ["utils", "layers", "model"], {"print e\n": "print(e)\n"})
    return m["model"], m["utils"]


def perturb(model: nn.Module, gen: torch.Generator) -> None:
    """Move every weight-norm gain and bias away from its initial value (a test must not pass because the
    values the converter reads at a wrong place happen to be equal at initialisation)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("weight_g") or name.endswith("original0"):
                p.mul_(0.5 + torch.rand(p.shape, generator=gen))
            elif name.endswith("bias"):
                p.add_(0.2 * torch.randn(p.shape, generator=gen))


def pclucas14_published_layout(net: nn.Module) -> dict:
    """The state dict of the port's model `net` as the published CIFAR-10 file stores it: inside DataParallel
    ("module." keys), plain weights on the shifted convolutions (their weight norm removed: the file predates
    the port's 2019 fix), weight_g/weight_v on the nin layers and transposed convolutions."""
    for m in net.modules():
        if type(m).__name__ in ("down_shifted_conv2d", "down_right_shifted_conv2d"):
            nn.utils.remove_weight_norm(m.conv)
    return nn.DataParallel(net).state_dict()


def _placeholder(attr: str):
    """What a stubbed module gives for a name imported from it (ImageFolder, train_test_split, ...)."""
    if attr.startswith("__"):
        raise AttributeError(attr)
    return object


def stub_missing(*names: str) -> None:
    """Empty modules for what a checkout imports at its top but the code run here does not use, where missing."""
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError:
            module = types.ModuleType(name)
            module.__spec__ = importlib.machinery.ModuleSpec(name, None)  # what importlib asks a module for
            module.__getattr__ = _placeholder
            sys.modules[name] = module


def vdvae(path: Path):
    """(data, hps, vae) modules of openai/vdvae, runnable on a CPU. They are imported from the checkout (they
    import each other by their flat names, and torch.jit.script reads their source files); data.py's imports
    of torchvision and sklearn, unused here, are stubbed where missing; its .cuda() calls are made no-ops."""
    sys.path.insert(0, str(Path(path).resolve()))
    stub_missing("torchvision", "torchvision.datasets", "torchvision.transforms", "sklearn", "sklearn.model_selection")
    torch.Tensor.cuda = lambda self, *a, **k: self
    return tuple(importlib.import_module(name) for name in ("data", "hps", "vae"))


def vdvae_hyperparameters(hps, shape: dict):
    """openai/vdvae's Hyperparams: its argument defaults (as train.py starts from), then `shape` over them."""
    H = hps.Hyperparams()
    H.update(vars(hps.add_vae_arguments(argparse.ArgumentParser()).parse_args([])))
    H.update(shape)
    return H


def vdvae_preprocess(data, H, nhwc) -> tuple[torch.Tensor, torch.Tensor]:
    """(encoder input, loss target) of uint8 images (N, H, W, C) by openai/vdvae's data.py for H.dataset: its
    set_up_data with the dataset's loader replaced by these images (H keeps its own image_size)."""
    size = H.image_size
    if H.dataset == "cifar10":
        data.cifar10 = lambda data_root, one_hot: ((nhwc, None),) * 3  # (images, labels) per split
    else:
        setattr(data, H.dataset, lambda data_root: (nhwc,) * 3)
    H, _, _, preprocess = data.set_up_data(H)  # sets image_size from the dataset
    H.image_size = size or H.image_size
    return preprocess([torch.as_tensor(nhwc)])


def perturb_all(model: nn.Module, gen: torch.Generator, scale: float) -> None:
    """Move every parameter by scale * N(0, 1) noise (zero-initialised biases, outputs and constants included)."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))


# ----- openai/distribution_augmentation: its .npz format (the code itself needs TF1 and GPU kernels) ------------
# its augmentation types in the order of train.py's H.self_gen_types: (start-token variable, hyperparameter,
# number of tokens)
DISTAUG_TYPES = (
    ("sos_rot", "use_rotation", 4),
    ("sos_c", "use_color", 6),
    ("sos_tr", "use_transposition", 2),
    ("sos_rev", "use_reverse", 2),
    ("sos_js", "use_jigsaw", 24),
)


def distaug_variables(h: dict, rows: int, cols: int, chans: int) -> list[tuple[str, tuple[int, ...]]]:
    """The trainable variables (name without ":0", shape) that train.py's model() creates for the hyperparameters
    h (their names: n_embd, n_layer, qk_ratio, mlp_multiple, use_rotation, ...; n_vocab 256) on images of
    rows x cols x chans: stack() (we, pos_emb_I, sos_token/...), each layer's dense or sparse attention and
    post_attention (norm g/b, linear w/b), final_norm and get_logits."""
    d, n_vocab = h["n_embd"], 256
    qk, ff = int(d * h.get("qk_ratio", 1.0)), int(d * h.get("mlp_multiple", 4.0))
    out = [("model/we", (n_vocab, d))]
    out += [(f"model/pos_emb_{i}", (n, d)) for i, n in enumerate((rows, cols, chans))]
    used = [(sos, n) for sos, key, n in DISTAUG_TYPES if h.get(key)]
    if used and not h.get("use_unconditional_augmentation"):
        out += [(f"model/sos_token/{sos}", (n, d)) for sos, n in used]
    else:
        out.append(("model/sos_token/sos", (1, 1, d)))
    for i in range(h["n_layer"]):
        p = f"model/h{i}"
        out += [(f"{p}/attn_input/g", (d,)), (f"{p}/attn_input/b", (d,))]
        for name, width in (("q_proj", qk), ("k_proj", qk), ("v_proj", d), ("post_proj", d)):
            out += [(f"{p}/{name}/w", (d, width)), (f"{p}/{name}/b", (width,))]
        out += [(f"{p}/mlp/g", (d,)), (f"{p}/mlp/b", (d,))]
        out += [(f"{p}/mlp_proj1/w", (d, ff)), (f"{p}/mlp_proj1/b", (ff,))]
        out += [(f"{p}/mlp_proj2/w", (ff, d)), (f"{p}/mlp_proj2/b", (d,))]
    out += [("model/final_norm/g", (d,)), ("model/final_norm/b", (d,)), ("model/gen_logits/logits_proj", (d, n_vocab))]
    return out


def _distaug_value(name: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Random float32 values of a plausible scale for variable `name`: gains about 1, biases about 0.3,
    embeddings about 1, weights about 1.5 / sqrt(fan in) (attention neither uniform nor one-hot)."""
    if name.endswith("/g"):
        v = 1.0 + 0.3 * rng.standard_normal(shape)
    elif name.endswith("/b"):
        v = 0.3 * rng.standard_normal(shape)
    elif name.endswith("/w") or name.endswith("logits_proj"):
        v = 1.5 / math.sqrt(shape[0]) * rng.standard_normal(shape)
    else:  # we, pos_emb_I, sos_token/...
        v = rng.standard_normal(shape)
    return v.astype(np.float32)


def write_distaug_npz(path, h: dict, rows: int, cols: int, chans: int, seed: int, ema: bool = True) -> None:
    """A random file in the layout utils.save_params writes for hyperparameters h: np.savez of every global
    variable by its TF name (":0"): each weight (float32, the f32_storage_getter), with ema its moving average
    X/Ema/ema:0 (blocksparse's Ema, float32; the raw weight then differs from it by noise), Adam's two moments
    X/Adam:0 and X/Adam_1:0 (float16 for tensors of >= 8192 entries, as fp16_mean_var stores them), the
    beta powers under adam_beta/ and the training loop's counters. Written one array at a time (as np.savez
    does it, so that a 150M-parameter file needs no copy of itself in memory)."""
    rng = np.random.default_rng(seed)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:

        def put(name: str, arr: np.ndarray) -> None:
            with zf.open(f"{name}.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asanyarray(arr), allow_pickle=False)

        for name, shape in distaug_variables(h, rows, cols, chans):
            value = _distaug_value(name, shape, rng)
            if ema:
                raw = value + (0.5 * value.std() + 0.1) * rng.standard_normal(shape).astype(np.float32)
                put(f"{name}:0", raw)
                put(f"{name}/Ema/ema:0", value)
            else:
                put(f"{name}:0", value)
            dtype = np.float16 if math.prod(shape) >= 8 * 1024 else np.float32
            put(f"{name}/Adam:0", (1e-3 * rng.standard_normal(shape)).astype(dtype))
            put(f"{name}/Adam_1:0", (1e-6 * rng.random(shape)).astype(dtype))
        for name, value in (
            ("adam_beta/beta1_power:0", np.float32(0.9**1000)),
            ("adam_beta/beta2_power:0", np.float32(0.999**1000)),
            ("global_step:0", np.int64(1000)),
            ("num_epochs:0", np.int64(3)),
            ("num_examples_processed:0", np.int64(16000)),
            ("curr_loss_scale:0", np.float32(2.0**16)),
            ("best_val_loss:0", np.float32(2.1)),
        ):
            put(name, np.asarray(value))
