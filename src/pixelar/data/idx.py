"""Reader for the IDX format of MNIST and Fashion-MNIST (gzipped or not).

IDX layout: two zero bytes, a type code, the number of dimensions d, then d
big-endian uint32 sizes, then the data in C order (big-endian for multi-byte types).
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

# IDX type code -> numpy dtype (big-endian).
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file into a (writable, native-endian) numpy array.

    Gzip compression is detected from the content, not the file name.

    Raises:
        ValueError: naming the file, if it is not valid (bad gzip stream, bad magic
            number, unknown type, truncated or with trailing bytes).
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise ValueError(f"{path}: corrupt gzip data ({e})") from e
    return parse_idx(raw, str(path))


def parse_idx(raw: bytes, source: str = "<bytes>") -> np.ndarray:
    """Parse the bytes of an (uncompressed) IDX file; ``source`` names it in errors."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{source}: not an IDX file (bad magic number {raw[:4].hex() or 'empty'})")
    type_code, ndim = raw[2], raw[3]
    if type_code not in _IDX_DTYPES:
        raise ValueError(f"{source}: unknown IDX data type code 0x{type_code:02x}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{source}: truncated IDX header")
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[type_code]
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) < expected:
        raise ValueError(f"{source}: truncated IDX data ({len(raw)} bytes, header promises {expected})")
    if len(raw) > expected:
        raise ValueError(f"{source}: {len(raw) - expected} unexpected trailing bytes after IDX data")
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    # frombuffer views the read-only bytes; copy once so torch.from_numpy gets a
    # writable native-endian array.
    return data.astype(dtype.newbyteorder("="), copy=True)
