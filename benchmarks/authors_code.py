"""The papers' authors' code, run from a checkout of their public repository, to make reference outputs and
random checkpoints in their layouts (test fixtures, conversion benchmarks). Nothing of theirs is copied: the
checkout's path is given on the command line, and its modules are loaded from there.

    git clone https://github.com/pclucas14/pixel-cnn-pp /tmp/pixel-cnn-pp
    git clone https://github.com/openai/vdvae /tmp/vdvae
"""

from __future__ import annotations

import argparse
import importlib
import importlib.machinery
import sys
import types
from pathlib import Path

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
