"""Lossless compression with a model's probabilities: an arithmetic coder (arithmetic.py) driven by the
per-sub-pixel conditionals of any model with a generation order (images.py). Knows no model family."""

from .images import compress, decompress, decompress_segments, fingerprint, stream_info

__all__ = ["compress", "decompress", "decompress_segments", "fingerprint", "stream_info"]
