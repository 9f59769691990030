"""Paper recipes: each paper's CIFAR-10 training setup, kept as data in recipes.json (shipped with the package).

A recipe is a set of TrainConfig fields (`train`), where each applied value says where it comes from
(`sources`), plus what the paper reports (bits/dim, parameters, compute). A training setting the paper does not
state is listed under `unstated` with what is known, and never filled in: pixelar's default applies, except for
the settings in REQUIRED_IF_UNSTATED, which a run must then be given (a default tuned for a 5-minute CPU run
means nothing for a paper-sized one). `recipe_config` maps a recipe (plus explicit settings, which win) to the
same TrainConfig that `pixelar train` flags fill.

JSON, not TOML: the standard library reads it on every supported Python (tomllib arrived in 3.11).
"""

from __future__ import annotations

import copy
import functools
import json
import math
from dataclasses import dataclass, fields
from importlib import resources

import torch

from .config import TrainConfig
from .errors import shown
from .models import create_model
from .models.distaug import create_distaug_model
from .types import ImageSpec

# the training settings every recipe either sets or declares unstated
TRAINING_FIELDS = (
    "batch_size",
    "max_steps",
    "lr",
    "betas",
    "eps",
    "lr_decay",
    "warmup_steps",
    "grad_clip",
    "ema_decay",
)
# settings only some papers have (a recipe sets them with a source, or leaves pixelar's default)
OPTIONAL_TRAINING_FIELDS = ("skip_threshold",)
# unstated settings whose pixelar default would make a paper-sized run meaningless: they must be given
REQUIRED_IF_UNSTATED = ("batch_size", "max_steps", "lr", "lr_decay")
# a recipe's model is within this fraction of the paper's parameter count unless it documents a wider tolerance
PARAMETERS_TOLERANCE = 0.02
_KEYS = {
    "paper": str,
    "bits_per_dim": float,
    "bits_per_dim_note": str,
    "parameters": (int, type(None)),
    "parameters_note": str,
    "parameters_tolerance": float,
    "compute": str,
    "gpus": (int, type(None)),
    "gpu_hours": (int, float, type(None)),
    "gpu_hours_how": str,
    "train": dict,
    "sources": dict,
    "unstated": dict,
    "deviations": list,
}
_OPTIONAL = {"parameters_tolerance"}


@dataclass(frozen=True)
class Recipe:
    """One paper's CIFAR-10 setup (see recipes.json; docs/recipes.md lists them all)."""

    name: str
    paper: str
    bits_per_dim: float
    bits_per_dim_note: str
    parameters: int | None
    parameters_note: str
    compute: str
    gpus: int | None
    gpu_hours: float | None
    gpu_hours_how: str
    train: dict
    sources: dict
    unstated: dict
    deviations: list
    parameters_tolerance: float = PARAMETERS_TOLERANCE

    @property
    def model(self) -> str:
        return self.train["model"]

    @property
    def bits_per_dim_text(self) -> str:
        """The paper's figure with its digits: 2.90, 2.887."""
        v = self.bits_per_dim
        return f"{v:.2f}" if round(v, 2) == v else str(v)

    def required(self) -> list[str]:
        """The unstated settings a run of this recipe must be given (REQUIRED_IF_UNSTATED)."""
        return [f for f in REQUIRED_IF_UNSTATED if f in self.unstated]


def _check(name: str, entry) -> Recipe:
    """The recipe `name` of recipes.json, every key known and of its type, every training setting either set
    (with a source) or unstated; raises ValueError naming the first fault."""

    def bad(what: str):
        return ValueError(f"recipes.json: recipe {name!r}: {what}")

    if not isinstance(entry, dict):
        raise bad("must be an object")
    unknown = sorted(set(entry) - set(_KEYS))
    missing = sorted(set(_KEYS) - _OPTIONAL - set(entry))
    if unknown or missing:
        raise bad(f"unknown keys {unknown}, missing keys {missing}; keys: {', '.join(_KEYS)}")
    for key, kind in _KEYS.items():
        if key in entry:
            v = entry[key]
            ok = isinstance(v, kind) and not isinstance(v, bool)
            if kind is float:
                ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
            if not ok:
                raise bad(f"{key} must be {getattr(kind, '__name__', kind)}, got {v!r}")
    train, sources, unstated = entry["train"], entry["sources"], entry["unstated"]
    valid = {f.name for f in fields(TrainConfig)}
    for part, keys in (("train", train), ("sources", sources), ("unstated", unstated)):
        extra = sorted(set(keys) - valid)
        if extra:
            raise bad(f"{part} names unknown training settings {extra}")
    if not all(isinstance(v, str) and v for v in [*sources.values(), *unstated.values(), *entry["deviations"]]):
        raise bad("sources, unstated and deviations must hold non-empty strings")
    for key in ("model", "size", "dataset"):
        if key not in train:
            raise bad(f"train must set {key}")
    both = sorted(set(train) & set(unstated))
    neither = [f for f in TRAINING_FIELDS if f not in train and f not in unstated]
    if both or neither:
        raise bad(f"every training setting is either set or unstated: both {both}, neither {neither}")
    unsourced = sorted(set(train) - set(sources) - {"model", "dataset"})
    if unsourced:
        raise bad(f"settings without a source: {unsourced}")
    return Recipe(name=name, **copy.deepcopy(entry))


@functools.cache
def _load() -> dict[str, Recipe]:
    text = resources.files("pixelar").joinpath("recipes.json").read_text(encoding="utf-8")
    data = json.loads(text)
    if data.get("format") != 1 or not isinstance(data.get("recipes"), dict):
        raise ValueError("recipes.json: expected {'format': 1, 'recipes': {...}}")
    return {name: _check(name, entry) for name, entry in data["recipes"].items()}


def list_recipes() -> list[str]:
    return list(_load())


def get_recipe(name: str) -> Recipe:
    recipes = _load()
    if name not in recipes:
        raise ValueError(f"unknown recipe {shown(name)}; valid recipes: {', '.join(recipes)}")
    return recipes[name]


def recipe_config(name: str, settings: dict | None = None) -> TrainConfig:
    """The checked TrainConfig of recipe `name`, with `settings` (TrainConfig fields) on top: they win over the
    recipe's (model_overrides merge key by key). Raises ValueError if a setting the paper does not state and a
    run needs (Recipe.required) is not in `settings`."""
    recipe = get_recipe(name)
    settings = dict(settings or {})
    budget = settings.get("minutes") is not None  # a time budget chooses max_steps itself
    missing = [f for f in recipe.required() if settings.get(f) is None and not (f == "max_steps" and budget)]
    if missing:
        why = "; ".join(f"{f}: {recipe.unstated[f]}" for f in missing)
        raise ValueError(f"recipe {name!r} does not state {', '.join(missing)} ({why}); pass them as settings")
    d = copy.deepcopy(recipe.train)
    overrides = {**d.pop("model_overrides", {}), **settings.pop("model_overrides", {})}
    d.update(settings)
    d["model_overrides"] = overrides
    return TrainConfig.from_dict(d).validate()


CIFAR10 = ImageSpec(3, 32, 32, 256)


def num_parameters(cfg: TrainConfig) -> int:
    """The parameter count of cfg's model for CIFAR-10 images, built on the meta device (no memory for the
    weights, so paper-sized models cost nothing)."""
    with torch.device("meta"):
        if cfg.distaug:
            model = create_distaug_model(cfg.model, CIFAR10, cfg.size, cfg.distaug, **cfg.model_overrides)
        else:
            model = create_model(cfg.model, CIFAR10, cfg.size, **cfg.model_overrides)
    return model.num_parameters()
