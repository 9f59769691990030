"""Model registry: name -> class and its size presets (tiny / small / paper)."""
from __future__ import annotations

import copy

from ..types import ImageSpec

SIZES = ("tiny", "small", "paper")
_REGISTRY: dict[str, tuple[type, dict[str, dict]]] = {}


def register_model(name: str, sizes: dict[str, dict]):
    """Class decorator: register `cls` under `name` with hyperparameter presets for every size in SIZES."""
    missing = set(SIZES) - set(sizes)
    if missing:
        raise ValueError(f"model {name!r} lacks presets for sizes {sorted(missing)}")

    def deco(cls):
        if name in _REGISTRY:
            raise ValueError(f"model name {name!r} registered twice")
        cls.name = name
        _REGISTRY[name] = (cls, sizes)
        return cls

    return deco


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def _lookup(name: str):
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(list_models())}")
    return _REGISTRY[name]


def preset(name: str, size: str) -> dict:
    """The hyperparameters of a registered size, deep-copied."""
    _, sizes = _lookup(name)
    if size not in sizes:
        raise ValueError(f"unknown size {size!r} for model {name!r}; valid sizes: {', '.join(SIZES)}")
    return copy.deepcopy(sizes[size])


def merge_hparams(base: dict, overrides: dict, name: str) -> dict:
    """Overrides on top of a preset. Unknown keys fail loudly; the `output` dict merges key by key."""
    out = copy.deepcopy(base)
    for k, v in overrides.items():
        if k not in out:
            raise ValueError(f"unknown option {k!r} for model {name!r}; valid options: {', '.join(sorted(out))}")
        if k == "output" and isinstance(v, str):
            v = {"kind": v}
        if k == "output" and isinstance(v, dict):
            kind_changed = "kind" in v and v["kind"] != out["output"].get("kind")
            out["output"] = dict(v) if kind_changed else {**out["output"], **v}
        else:
            out[k] = v
    return out


def build_model(name: str, image: ImageSpec, hparams: dict):
    cls, _ = _lookup(name)
    if not isinstance(image, ImageSpec):
        raise ValueError(f"image must be a pixelar.ImageSpec, got {type(image).__name__}")
    model = cls(image, **hparams)
    model.hparams = copy.deepcopy(hparams)
    return model


def create_model(name: str, image: ImageSpec, size: str = "tiny", **overrides):
    """Build a registered model: `create_model("pixelcnn_pp", ImageSpec(3, 32, 32), "paper", dropout=0.0)`."""
    hparams = merge_hparams(preset(name, size), overrides, name)
    return build_model(name, image, hparams)
