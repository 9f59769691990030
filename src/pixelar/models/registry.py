"""Model registry: name -> class and its size presets (tiny / small / paper), and the wrappers (DistAug).

Every model is built through `build_model`, which checks the hyperparameters against the presets first
(`check_hparams`), so a bad option gives one clear ValueError instead of an error deep inside a layer. A
registered class's constructor arguments become the model's `hparams` (saved in config.json) by themselves.
"""

from __future__ import annotations

import copy
import functools
import inspect
import math
import numbers

import torch

from ..errors import shown
from ..types import ImageSpec

SIZES = ("tiny", "small", "paper")
# options that are a probability in every model that has them
PROBABILITIES = ("dropout",)
_REGISTRY: dict[str, tuple[type, dict[str, dict], frozenset]] = {}
# per model: options added after configs of it were saved -> the value that reproduces the older models
_ADDED: dict[str, dict] = {}
_WRAPPERS: dict[str, type] = {}


def register_model(name: str, sizes: dict[str, dict], zero_ok=(), added: dict | None = None):
    """Class decorator: register `cls` under `name` with hyperparameter presets for every size in SIZES.

    The presets also define what each option accepts (see check_hparams): every size has the same options
    with values of the same type. Integer options must be >= 1, except those that some preset sets to 0 (0
    meaning "none" or "the default" there) and those named in `zero_ok`, which must be >= 0.
    added: options (in the presets too) that configs saved before they existed lack -> the value that builds
    the model those configs describe (check_hparams fills it in).
    """
    missing = set(SIZES) - set(sizes)
    if missing:
        raise ValueError(f"model {name!r} lacks presets for sizes {sorted(missing)}")
    reference = sizes[SIZES[0]]
    for size in SIZES[1:]:
        if {k: type(v) for k, v in sizes[size].items()} != {k: type(v) for k, v in reference.items()}:
            raise ValueError(f"model {name!r}: preset {size!r} has other options or value types than {SIZES[0]!r}")
    zero = frozenset(zero_ok) | {k for s in sizes.values() for k, v in s.items() if type(v) is int and v == 0}
    added = dict(added or {})
    if set(added) - set(reference):
        raise ValueError(f"model {name!r}: added options {sorted(set(added) - set(reference))} are in no preset")

    def deco(cls):
        if name in _REGISTRY:
            raise ValueError(f"model name {name!r} registered twice")
        cls.name = name
        _capture_hparams(cls)
        _REGISTRY[name] = (cls, sizes, zero)
        _ADDED[name] = added
        return cls

    return deco


def _capture_hparams(cls) -> None:
    """Make cls's constructor record its arguments (all but the image, defaults filled in) as `hparams`, the
    JSON-able description config.json saves; only the outermost constructor of an instance records."""
    init = cls.__init__
    signature = inspect.signature(init)

    @functools.wraps(init)
    def __init__(self, image, *args, **kwargs):
        init(self, image, *args, **kwargs)
        if type(self) is cls:
            bound = signature.bind(self, image, *args, **kwargs)
            bound.apply_defaults()
            names = list(bound.arguments)[2:]  # after self and image
            self.hparams = copy.deepcopy({k: bound.arguments[k] for k in names})

    cls.__init__ = __init__


def register_wrapper(key: str):
    """Class decorator: a model wrapping a registered model, saved as the base's config plus a section `key`.
    The class provides `config_section() -> dict` and `from_config(base, section) -> model`."""

    def deco(cls):
        if key in _WRAPPERS:
            raise ValueError(f"wrapper {key!r} registered twice")
        cls.wrapper_key = key
        _WRAPPERS[key] = cls
        return cls

    return deco


def wrappers() -> dict[str, type]:
    """{config key: wrapper class} of the registered wrappers."""
    return dict(_WRAPPERS)


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def _lookup(name: str):
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(f"unknown model {shown(name)}; valid models: {', '.join(list_models())}")
    return _REGISTRY[name]


def model_class(name: str) -> type:
    """The class registered under `name` (to read class attributes such as `likelihood` without building it)."""
    return _lookup(name)[0]


def preset(name: str, size: str) -> dict:
    """The hyperparameters of a registered size, deep-copied."""
    _, sizes, _ = _lookup(name)
    if size not in SIZES:
        raise ValueError(f"unknown size {shown(size)} for model {name!r}; valid sizes: {', '.join(SIZES)}")
    return copy.deepcopy(sizes[size])


def merge_hparams(base: dict, overrides: dict, name: str) -> dict:
    """Overrides on top of a preset. Unknown top-level keys fail loudly. An option whose preset value is an
    object (the output distribution, {"kind": ..., **options}) merges key by key, unless the override names
    another kind, which replaces it (its options belong to the new kind); a string is short for {"kind": it}."""
    out = copy.deepcopy(base)
    for k, v in overrides.items():
        if k not in out:
            raise ValueError(f"unknown option {shown(k)} for model {name!r}; valid options: {', '.join(sorted(out))}")
        out[k] = _merge_option(out[k], v)
    return out


def _merge_option(preset_value, v):
    if not isinstance(preset_value, dict):
        return v
    if isinstance(v, str):
        v = {"kind": v}
    if not isinstance(v, dict):
        return v  # check_hparams refuses it with the expected form
    if "kind" in v and v["kind"] != preset_value.get("kind"):
        return copy.deepcopy(v)
    return {**preset_value, **{k: _merge_option(preset_value.get(k), x) for k, x in v.items()}}


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _check_option(name: str, key: str, v, ref, zero_ok: bool):
    """The value of option `key`, checked against the preset's value `ref` (and normalised: numpy ints ->
    int, ints -> float where the option is a float, tuples -> lists, so the config stays plain JSON)."""

    def bad(expected: str):
        return ValueError(f"model {name!r}: option {key} must be {expected}, got {v!r}")

    if isinstance(ref, bool):
        if not isinstance(v, bool):
            raise bad("true or false")
        return v
    if isinstance(ref, int):
        low = 0 if zero_ok else 1
        if not _is_int(v) or v < low:
            raise bad(f"an integer >= {low}")
        return int(v)
    if isinstance(ref, float):
        if key in PROBABILITIES:
            if not _is_number(v) or not 0 <= v < 1:
                raise bad("a probability in [0, 1)")
        elif not _is_number(v) or not math.isfinite(v):
            raise bad("a finite number")
        return float(v)
    if isinstance(ref, str):
        if not isinstance(v, str):
            raise bad("a string")
        return v
    if isinstance(ref, list):
        if not isinstance(v, (list, tuple)):
            raise bad(f"a list like {ref!r}")
        if ref and isinstance(ref[0], int):
            if not all(_is_int(e) and e >= 0 for e in v):
                raise bad(f"a list of integers >= 0 like {ref!r}")
            return [int(e) for e in v]
        if ref and not all(isinstance(e, type(ref[0])) for e in v):
            raise bad(f"a list like {ref!r}")
        return list(v)
    if isinstance(ref, dict):  # the output distribution: {"kind": ..., **its options}, which it checks itself
        if not isinstance(v, dict) or not isinstance(v.get("kind"), str):
            raise bad(f"an object with a 'kind' like {ref!r}")
        return copy.deepcopy(v)
    raise TypeError(f"model {name!r}: preset option {key} has a value of unsupported type {type(ref).__name__}")


def check_hparams(name: str, hparams: dict) -> dict:
    """Check a complete set of hyperparameters of model `name` against its presets: the same options, each
    value of its preset's type (an int where the preset has an int - true/false is no int -, a number where
    it has a float, ...) and range (counts >= 1, or >= 0 where 0 means none; probabilities in [0, 1)).
    Returns the normalised copy; raises ValueError naming the model and the first bad option."""
    _, sizes, zero = _lookup(name)
    reference = sizes[SIZES[0]]
    if not isinstance(hparams, dict):
        raise ValueError(f"the options (hparams) of model {name!r} must be a dict, got {type(hparams).__name__}")
    unknown = sorted(set(hparams) - set(reference), key=str)
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(shown(k) for k in unknown)} for model {name!r}; valid options: "
            f"{', '.join(sorted(reference))}"
        )
    hparams = {**{k: v for k, v in _ADDED.get(name, {}).items() if k not in hparams}, **hparams}
    missing = sorted(set(reference) - set(hparams))
    if missing:
        raise ValueError(f"model {name!r} lacks option(s) {', '.join(missing)}")
    return {k: _check_option(name, k, hparams[k], ref, k in zero) for k, ref in reference.items()}


def build_model(name: str, image: ImageSpec, hparams: dict):
    cls, _, _ = _lookup(name)
    if not isinstance(image, ImageSpec):
        raise ValueError(f"image must be a pixelar.ImageSpec, got {type(image).__name__}")
    hparams = check_hparams(name, hparams)
    try:
        model = cls(image, **hparams)
    except torch.OutOfMemoryError:  # a RuntimeError, but no fault of the options' values
        raise
    except (TypeError, ValueError, RuntimeError) as e:  # what the model's own checks (or its layers) refuse
        raise ValueError(f"model {name!r} cannot be built with these options: {e}") from None
    return model


def create_model(name: str, image: ImageSpec, size: str = "tiny", **overrides):
    """Build a registered model: `create_model("pixelcnn_pp", ImageSpec(3, 32, 32), "paper", dropout=0.0)`."""
    hparams = merge_hparams(preset(name, size), overrides, name)
    return build_model(name, image, hparams)
