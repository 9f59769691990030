"""Converters: the papers' published checkpoints as ordinary pixelar model directories.

    model = pixelar.convert("pclucas14-pixelcnn_pp", "pcnn.pth")             # -> a pixelar model (eval mode)
    pixelar.converters.convert_to_dir("pclucas14-pixelcnn_pp", "pcnn.pth", "pcnn_pp")  # + config.json, card.json

A source is one published file format (the authors' code that wrote it, and the layout the published files
really have), a single file or a directory of files (a Hugging Face model directory); each lives in its own
module here and registers itself with `register_source`. A converter reads the file without executing code
(pixelar.converters.checkpoint), maps every tensor to a pixelar weight (every tensor of the file used, every
weight of the model filled: a file of another layout is refused, never half converted), and says what it did
in notes that go into the card. The directory it writes holds
config.json and model.safetensors, exactly what `model.save` writes, so every command that takes a run
directory takes it, and card.json: the source, the file's name and sha256 (a directory's: the sha256 of each
file read), the paper and its figure, the options and notes of the conversion, and the sha256 of the weights
written.

Knows the model families it converts to (it builds them by name through the registry) but nothing above:
training, evaluation and the CLI know no converter.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from collections.abc import Callable
from pathlib import Path

from .. import pretrained
from ..errors import ArgumentValueError
from ..io import file_sha256, write_folder, write_json
from ..types import ImageSpec

CARD_NAME = "card.json"
WEIGHTS_NAME = "model.safetensors"
MODEL_FILES = ("config.json", WEIGHTS_NAME, CARD_NAME)  # what a converted model directory holds

# the modules that register a source each (imported when a source is first looked up)
_MODULES = (
    "ajayjain_lmconv",
    "hf_imagegpt",
    "openai_distaug",
    "openai_pixelcnn_pp",
    "openai_vdvae",
    "pclucas14_pixelcnn_pp",
)


@dataclasses.dataclass(frozen=True)
class Source:
    """One published checkpoint format.

    name: the SOURCE of `pixelar convert`; paper: the paper and the code that wrote the files; paper_bpd: the
    figure the authors report for their published model (text, with its dataset); reads: what file it takes;
    download: where the authors publish it; options: the keyword options `convert` takes for it (name ->
    description); build(path, **options) -> (model, notes); files: None for a source that reads the one file
    it is given, else files(directory) -> the files it reads there (for the card)."""

    name: str
    paper: str
    paper_bpd: str
    reads: str
    download: str
    options: dict[str, str]
    build: Callable
    files: Callable | None = None


_SOURCES: dict[str, Source] = {}


def register_source(
    name: str,
    *,
    paper: str,
    paper_bpd: str,
    reads: str,
    download: str,
    options: dict[str, str],
    files: Callable | None = None,
):
    """Decorator of a converter function build(path, **options) -> (model, notes: list[str]). A source that
    reads a directory gives files(directory) -> the files it reads there."""

    def deco(fn):
        if name in _SOURCES:
            raise ValueError(f"checkpoint source {name!r} is registered twice")
        _SOURCES[name] = Source(name, paper, paper_bpd, reads, download, dict(options), fn, files)
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
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if src.files is None and not path.is_file():
        raise ValueError(f"{src.name} reads one checkpoint file ({src.reads}); {path} is a directory")
    if src.files is not None and not path.is_dir():
        raise ValueError(f"{src.name} reads a model directory ({src.reads}); {path} is a file: give its directory")
    model, notes = src.build(path, **options)
    return src, model.eval(), notes, options


def convert(source_name: str, path, **options):
    """The model a published checkpoint holds, as a pixelar model in eval mode (see the module docstring).

    source_name: one of `sources()`; path: the checkpoint file (or directory); options: the source's (e.g.
    image=ImageSpec(...) where the checkpoint does not fix the image size). Raises ValueError naming the file
    for a file of another layout, FileNotFoundError for a missing one; never executes code from the file."""
    return _convert(source_name, path, **options)[1]


def card(src: Source, path: Path, model, notes: list[str], options: dict, weights_sha256: str) -> dict:
    """The card of a converted model (card.json)."""
    shown = {k: _shown(v) for k, v in options.items()}
    if src.files is None:
        hashes = {"source_sha256": file_sha256(path)}
    else:  # a directory: each file read, by its name there
        hashes = {"source_files": {str(f.relative_to(path)): file_sha256(f) for f in src.files(path)}}
    return {
        "name": path.stem if src.files is None else path.name,
        "source": src.name,
        "source_file": path.name,
        **hashes,
        "paper": src.paper,
        "paper_bpd": src.paper_bpd,
        "download": src.download,
        "model": model.name,
        "image": model.data_image.to_dict(),  # the images it reads (image_gpt: not its token grid)
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
    card.json, written whole (pixelar.io.write_folder: a failed or interrupted conversion leaves `out` as it
    was). An existing `out` is written over only with overwrite=True, and only where it holds nothing but a
    model directory's files: the weights of a training run beside its training state would be a run that is
    neither. -> the model."""
    pretrained.refuse_name(out, "model directory")  # a bare pretrained name would shadow the pretrained model
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file: give a directory to write the model into")
    if out.exists():
        if not overwrite:
            raise ArgumentValueError("overwrite", "overwrite=True", f"{out} exists: pass ", " to replace it")
        others = sorted(p.name for p in out.iterdir() if p.name not in MODEL_FILES)
        if others:
            raise ValueError(
                f"{out} holds files other than a model directory's ({', '.join(others[:3])}): write the converted "
                "model into a new or empty directory"
            )
    src, model, notes, options = _convert(source_name, path, **options)
    with write_folder(out) as tmp:
        model.save(tmp)
        write_json(tmp / CARD_NAME, card(src, Path(path), model, notes, options, file_sha256(tmp / WEIGHTS_NAME)))
    return model


__all__ = ["CARD_NAME", "Source", "card", "convert", "convert_to_dir", "register_source", "source", "sources"]
