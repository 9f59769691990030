"""pixelar: autoregressive image models with exact bits/dim.

Public API (stable)::

    pixelar.list_models(); pixelar.ImageSpec(channels, height, width, num_values=256)
    model = pixelar.create_model(name, image, size="tiny", **overrides)
    model.log_prob(x, cond=None, reduce=True); model.generation_order(); model.sample(n, ...)
    model.save(path); pixelar.load_model(path); pixelar.bits_per_dim(nats, image)
    pixelar.load_model("fashion_mnist-pixelcnn_pp")  # a pretrained model: pixelar.pretrained.names()
    pixelar.codec.compress(model, x); pixelar.codec.decompress(model, data)
    model = pixelar.convert("pclucas14-pixelcnn_pp", "pcnn.pth")  # a published checkpoint: pixelar.converters
"""

from . import codec, converters, pretrained
from .converters import convert
from .models import create_model, list_models, load_model
from .types import ImageSpec, bits_per_dim

__version__ = "0.1.0"
__all__ = [
    "ImageSpec",
    "bits_per_dim",
    "codec",
    "convert",
    "converters",
    "create_model",
    "list_models",
    "load_model",
    "pretrained",
    "__version__",
]
