"""Model families. Importing this package registers every model."""

from . import (  # noqa: F401  (registration on import)  # noqa: F401  (attention models)
    aux_pixelcnn,
    gated_pixelcnn,
    image_gpt,
    image_transformer,
    lmconv,
    pixelcnn,
    pixelcnn_pp,
    pixelsnail,
    sparse_transformer,
    vdvae,
    vqvae,
)
from .base import ARImageModel, LatentImageModel
from .compiled import compile_available, compiled_log_prob, compiled_objective
from .distaug import DistAugModel, create_distaug_model
from .persistence import load_model
from .registry import SIZES, create_model, list_models, preset

__all__ = [
    "ARImageModel",
    "LatentImageModel",
    "DistAugModel",
    "create_distaug_model",
    "compile_available",
    "compiled_log_prob",
    "compiled_objective",
    "create_model",
    "list_models",
    "load_model",
    "preset",
    "SIZES",
]
