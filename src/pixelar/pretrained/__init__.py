"""Pretrained models shipped with the package, and the rule that turns a model reference into a directory.

Each pretrained model is a model directory under this package, `pretrained/NAME/`: `config.json` and
`model.safetensors` exactly as a training run leaves them (so `models.load_model` reads them like any run
directory), and `card.json`, its model card (the command that trained it, steps, time, machine, test bits/dim,
parameter count, the sha256 of the weights, what it is good for). benchmarks/pretrained_card.py writes a card
from a finished run; docs/pretrained.md shows the cards as a table.

A model reference is a path or a pretrained name: an existing path wins (so that a model saved under a name
loads back from it), else a pretrained name, else FileNotFoundError listing the pretrained names. Where a bare
name is both, a one-line note on stderr says the directory is used; a new model or run directory may not take
a bare pretrained name (refuse_name; "./NAME", with a slash, is clearly a path and is allowed). A pretrained
model's weights are checked against its card's sha256 when loaded (check_weights; 1 to 2 ms for 2 MB), and a model
directory missing one of its files is reported as installed incompletely. Knows no model: it deals in
directories, files and JSON only.
"""

from __future__ import annotations

import errno
import sys
from pathlib import Path

from .. import distributed
from ..errors import shown
from ..io import file_sha256, read_json

# the package's own directory (a module attribute so that tests can point it at a directory of their own)
ROOT = Path(__file__).resolve().parent
CARD_NAME = "card.json"
WEIGHTS_NAME = "model.safetensors"
FILES = ("config.json", WEIGHTS_NAME, CARD_NAME)  # what a pretrained model directory holds
# (no pip flag spelled out: only cli.py speaks in command-line flags)
REINSTALL = "reinstall pixelar (the pip install command you used, forcing a reinstall)"
_noted: set[str] = set()  # the shadowed names already noted in this process (a command resolves a name often)


def names() -> list[str]:
    """The pretrained models shipped with this installation, sorted: the directories holding any of FILES (one
    missing some of them is installed incompletely, and is refused with the missing file when used)."""
    return sorted(p.name for p in ROOT.iterdir() if p.is_dir() and any((p / f).is_file() for f in FILES))


def _unknown(name: str) -> str:
    shipped = ", ".join(names()) or "none are installed"
    return f"{shown(name)} is not a pretrained model (pretrained models: {shipped})"


def _complete(name: str) -> Path:
    """The directory of the listed pretrained model `name`; FileNotFoundError naming a missing file."""
    d = ROOT / name
    missing = [f for f in FILES if not (d / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"pretrained model {name!r} is installed incompletely: {' and '.join(missing)} missing from {d}; "
            f"{REINSTALL}"
        )
    return d


def directory(name: str) -> Path:
    """The directory of pretrained model `name`; ValueError listing the names for an unknown one."""
    if name not in names():
        raise ValueError(_unknown(name))
    return _complete(name)


def card(name: str) -> dict:
    """The model card of pretrained model `name` (card.json, see the module docstring)."""
    return read_json(directory(name) / CARD_NAME, "model card")


def resolve(ref) -> Path:
    """The model directory that `ref` names: an existing path (it wins over a pretrained model of the same
    name, with a note on stderr), else the pretrained model `ref`; FileNotFoundError saying neither exists,
    with the names, or which file of the pretrained model is missing."""
    path = Path(ref)
    if _exists(path):
        if str(ref) in names() and str(ref) not in _noted:
            _noted.add(str(ref))
            if distributed.is_main():  # once, not from every process of a torchrun job
                print(
                    f"pixelar: note: {ref} is both a directory here and a pretrained model: using the directory "
                    f"{path.resolve()} (the pretrained model is used where no such path exists)",
                    file=sys.stderr,
                )
        return path
    if str(ref) in names():
        return _complete(str(ref))
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
    """Whether `ref` names a directory inside this package (read-only in an installed package), complete or not."""
    path = Path(ref)
    if _exists(path):
        return path.resolve().parent == ROOT.resolve()
    return str(ref) in names()


def check_weights(path) -> None:
    """Where `path` (a resolved model directory) is a pretrained model, check its weights against the sha256 of
    its card; ValueError naming the file otherwise. Nothing to check for other directories."""
    path = Path(path)
    if path.resolve().parent != ROOT.resolve():
        return
    stated = card(path.name).get("sha256")
    if stated is not None and file_sha256(path / WEIGHTS_NAME) != stated:
        raise ValueError(
            f"pretrained model {path.name!r}: {path / WEIGHTS_NAME} does not match the sha256 in its "
            f"{CARD_NAME} (the installed file is damaged or was changed); {REINSTALL}"
        )


def refuse_name(ref, what: str = "run directory") -> None:
    """Refuse a new model or run directory `ref` that is a bare pretrained model's name: the commands that take
    either would have to choose between them. ValueError saying what to do; a path with a slash is allowed (as a
    string: pathlib writes Path("./NAME") as NAME)."""
    name = str(ref)
    if name in names():
        raise ValueError(
            f"{what} {name!r} is the name of a pretrained model, so commands given {name} could mean either: choose "
            f"another name, or write it as a path (./{name}; an existing path is used before a pretrained model)"
        )
