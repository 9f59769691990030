"""ImageSpec: the one description of "an image" shared by data, models and metrics."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class ImageSpec:
    """Shape and value range of the images a model handles.

    Args:
        channels: 1 (grayscale) or 3 (RGB).
        height, width: spatial size in pixels.
        num_values: number of discrete values per sub-pixel (256 for 8-bit, 2 for binarized).
    """

    channels: int
    height: int
    width: int
    num_values: int = 256

    def __post_init__(self) -> None:
        for name in ("channels", "height", "width", "num_values"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool):
                raise ValueError(f"ImageSpec.{name} must be an int, got {v!r}")
        if self.channels not in (1, 3):
            raise ValueError(f"ImageSpec.channels must be 1 or 3, got {self.channels}")
        if self.height < 1 or self.width < 1:
            raise ValueError(f"ImageSpec height and width must be >= 1, got {self.height}x{self.width}")
        if self.num_values < 2:
            raise ValueError(f"ImageSpec.num_values must be >= 2, got {self.num_values}")

    @property
    def dims(self) -> int:
        """Number of sub-pixels C*H*W: the denominator of bits/dim."""
        return self.channels * self.height * self.width

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, self.height, self.width)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ImageSpec:
        """The inverse of to_dict; ValueError (not a silent int() conversion) for anything else."""
        keys = ("channels", "height", "width", "num_values")
        if not isinstance(d, dict) or any(k not in d for k in keys):
            raise ValueError(f"an image must be an object with the integers {', '.join(keys)}, got {d!r}")
        return cls(**{k: d[k] for k in keys})


def bits_per_dim(nats, image: ImageSpec | int):
    """Convert nats (negative log-likelihood, scalar or tensor) of an image, or of `image` sub-pixels when it is
    a count (e.g. a hidden region), to bits per sub-pixel."""
    dims = image if isinstance(image, int) else image.dims
    return nats / (dims * math.log(2))
