"""Converters: the papers' published checkpoints as ordinary pixelar model directories.

    model = pixelar.convert("pclucas14-pixelcnn_pp", "pcnn.pth")             # -> a pixelar model (eval mode)
    pixelar.converters.convert_to_dir("pclucas14-pixelcnn_pp", "pcnn.pth", "pcnn_pp")  # + config.json, card.json

A source is one published file format (the authors' code that wrote it, and the layout the published files
really have); each lives in its own module here and registers itself with `register_source`. A converter
reads the file without executing code (pixelar.converters.checkpoint), maps every tensor to a pixelar
weight (every tensor of the file used, every weight of the model filled: a file of another layout is refused,
never half converted), and says what it did in notes that go into the card. The directory it writes holds
config.json and model.safetensors, exactly what `model.save` writes, so every command that takes a run
directory takes it, and card.json: the source, the file's name and sha256, the paper and its figure, the
options and notes of the conversion, and the sha256 of the weights written.

Knows the model families it converts to (it builds them by name through the registry) but nothing above:
training, evaluation and the CLI know no converter.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from .. import pretrained
from ..errors import ArgumentValueError
from ..io import file_sha256, write_json
from ..types import ImageSpec

CARD_NAME = "card.json"

# the modules that register a source each (imported when a source is first looked up)
_MODULES = ("openai_distaug", "openai_vdvae", "pclucas14_pixelcnn_pp")


@dataclasses.dataclass(frozen=True)
class Source:
    """One published checkpoint format.

    name: the SOURCE of `pixelar convert`; paper: the paper and the code that wrote the files; paper_bpd: the
    figure the authors report for their published model (text, with its dataset); reads: what file it takes;
    download: where the authors publish it; options: the keyword options `convert` takes for it (name ->
    description); build(path, **options) -> (model, notes)."""

    name: str
    paper: str
    paper_bpd: str
    reads: str
    download: str
    options: dict[str, str]
    build: Callable


_SOURCES: dict[str, Source] = {}


def register_source(name: str, *, paper: str, paper_bpd: str, reads: str, download: str, options: dict[str, str]):
    """Decorator of a converter function build(path, **options) -> (model, notes: list[str])."""

    def deco(fn):
        if name in _SOURCES:
            raise ValueError(f"checkpoint source {name!r} is registered twice")
        _SOURCES[name] = Source(name, paper, paper_bpd, reads, download, dict(options), fn)
        return fn

    return deco


def _load_all() -> None:
    for module in _MODULES:
        importlib.import_module(f"{__name__}.{module}")


def sources() -> list[Source]:
    """Every checkpoint source, sorted by name."""
    _load_all()
    return [_SOURCES[k] for k in sorted(_SOURCES)]


def source(name: str) -> Source:
    """The source `name`; ValueError listing the sources for an unknown one."""
    _load_all()
    if name not in _SOURCES:
        shown = name if len(name) <= 60 else f"{name[:60]}... ({len(name)} characters)"
        raise ValueError(f"unknown checkpoint source {shown!r}; sources: {', '.join(sorted(_SOURCES))}")
    return _SOURCES[name]


def _checked_options(src: Source, options: dict) -> dict:
    unknown = sorted(k for k, v in options.items() if k not in src.options and v is not None)
    if unknown:
        known = ", ".join(src.options) or "none"
        raise ValueError(f"{src.name} takes no option {unknown[0]!r} (its options: {known})")
    image = options.get("image")
    if image is not None and not isinstance(image, ImageSpec):
        raise ValueError(f"image must be a pixelar.ImageSpec, got {type(image).__name__}")
    return {k: v for k, v in options.items() if v is not None}


def _convert(source_name: str, path, **options):
    src = source(source_name)
    options = _checked_options(src, options)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    model, notes = src.build(path, **options)
    return src, model.eval(), notes, options


def convert(source_name: str, path, **options):
    """The model a published checkpoint holds, as a pixelar model in eval mode (see the module docstring).

    source_name: one of `sources()`; path: the checkpoint file; options: the source's (e.g. image=ImageSpec(...)
    where the checkpoint does not fix the image size). Raises ValueError naming the file for a file of another
    layout, FileNotFoundError for a missing one; never executes code from the file."""
    return _convert(source_name, path, **options)[1]


def card(src: Source, path: Path, model, notes: list[str], options: dict, weights_sha256: str) -> dict:
    """The card of a converted model (card.json)."""
    shown = {k: _shown(v) for k, v in options.items()}
    return {
        "name": path.stem,
        "source": src.name,
        "source_file": path.name,
        "source_sha256": file_sha256(path),
        "paper": src.paper,
        "paper_bpd": src.paper_bpd,
        "download": src.download,
        "model": model.name,
        "image": model.image.to_dict(),
        "num_parameters": model.num_parameters(),
        "options": shown,
        "conversion": notes,
        "sha256": weights_sha256,
    }


def _shown(value):
    """An option as the card's JSON holds it: an ImageSpec as its dict, a path as its text."""
    if isinstance(value, ImageSpec):
        return value.to_dict()
    return os.fspath(value) if isinstance(value, os.PathLike) else value


def convert_to_dir(source_name: str, path, out, overwrite: bool = False, **options):
    """Convert `path` (as `convert`) and write the model directory `out`: config.json, model.safetensors and
    card.json. Written whole into a temporary directory beside `out` and renamed at the end, so an interrupted
    or failed conversion leaves nothing at `out`; an existing `out` is replaced only with overwrite=True (and
    only once the new directory is whole). -> the model."""
    pretrained.refuse_name(out, "model directory")  # a bare pretrained name would shadow the pretrained model
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file: give a directory to write the model into")
    if out.exists() and not overwrite:
        raise ArgumentValueError("overwrite", "overwrite=True", f"{out} exists: pass ", " to replace it")
    src, model, notes, options = _convert(source_name, path, **options)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700: give the directory the mode a new one gets
        model.save(tmp)
        weights_sha256 = file_sha256(tmp / "model.safetensors")
        write_json(tmp / CARD_NAME, card(src, Path(path), model, notes, options, weights_sha256))
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return model


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


__all__ = ["CARD_NAME", "Source", "card", "convert", "convert_to_dir", "register_source", "source", "sources"]
