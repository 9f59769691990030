"""Reading published checkpoints without executing code, and the weight arithmetic converters share.

`read_torch_state` reads a torch.save file with `torch.load(weights_only=True)`: tensors, numbers, strings and
containers of them, never an object whose unpickling runs code (a file that needs one is refused, naming it).
`NpzArrays` reads a numpy .npz archive (TensorFlow-era checkpoints) with allow_pickle=False, one array at a
time as it is asked for. `Tensors` hands a converter the tensors of a file one name at a time and, at the end,
refuses a file that holds tensors the converter did not use (another layout, or a model this converter would
convert only in part); entries it knowingly leaves out (an optimizer's state) it names with `skip`.
`fold_weight_norm` turns weight normalisation's (g, v) into the plain weight it stands for, and `output_rows`
reorders a discretized logistic mixture's output rows from the TF PixelCNN++ layout.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from ..io import read_json


def read_torch_state(path) -> dict:
    """A torch.save file's object, read with weights_only=True (no code runs); ValueError naming the file for a
    file that is not one, or that needs code to be read."""
    path = Path(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message advises weights_only=False, which would run the file's code: give only its reason
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if found:
            raise ValueError(
                f"{path} holds an object ({found.group(1)}) that only running code could rebuild, and pixelar "
                "never runs code from a checkpoint: save the state dict's tensors alone (model.state_dict())"
            ) from None
        found = re.search(r"WeightsUnpickler error: \s*(.+)", str(e))
        reason = found.group(1).strip() if found else "not a pickle torch.load reads"
        raise ValueError(f"{path} is not a readable torch checkpoint ({reason})") from None
    except (RuntimeError, EOFError, OSError) as e:
        raise ValueError(f"{path} is not a readable torch checkpoint ({str(e).splitlines()[0]})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a dictionary of tensors (a state dict)")
    return obj


class NpzArrays(Mapping):
    """The arrays of a numpy .npz archive by name, each read only when asked for (a float16 array stays float16:
    the converter decides what to upcast), as a torch tensor; `shape` and `dtype` read only an array's header.
    numpy reads with allow_pickle=False: an object array (whose unpickling could run code) is refused, naming
    the file and the entry. ValueError naming the file for a file that is no .npz archive."""

    def __init__(self, path):
        self.path = Path(path)
        try:
            npz = np.load(self.path, allow_pickle=False)
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
            raise ValueError(f"{self.path} is not a readable .npz archive ({str(e).splitlines()[0]})") from None
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise ValueError(f"{self.path} holds a single array, not an .npz archive of named arrays")
        self._npz = npz
        self._headers: dict[str, tuple[tuple[int, ...], np.dtype]] = {}

    def __iter__(self):
        return iter(self._npz.files)

    def __len__(self) -> int:
        return len(self._npz.files)

    def __contains__(self, key) -> bool:
        return key in self._npz.files

    def _header(self, key: str) -> tuple[tuple[int, ...], np.dtype]:
        if key not in self._headers:
            if key not in self:
                raise KeyError(key)
            try:
                with self._npz.zip.open(f"{key}.npy") as f:
                    version = np.lib.format.read_magic(f)
                    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
                    if version not in readers:  # 3.0 only differs for structured dtypes' field names
                        raise ValueError(f".npy format version {version}, not 1.0 or 2.0")
                    shape, _, dtype = readers[version](f)
            except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
                raise ValueError(f"{self.path}: entry {key!r} is not a readable array ({e})") from None
            self._headers[key] = (tuple(shape), dtype)
        return self._headers[key]

    def shape(self, key: str) -> tuple[int, ...]:
        return self._header(key)[0]

    def dtype(self, key: str) -> np.dtype:
        return self._header(key)[1]

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self:
            raise KeyError(key)
        try:
            arr = self._npz[key]
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
            raise ValueError(
                f"{self.path}: entry {key!r} cannot be read without running code or at all ({e})"
            ) from None
        if arr.dtype.kind not in "fiub":
            raise ValueError(f"{self.path}: entry {key!r} holds {arr.dtype} values, not numbers")
        return torch.from_numpy(np.ascontiguousarray(arr))


def strip_prefix(state: dict, prefix: str) -> tuple[dict, bool]:
    """state without `prefix` on its keys (DataParallel's "module."), where every key has it. -> (state, stripped)."""
    if state and all(isinstance(k, str) and k.startswith(prefix) for k in state):
        return {k[len(prefix) :]: v for k, v in state.items()}, True
    return state, False


def fold_weight_norm(g: torch.Tensor, v: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """The weight g * v / ||v|| of weight normalisation (Salimans and Kingma 2016) as torch's
    `nn.utils.weight_norm(module, dim)` computes it: the norm over every axis but `dim`, g of shape 1 on them.
    Computed in float64, returned in v's dtype."""
    if g.dim() != v.dim() or g.shape[dim] != v.shape[dim] or any(g.shape[d] != 1 for d in range(g.dim()) if d != dim):
        raise ValueError(f"weight norm gain of shape {tuple(g.shape)} does not fit direction {tuple(v.shape)}")
    axes = [d for d in range(v.dim()) if d != dim]
    v64 = v.double()
    return (g.double() * v64 / v64.square().sum(dim=axes, keepdim=True).sqrt()).to(v.dtype)


def output_rows(channels: int, nr_mix: int) -> torch.Tensor:
    """Index of each pixelar mixture output row in the rows of the PixelCNN++ TF code's layout (openai/pixel-cnn,
    which its ports and openai/vdvae keep): pixelar_row[i] = their_row[index[i]]. Theirs per pixel: [logits (M)
    | per channel c: means (M), log-scales (M), coefficients (M)], channel c's coefficients the c-th of (G<-R,
    B<-R, B<-G); pixelar's: [logits | means of every channel | log-scales of every channel | coefficients]."""
    M, C = nr_mix, channels
    if C == 1:  # [logits | means | log-scales]: the same in both
        return torch.arange(3 * M)
    per = 3 * M  # their rows per channel after the logits: means, log-scales, coefficients
    means = [M + c * per + m for c in range(C) for m in range(M)]
    log_scales = [M + c * per + M + m for c in range(C) for m in range(M)]
    coeffs = [M + k * per + 2 * M + m for k in range(C) for m in range(M)]  # (G<-R, B<-R, B<-G) in rows c = 0, 1, 2
    return torch.tensor([*range(M), *means, *log_scales, *coeffs])


# how a module's weight is stored: plain, or weight normalised by torch's old hook (weight_g, weight_v) or by
# its parametrization (parametrizations.weight.original0 = g, original1 = v)
WEIGHT_FORMS = {
    "plain": ("weight",),
    "weight_norm": ("weight_g", "weight_v"),
    "parametrized": ("parametrizations.weight.original0", "parametrizations.weight.original1"),
}


class Tensors:
    """The tensors of a checkpoint, taken by name; `finish()` refuses tensors left untaken.

    state: a dict of tensors, or a mapping that reads each one when asked (NpzArrays). `what` names the file
    in every message ("checkpoint pcnn.pth")."""

    def __init__(self, state: Mapping, what: str):
        self.state, self.what, self.taken = state, what, set()
        if isinstance(state, dict):  # read already: check every entry now (a lazy mapping checks its own)
            bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
            if bad:
                raise ValueError(f"{what}: entry {bad[0]!r} is a {type(state[bad[0]]).__name__}, not a tensor")

    def has(self, key: str) -> bool:
        return key in self.state

    def take(self, key: str) -> torch.Tensor:
        if key not in self.state:
            raise ValueError(f"{self.what} has no tensor {key!r}: it is not a checkpoint of this layout")
        self.taken.add(key)
        return self.state[key]

    def skip(self, key: str) -> None:
        """Count `key` as used without reading it: an entry the converter knowingly leaves out (it says so in its
        notes), e.g. an optimizer's moments beside the weights."""
        if key not in self.state:
            raise ValueError(f"{self.what} has no tensor {key!r}: it is not a checkpoint of this layout")
        self.taken.add(key)

    def weight(self, prefix: str, dim: int = 0) -> tuple[torch.Tensor, str]:
        """The plain weight of module `prefix` in whichever form the file stores it (WEIGHT_FORMS; weight norm
        folded over every axis but `dim`, the source's convention). -> (weight, form)."""
        for form, names in WEIGHT_FORMS.items():
            if all(self.has(f"{prefix}.{n}") for n in names):
                parts = [self.take(f"{prefix}.{n}") for n in names]
                return (parts[0] if form == "plain" else fold_weight_norm(*parts, dim=dim)), form
        raise ValueError(f"{self.what} has no weight for {prefix!r} (as {prefix}.weight or weight_g/weight_v)")

    def count(self, pattern: str, start: int = 0) -> int:
        """How many of pattern.format(i) exist for i = start, start+1, ... (consecutive)."""
        n = start
        while any(k.startswith(pattern.format(n)) for k in self.state):
            n += 1
        return n - start

    def finish(self) -> None:
        left = sorted(set(self.state) - self.taken)
        if left:
            shown = ", ".join(left[:4]) + (f" and {len(left) - 4} more" if len(left) > 4 else "")
            raise ValueError(
                f"{self.what} has tensors this converter does not map ({shown}): it is a checkpoint of another "
                "layout or model, which would be converted only in part"
            )


def named_hps(hps, named: dict, defaults: dict, hps_help: str, authors: str, what: str) -> tuple[dict, str]:
    """The authors' hyperparameters that shape a model, over their `defaults`: a set of `named` by its name, a
    .json file of their names, or a dict. A name that is not among `defaults` is refused, naming `authors`' code.
    -> (the hyperparameters, how they were given, for messages)."""
    if isinstance(hps, dict):
        given, shown = dict(hps), "the hps given"
    elif isinstance(hps, (str, os.PathLike)) and str(hps) in named:
        given, shown = named[str(hps)], f"hps {hps}"
    elif isinstance(hps, (str, os.PathLike)) and Path(hps).suffix.lower() == ".json":
        given, shown = read_json(hps, "hps file"), f"hps file {hps}"
    else:
        raise ValueError(f"{what}: hps must be {hps_help}, got {hps!r}")
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError(
            f"{shown}: {unknown[0]!r} is not one of {authors}'s hyperparameters that shape the model "
            f"({', '.join(defaults)})"
        )
    return {**defaults, **given}, shown


def load_weights(model, weights: dict[str, torch.Tensor], what: str) -> None:
    """Copy converted weights into `model`: every weight filled, each of its shape; ValueError naming `what`."""
    own = model.state_dict()
    missing = sorted(own.keys() - weights.keys())
    extra = sorted(weights.keys() - own.keys())
    if missing or extra:
        raise ValueError(f"{what}: the conversion left weights {missing[:4]} unfilled and made {extra[:4]}")
    for k, w in weights.items():
        if tuple(w.shape) != tuple(own[k].shape):
            raise ValueError(
                f"{what}: tensor for {k} has shape {tuple(w.shape)}, the model's has {tuple(own[k].shape)}"
            )
    model.load_state_dict({k: w.to(own[k].dtype) for k, w in weights.items()})
