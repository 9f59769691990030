"""Pretrained models shipped with the package, and the rule that turns a model reference into a directory.

Each pretrained model is a model directory under this package, `pretrained/NAME/`: `config.json` and
`model.safetensors` exactly as a training run leaves them (so `models.load_model` reads them like any run
directory), and `card.json`, its model card (the command that trained it, steps, time, machine, test bits/dim,
parameter count, the sha256 of the weights, what it is good for). benchmarks/pretrained_card.py writes a card
from a finished run; docs/pretrained.md shows the cards as a table.

A model reference is a path or a pretrained name: an existing path wins, else a pretrained name, else
FileNotFoundError listing the pretrained names. Knows no model: it deals in directories and JSON only.
"""

from __future__ import annotations

import errno
from pathlib import Path

from ..errors import shown
from ..io import read_json

# the package's own directory (a module attribute so that tests can point it at a directory of their own)
ROOT = Path(__file__).resolve().parent
CARD_NAME = "card.json"
FILES = ("config.json", "model.safetensors", CARD_NAME)  # what a pretrained model directory holds


def names() -> list[str]:
    """The pretrained models shipped with this installation, sorted (directories holding all of FILES)."""
    return sorted(p.name for p in ROOT.iterdir() if p.is_dir() and all((p / f).is_file() for f in FILES))


def _unknown(name: str) -> str:
    shipped = ", ".join(names()) or "none are installed"
    return f"{shown(name)} is not a pretrained model (pretrained models: {shipped})"


def directory(name: str) -> Path:
    """The directory of pretrained model `name`; ValueError listing the names for an unknown one."""
    if name not in names():
        raise ValueError(_unknown(name))
    return ROOT / name


def card(name: str) -> dict:
    """The model card of pretrained model `name` (card.json, see the module docstring)."""
    return read_json(directory(name) / CARD_NAME, "model card")


def resolve(ref) -> Path:
    """The model directory that `ref` names: an existing path (it wins over a pretrained model of the same
    name), else the pretrained model `ref`; FileNotFoundError saying neither exists, with the names."""
    path = Path(ref)
    if _exists(path):
        return path
    if str(ref) in names():
        return ROOT / str(ref)
    raise FileNotFoundError(
        f"no model directory at {shown(path, quote=False)} (a run directory or a saved model), and {_unknown(str(ref))}"
    )


def _exists(path: Path) -> bool:
    """path.exists(), False for a name too long to be a file's (where exists() raises instead)."""
    try:
        return path.exists()
    except OSError as e:
        if e.errno != errno.ENAMETOOLONG:
            raise
        return False


def is_pretrained(ref) -> bool:
    """Whether `ref` resolves to a directory inside this package (read-only in an installed package)."""
    try:
        path = resolve(ref).resolve()
    except FileNotFoundError:
        return False
    return path.parent == ROOT
