"""Saving and loading a model directory: config.json (architecture) + model.safetensors (weights, with their
digest, checked by every load; see pixelar.io.read_tensors)."""

from __future__ import annotations

from pathlib import Path

from .. import pretrained
from ..io import read_json, read_tensors, write_json, write_tensors
from ..types import ImageSpec
from .registry import build_model, wrappers

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CONFIG_FORMAT = "pixelar-model"
CONFIG_VERSION = 1


def save_model_dir(model, path) -> None:
    pretrained.refuse_name(path, "model directory")  # before Path(): "./NAME" is a path, "NAME" a pretrained name
    path = Path(path)
    write_tensors(path / WEIGHTS_NAME, model.state_dict(), digest=True)
    write_json(path / CONFIG_NAME, model.config())


def model_from_config(cfg: dict, source: str = "config"):
    """Build the (untrained) model a config describes; ValueError naming `source` for anything malformed.

    {"format", "version", "model", "image", "hparams"} build a registered model; a key of a registered wrapper
    (e.g. "distaug") then wraps it, built from its own section (see registry.register_wrapper)."""
    if (
        not isinstance(cfg, dict)
        or cfg.get("format") != CONFIG_FORMAT
        or not all(k in cfg for k in ("model", "image", "hparams"))
    ):
        raise ValueError(
            f"{source} is not a pixelar model config (needs format={CONFIG_FORMAT!r}, model, image, hparams)"
        )
    try:
        model = build_model(cfg["model"], ImageSpec.from_dict(cfg["image"]), cfg["hparams"])
        for key, wrapper in wrappers().items():
            if key in cfg:
                model = wrapper.from_config(model, cfg[key])
        return model
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from None


def load_model(path, map_location: str = "cpu"):
    """Load a model saved with `model.save(path)`, a training run directory, or a pretrained model by name
    (pixelar.pretrained.names(); an existing path wins over a name). Never executes code."""
    path = pretrained.resolve(path)  # FileNotFoundError listing the pretrained names when neither exists
    cfg = read_json(path / CONFIG_NAME, "model config")
    model = model_from_config(cfg.get("model_config", cfg), str(path / CONFIG_NAME))
    pretrained.check_weights(path)  # a pretrained model's weights against its card's sha256
    state = read_tensors(path / WEIGHTS_NAME, "model weights")  # against the digest stored in the file
    # damaged bytes or a diverged run: refuse here, or every likelihood would silently come out NaN
    bad = next((k for k in sorted(state) if state[k].is_floating_point() and not bool(state[k].isfinite().all())), None)
    if bad is not None:
        raise ValueError(
            f"model weights {path / WEIGHTS_NAME} contain non-finite values (NaN or inf), first in "
            f"tensor {bad!r}: the file is damaged or was saved from a diverged run"
        )
    missing, unexpected = model.state_dict().keys() - state.keys(), state.keys() - model.state_dict().keys()
    if missing or unexpected:
        raise ValueError(
            f"model weights {path / WEIGHTS_NAME} do not match config.json: "
            f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"model weights {path / WEIGHTS_NAME} do not match config.json: {e}") from None
    return model.to(map_location).eval()
