"""PNG files written chunk by chunk, for the image-reading tests (image files and image-folder datasets): what
Pillow cannot write (16-bit colour) or should not decode (a large header over a few bytes of pixels)."""

from __future__ import annotations

import struct
import zlib

import numpy as np


def write_png(path, width, height, bit_depth, colour_type, raw: bytes) -> None:
    """A PNG of the given header over the pixel rows `raw` (each row a filter byte, then its samples)."""

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )


def write_png16(path, arr: np.ndarray) -> None:
    """uint16 (H, W, C) as a 16-bit PNG: C = 1 grey, 2 grey + alpha, 3 RGB, 4 RGBA."""
    H, W, C = arr.shape
    rows = arr.astype(">u2").reshape(H, -1)
    write_png(path, W, H, 16, {1: 0, 2: 4, 3: 2, 4: 6}[C], b"".join(b"\0" + r.tobytes() for r in rows))
