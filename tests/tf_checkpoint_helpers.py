"""A TensorFlow V2 checkpoint writer for tests (PREFIX.index + PREFIX.data-00000-of-00001), so that tests can
make files TensorFlow itself did not write: other layouts, missing or extra tensors, damaged files. The
fixtures TensorFlow wrote (tests/fixtures/openai_pixelcnn_pp) check that the reader reads TensorFlow's own
files; this writer is checked against them (test_converters_openai_pixelcnn_pp)."""

from __future__ import annotations

import struct

import numpy as np

DT = {np.float32: 1, np.float64: 2, np.int32: 3, np.int64: 9, np.float16: 19}
MAGIC = 0xDB4775248B80FB57


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field(number: int, value) -> bytes:
    """A proto field: an int as a varint, bytes length-delimited."""
    if isinstance(value, int):
        return varint(number << 3) + varint(value)
    return varint(number << 3 | 2) + varint(len(value)) + bytes(value)


def shape_proto(shape) -> bytes:
    return b"".join(field(2, field(1, int(d))) for d in shape)


def block(entries: list[tuple[bytes, bytes]]) -> bytes:
    """A table block of (key, value) entries, no prefix sharing, one restart point; with its trailer."""
    body = b"".join(varint(0) + varint(len(k)) + varint(len(v)) + k + v for k, v in entries)
    return body + struct.pack("<II", 0, 1) + b"\0" + b"\0\0\0\0"  # restarts [0], count 1; type 0, CRC unchecked


def table(entries: list[tuple[bytes, bytes]]) -> bytes:
    data = block(sorted(entries))
    meta_offset = len(data)
    meta = block([])
    index_offset = meta_offset + len(meta)
    last = max(k for k, _ in entries)
    index = block([(last, varint(0) + varint(len(data) - 5))])
    handles = varint(meta_offset) + varint(len(meta) - 5) + varint(index_offset) + varint(len(index) - 5)
    return data + meta + index + handles.ljust(40, b"\0") + struct.pack("<Q", MAGIC)


def write_v2(prefix, tensors: dict[str, np.ndarray]) -> None:
    """Write `tensors` (name -> array) as a V2 checkpoint at PREFIX.index / PREFIX.data-00000-of-00001."""
    data, entries = bytearray(), [(b"", field(1, 1) + field(3, field(1, 1)))]  # header: 1 shard, version
    for name, arr in tensors.items():
        arr = np.asarray(arr, order="C")  # (ascontiguousarray would make a scalar 1-d)
        raw = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
        entry = field(1, DT[arr.dtype.type]) + field(2, shape_proto(arr.shape)) + field(4, len(data))
        entries.append((name.encode(), entry + field(5, len(raw))))
        data += raw
    with open(f"{prefix}.index", "wb") as f:
        f.write(table(entries))
    with open(f"{prefix}.data-00000-of-00001", "wb") as f:
        f.write(data)
