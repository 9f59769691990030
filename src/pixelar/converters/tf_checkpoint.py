"""TensorFlow checkpoints read without TensorFlow: the tensors of a `tf.train.Saver` file by name.

Two formats, both built on the LevelDB table ("SSTable") that TensorFlow keeps its checkpoint indexes in:

- V1 (TensorFlow before 0.12, and `Saver(write_version=V1)`): one file, e.g. openai/pixel-cnn's
  params_cifar.ckpt. The table's "" entry is a SavedTensorSlices proto whose meta lists every tensor (name,
  shape, dtype, slices); every other entry is a SavedTensorSlices whose data holds one slice of one tensor as
  a TensorProto (values inline: float_val, ..., or tensor_content).
- V2 (the default since 0.12): PREFIX.index, a table of BundleEntryProto (dtype, shape, shard, offset, size)
  under each tensor's name ("" holds the BundleHeaderProto: shard count, byte order), and
  PREFIX.data-00000-of-0000N, the tensors' raw bytes.

The table (table/format.md of LevelDB): a 48-byte footer at the end (the handles, varint offset and size, of
the metaindex and index blocks, padding, the magic 0xdb4775248b80fb57); the index block maps each data
block's last key to its handle; a block is its entries (varint shared-prefix length, unshared length, value
length, the unshared key bytes, the value), restart offsets (uint32 each) and their count (uint32), followed
by a 5-byte trailer: compression type (0: none, which TensorFlow's checkpoint writers use) and a masked
CRC-32C. The CRCs are not checked (pure Python would take minutes on a 600 MB file): a damaged file shows as
an entry that does not parse or a tensor of the wrong size, and the card records the file's sha256.

The file is memory-mapped, and a tensor's bytes are read only when it is asked for (`TFCheckpoint[name]`), so
converting reads each tensor once and holds the file in no Python buffer. Protos are decoded by their wire
format (field number and wire type), with the field numbers of TensorFlow's .proto files named below.
"""

from __future__ import annotations

import mmap
import re
import struct
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import torch

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48

# types.proto DataType -> numpy dtype (the ones a model's weights and a training loop's counters use)
DTYPES = {
    1: np.float32,  # DT_FLOAT
    2: np.float64,  # DT_DOUBLE
    3: np.int32,  # DT_INT32
    4: np.uint8,  # DT_UINT8
    5: np.int16,  # DT_INT16
    6: np.int8,  # DT_INT8
    9: np.int64,  # DT_INT64
    10: np.bool_,  # DT_BOOL
    19: np.float16,  # DT_HALF
}
# TensorProto's repeated value fields (tensor.proto) by dtype: (field number, element as read off the wire)
VALUE_FIELDS = {
    np.float32: (5, "<f4"),  # float_val, packed fixed32
    np.float64: (6, "<f8"),  # double_val, packed fixed64
    np.int32: (7, "varint"),  # int_val
    np.uint8: (7, "varint"),
    np.int16: (7, "varint"),
    np.int8: (7, "varint"),
    np.int64: (10, "varint"),  # int64_val
    np.bool_: (11, "varint"),  # bool_val
    np.float16: (13, "varint"),  # half_val: each value's 16 bits in an int32
}


class CheckpointError(ValueError):
    pass


# ----- protobuf wire format ---------------------------------------------------------------------------------
def _varint(buf, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise CheckpointError("a varint runs past the end of its record")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise CheckpointError("a varint is longer than 10 bytes")


def _fields(buf) -> Iterator[tuple[int, int, object]]:
    """(field number, wire type, value) of a proto message: an int for varint/fixed fields, a memoryview for
    length-delimited ones (strings, bytes, sub-messages, packed repeated fields)."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = int.from_bytes(buf[pos : pos + 8], "little"), pos + 8
        elif wire == 2:
            n, pos = _varint(buf, pos)
            if pos + n > end:
                raise CheckpointError("a field runs past the end of its record")
            value, pos = buf[pos : pos + n], pos + n
        elif wire == 5:
            value, pos = int.from_bytes(buf[pos : pos + 4], "little"), pos + 4
        else:
            raise CheckpointError(f"wire type {wire} (field {number}) is not one TensorFlow's protos use")
        if pos > end:
            raise CheckpointError("a field runs past the end of its record")
        yield number, wire, value


def _message(buf) -> dict[int, list]:
    out: dict[int, list] = {}
    for number, _, value in _fields(buf):
        out.setdefault(number, []).append(value)
    return out


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _shape(buf) -> tuple[int, ...]:
    """TensorShapeProto: dim = 2 (Dim: size = 1), unknown_rank = 3."""
    m = _message(buf)
    if m.get(3, [0])[0]:
        raise CheckpointError("a tensor of unknown rank")
    return tuple(_signed(_message(d).get(1, [0])[0]) for d in m.get(2, []))


def _is_full_slice(buf, rank: int) -> bool:
    """TensorSliceProto: extent = 1 (Extent: start = 1, length = 2; no length: the whole dimension)."""
    extents = [_message(e) for e in _message(buf).get(1, [])]
    return len(extents) in (0, rank) and all(e.get(1, [0])[0] == 0 and 2 not in e for e in extents)


def _values(tensor_proto, dtype, shape, what: str) -> np.ndarray:
    """The values of a TensorProto (dtype = 1, tensor_shape = 2, tensor_content = 4, the *_val fields)."""
    m = _message(tensor_proto)
    count = int(np.prod(shape, dtype=np.int64))
    if 4 in m:
        arr = np.frombuffer(bytes(m[4][0]), np.dtype(dtype).newbyteorder("<"))
    else:
        number, element = VALUE_FIELDS[dtype]
        parts = []
        for v in m.get(number, []):
            if isinstance(v, int):  # one unpacked element
                parts.append(np.array([v]))
            elif element == "varint":
                vals, pos = [], 0
                while pos < len(v):
                    x, pos = _varint(v, pos)
                    vals.append(x)
                parts.append(np.array(vals, dtype=np.uint64))
            else:
                parts.append(np.frombuffer(v, element))
        arr = np.concatenate(parts) if parts else np.zeros(0, dtype)
        if dtype is np.float16:
            arr = arr.astype(np.uint16).view(np.float16)
        elif element == "varint":
            arr = arr.astype(np.uint64).astype(np.int64) if dtype is np.int64 else arr.astype(np.int64)
            arr = arr.astype(dtype)
        if arr.size == 1 and count > 1:  # TensorFlow stores a constant-filled tensor as its one value
            arr = np.full(count, arr[0], dtype)
    if arr.size != count:
        raise CheckpointError(f"{what} holds {arr.size} values, its shape {shape} needs {count}")
    return arr.astype(dtype, copy=False).reshape(shape)


# ----- the table --------------------------------------------------------------------------------------------
def _table(buf, what: str) -> Iterator[tuple[bytes, int, int]]:
    """(key, value offset, value length) of every entry of a LevelDB table held in `buf`, in key order."""
    if len(buf) < FOOTER_SIZE or struct.unpack_from("<Q", buf, len(buf) - 8)[0] != TABLE_MAGIC:
        raise CheckpointError(f"{what} is not a TensorFlow checkpoint table (no table footer at its end)")
    footer = memoryview(buf)[len(buf) - FOOTER_SIZE :]
    _, pos = _varint(footer, 0)  # the metaindex block's handle (unused: no filters in checkpoints)
    _, pos = _varint(footer, pos)
    index_offset, pos = _varint(footer, pos)
    index_size, _ = _varint(footer, pos)
    for _, offset, size in _block(buf, index_offset, index_size, what):
        handle = memoryview(buf)[offset : offset + size]
        block_offset, pos = _varint(handle, 0)
        block_size, _ = _varint(handle, pos)
        yield from _block(buf, block_offset, block_size, what)


def _block(buf, offset: int, size: int, what: str) -> Iterator[tuple[bytes, int, int]]:
    if offset + size + 5 > len(buf) or size < 4:
        raise CheckpointError(f"{what}: a table block lies outside the file (truncated or damaged)")
    if buf[offset + size] != 0:
        raise CheckpointError(
            f"{what}: a table block is compressed (type {buf[offset + size]}), which TensorFlow's checkpoint "
            "writers never do: the file is damaged or not a checkpoint"
        )
    view = memoryview(buf)[offset : offset + size]
    (num_restarts,) = struct.unpack_from("<I", view, size - 4)
    end = size - 4 * (num_restarts + 1)
    if end < 0:
        raise CheckpointError(f"{what}: a table block's restart array does not fit (damaged file)")
    pos, key = 0, b""
    while pos < end:
        shared, pos = _varint(view, pos)
        unshared, pos = _varint(view, pos)
        length, pos = _varint(view, pos)
        if shared > len(key) or pos + unshared + length > end:
            raise CheckpointError(f"{what}: a table entry runs past its block (damaged file)")
        key = key[:shared] + bytes(view[pos : pos + unshared])
        pos += unshared
        yield key, offset + pos, length
        pos += length


def _mapped(path: Path) -> mmap.mmap | bytes:
    with open(path, "rb") as f:
        try:
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # an empty file
            return b""


class TFCheckpoint(Mapping):
    """The tensors of a TensorFlow checkpoint (V1 file, or V2 PREFIX.index with its data files) by name, as
    torch tensors read when asked for; `shape(name)` and `dtype(name)` read only the index.

    path: the V1 file, or the V2 checkpoint's .index file (or a .data-* file, or the prefix they share).
    Raises CheckpointError (a ValueError) naming the file for a file that is neither, or a tensor this reader
    cannot read (a partitioned variable, a string tensor)."""

    def __init__(self, path):
        path = Path(path)
        prefix = _v2_prefix(path)
        self.format = "V2" if prefix is not None else "V1"
        self.path = path
        self._entries: dict[str, tuple] = {}
        self.data_files: list[Path] = []
        if prefix is not None:
            self._read_v2(prefix)
        else:
            self._read_v1(path)

    # V1: every slice of every tensor inline in the one table
    def _read_v1(self, path: Path) -> None:
        what = f"checkpoint {path}"
        self._buf = _mapped(path)
        meta, slices = None, {}
        for key, offset, length in _table(self._buf, what):
            record = _message(memoryview(self._buf)[offset : offset + length])  # SavedTensorSlices
            if key == b"":
                meta = record.get(1, [None])[0]  # meta = 1
                continue
            if 2 not in record:
                raise CheckpointError(f"{what}: entry {key[:40]!r} holds no tensor data")
            saved = _message(record[2][0])  # SavedSlice: name = 1, slice = 2, data = 3
            name = bytes(saved.get(1, [b""])[0]).decode("utf-8", "replace")
            slices.setdefault(name, []).append((saved.get(2, [b""])[0], saved.get(3, [b""])[0]))
        if meta is None:
            raise CheckpointError(f"{what} is a table without a checkpoint's tensor list: not a TensorFlow checkpoint")
        for t in _message(meta).get(1, []):  # SavedSliceMeta: name = 1, shape = 2, type = 3, slice = 4
            m = _message(t)
            name = bytes(m.get(1, [b""])[0]).decode("utf-8", "replace")
            dtype = _dtype(m.get(3, [0])[0], name, what)
            shape = _shape(m.get(2, [b""])[0])
            found = slices.get(name, [])
            if len(found) != 1 or not _is_full_slice(found[0][0], len(shape)):
                raise CheckpointError(
                    f"{what}: tensor {name!r} is stored in {len(found)} slices (a partitioned variable), "
                    "which this reader does not join: save it whole"
                )
            self._entries[name] = (dtype, shape, found[0][1])

    # V2: the index table, the bytes in the data files
    def _read_v2(self, prefix: str) -> None:
        index = Path(prefix + ".index")
        what = f"checkpoint {index}"
        if not index.is_file():
            raise CheckpointError(f"checkpoint index {index} not found (a V2 checkpoint is PREFIX.index + data)")
        buf = _mapped(index)
        num_shards, raw = 1, {}
        for key, offset, length in _table(buf, what):
            record = memoryview(buf)[offset : offset + length]
            if key == b"":  # BundleHeaderProto: num_shards = 1, endianness = 2 (0: little)
                header = _message(record)
                num_shards = header.get(1, [1])[0]
                if header.get(2, [0])[0] != 0:
                    raise CheckpointError(f"{what} was written big-endian, which this reader does not read")
            else:
                raw[key.decode("utf-8", "replace")] = bytes(record)
        self.data_files = [Path(f"{prefix}.data-{i:05d}-of-{num_shards:05d}") for i in range(num_shards)]
        for f in self.data_files:
            if not f.is_file():
                raise CheckpointError(f"{what}: its data file {f} is missing (keep the .index beside its .data files)")
        self._shards = [None] * num_shards
        for name, record in raw.items():
            m = _message(record)  # BundleEntryProto: dtype 1, shape 2, shard_id 3, offset 4, size 5, slices 7
            if 7 in m:
                raise CheckpointError(
                    f"{what}: tensor {name!r} is partitioned into slices, which this reader does not join"
                )
            dtype = _dtype(m.get(1, [0])[0], name, what)
            shape = _shape(m.get(2, [b""])[0])
            shard, offset, size = m.get(3, [0])[0], m.get(4, [0])[0], m.get(5, [0])[0]
            if shard >= num_shards:
                raise CheckpointError(f"{what}: tensor {name!r} is in shard {shard} of {num_shards}")
            self._entries[name] = (dtype, shape, (shard, offset, size))

    def _read(self, name: str) -> np.ndarray:
        dtype, shape, where = self._entries[name]
        what = f"checkpoint {self.path}: tensor {name!r}"
        if self.format == "V1":
            saved_data = where  # a TensorProto
            return _values(saved_data, dtype, shape, what)
        shard, offset, size = where
        if self._shards[shard] is None:
            self._shards[shard] = _mapped(self.data_files[shard])
        buf = self._shards[shard]
        count = int(np.prod(shape, dtype=np.int64))
        if size != count * np.dtype(dtype).itemsize or offset + size > len(buf):
            raise CheckpointError(f"{what}: {size} bytes at {offset} do not hold {shape} {np.dtype(dtype).name}")
        return np.frombuffer(buf, np.dtype(dtype).newbyteorder("<"), count, offset).astype(dtype).reshape(shape)

    def __iter__(self):
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key) -> bool:
        return key in self._entries

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entries[name][1]

    def dtype(self, name: str) -> np.dtype:
        return np.dtype(self._entries[name][0])

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self._entries:
            raise KeyError(name)
        return torch.from_numpy(np.array(self._read(name)))  # a copy: the mapping's pages are read-only


def _dtype(code: int, name: str, what: str):
    if code not in DTYPES:
        raise CheckpointError(f"{what}: tensor {name!r} has TensorFlow dtype {code}, not a numeric type read here")
    return DTYPES[code]


def _v2_prefix(path: Path) -> str | None:
    """The prefix of a V2 checkpoint that `path` names (PREFIX.index, PREFIX.data-*, or PREFIX with an index
    beside it), or None for a V1 file."""
    text = str(path)
    if text.endswith(".index"):
        return text[: -len(".index")]
    found = re.fullmatch(r"(.*)\.data-\d{5}-of-\d{5}", text)
    if found:
        return found.group(1)
    if not path.is_file() and Path(text + ".index").is_file():
        return text
    return None


__all__ = ["CheckpointError", "TFCheckpoint"]
