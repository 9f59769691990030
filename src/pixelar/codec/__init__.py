"""Lossless compression with a model's probabilities: compiled entropy coders (constriction's range coder and
ANS stack, coders.py) driven by the per-sub-pixel conditionals of any model with a generation order
(images.py), or by a VAE's through bits-back coding (bits_back.py). Knows no model family. arithmetic.py and
ans.py are pure-Python coders kept as the tests' oracle."""

from .images import compress, decompress, decompress_segments, fingerprint, stream_info

__all__ = ["compress", "decompress", "decompress_segments", "fingerprint", "stream_info"]
