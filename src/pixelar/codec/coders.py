"""The entropy coders the codec runs on, compiled: constriction's range coder (the stepwise and latent codes of
images.py) and its ANS stack (bits-back coding, bits_back.py), driven by pixelar's integer frequency tables
(tables.quantize: cumulative counts of total 2^16, every value at least 1), many rows per call.

constriction (R. Bamler; Rust with Python bindings, pinned in pyproject.toml) codes with probabilities of
PRECISION = 24 bits, which it quantises itself from rows of floats. A table that moves by one count breaks a
stream, so what it quantises must be identical when coding and decoding: the rows it gets (`probabilities`)
are the integer tables' frequencies / 2^16 in float64, exact dyadic numbers that sum to exactly 1.
Categorical(perfect=False), set explicitly (constriction 0.5 still defaults to perfect=True, which gives
other bits), gives value s of a row of K the interval [floor(F_s * (2^24 - K)) + s, floor(F_(s+1) *
(2^24 - K)) + s + 1) of 2^24, F the running float sums of the row; on these rows every sum and product is
exact (integers below 2^40 over 2^16), so the 24-bit table is a function of the integer table alone, the same on every
platform and in both directions. Every value keeps at least 1 of 2^24 whatever its row (the "+ s"), and
one of frequency f >= 1 of 2^16 more than f * 2^8 * (1 - K / 2^24): coding costs at most -log2(1 - K / 2^24)
bits per symbol (2.2e-5 for K = 256) more than the integer table's -log2(f / 2^16), before the coder's own
overhead. Both coders write 32-bit words, stored big-endian.
"""

from __future__ import annotations

import hashlib

import constriction
import numpy as np
import torch

from .tables import TOTAL

# (attributes of the compiled module, not importable submodules)
_model, _queue, _stack = constriction.stream.model, constriction.stream.queue, constriction.stream.stack

PRECISION = 24  # bits of the probabilities constriction's default coders code with
WORD_BITS = 32  # both coders read and write 32-bit words
# perfect=False explicitly: constriction 0.5 still defaults to perfect=True (and warns), other bits
_CATEGORICAL = _model.Categorical(perfect=False)


def probabilities(cum) -> np.ndarray:
    """The rows constriction quantises, (r, K) float64, for cumulative tables cum (r, K + 1) of total TOTAL
    (tensor or array): frequency / TOTAL, exact. Refuses a table that would leave a value uncodable."""
    cum = cum.cpu().numpy() if isinstance(cum, torch.Tensor) else np.asarray(cum)
    return rows(np.diff(cum, axis=1))


def rows(freq: np.ndarray) -> np.ndarray:
    """probabilities() of the frequencies freq (r, K) int (tables.frequencies) themselves."""
    if freq.size and (freq.min() < 1 or (freq.sum(1) != TOTAL).any()):
        raise ValueError(f"a frequency table must give every value at least 1 of {TOTAL} and total {TOTAL}")
    return freq / TOTAL  # float64, C-contiguous: what constriction reads


class DamagedCode(ValueError):
    """Coded data that constriction refuses to decode (a damaged stream)."""


def _symbols(values) -> np.ndarray:
    v = values.cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    return np.ascontiguousarray(v.reshape(-1), dtype=np.int32)


def _to_bytes(words: np.ndarray) -> bytes:
    return words.astype(">u4").tobytes()


def _from_bytes(data: bytes, what: str) -> np.ndarray:
    if len(data) % 4:
        raise ValueError(f"{what} is {len(data)} bytes, not a whole number of 32-bit words: it is damaged")
    return np.frombuffer(data, dtype=">u4").astype(np.uint32)


# ----- the range coder (a queue: symbols come back in the order they went in) ----------------------------------
class RangeEncoder:
    """encode(cum, values) for each batch of symbols, then finish() -> bytes (4 per word)."""

    def __init__(self):
        self._coder = _queue.RangeEncoder()

    def encode(self, cum, values) -> None:
        """Code values (r,) int with the tables cum (r, K + 1), row 0 first."""
        self.encode_rows(probabilities(cum), values)

    def encode_rows(self, p: np.ndarray, values) -> None:
        """Code values (r,) with the rows p (r, K) of `probabilities` or `rows`."""
        self._coder.encode(_symbols(values), _CATEGORICAL, p)

    def finish(self) -> bytes:
        return _to_bytes(self._coder.get_compressed())


class RangeDecoder:
    """decode(cum) -> values for each batch, in the encoder's order; then exact() says whether the data are
    exactly the code of what was decoded. constriction's decoder cannot tell where its data end (it reads
    zeros past them, and a word appended at the end may change no symbol), so a twin encoder re-codes every
    decoded batch: data that end early, run on, or were altered differ from that code."""

    def __init__(self, data: bytes):
        self._words = _from_bytes(data, "a range-coded segment")
        self._coder = _queue.RangeDecoder(self._words)
        self._twin = _queue.RangeEncoder()

    def decode(self, cum) -> np.ndarray:
        """Values (r,) int64 of the next r symbols, coded with the tables cum (r, K + 1)."""
        return self.decode_rows(probabilities(cum))

    def decode_rows(self, p: np.ndarray) -> np.ndarray:
        """decode() with the rows p (r, K) of `probabilities` or `rows`."""
        try:
            values = self._coder.decode(_CATEGORICAL, p)
        except (AssertionError, ValueError) as e:  # constriction's "invalid data" is an AssertionError
            raise DamagedCode(f"the range coder cannot decode it ({e})") from None
        self._twin.encode(values, _CATEGORICAL, p)
        return values.astype(np.int64)

    def exact(self) -> bool:
        return np.array_equal(self._twin.get_compressed(), self._words)

    def coded_bytes(self) -> int:
        """Bytes of the code of what was decoded so far (what the encoder wrote for it)."""
        return 4 * self._twin.num_words()


# ----- the ANS stack, over a fixed pseudo-random pool -----------------------------------------------------------
def pool_words(start: int, count: int) -> np.ndarray:
    """Words start .. start + count - 1 (uint32) of the fixed pseudo-random pool below every stack: SHA-256 in
    counter mode, eight words per block, the same on every platform."""
    if count <= 0:
        return np.zeros(0, dtype=np.uint32)
    first, last = start // 8, (start + count - 1) // 8
    blocks = b"".join(
        hashlib.sha256(b"pixelar ans pool" + b.to_bytes(8, "big")).digest() for b in range(first, last + 1)
    )
    offset = start - 8 * first
    return np.frombuffer(blocks, dtype=">u4")[offset : offset + count].astype(np.uint32)


def _pool_stack(count: int) -> np.ndarray:
    """The stack of pool words 0 .. count - 1 as constriction holds it (bottom first): word 0 on top, with
    its top bit set, so that words 0 and 1 make a head in [2^63, 2^64)."""
    words = pool_words(0, count)[::-1].copy()
    words[-1] |= np.uint32(1 << 31)
    return words


class Stack:
    """constriction's ANS stack (AnsCoder: a 64-bit head over 32-bit words): the last symbol pushed is the
    first popped, as bits-back coding needs (popping a symbol with a distribution q draws it from q with the
    bits on the stack, pushing it back restores them).

    `Stack()` starts a coder on the pool: its pops past what was pushed read pool words, which a receiver
    never needs (its pushes regenerate them, which `check_start` verifies), so `to_bytes` leaves out the pool
    words never read. Before a pop of r symbols the coder makes sure r pool words lie below (a pop reads at most
    one word per symbol), rebuilding the stack on a deeper pool where they do not: constriction's stack reads
    nothing below an empty bulk, and its pops must never get there. `Stack(data)` starts a decoder on a
    stream's bytes, with no pool below: popping past them reads nothing, and `check_start` fails."""

    _START = 1024  # pool words under a new coder's stack, deepened as its pops need

    def __init__(self, data: bytes | None = None):
        self._pool = self._used = 0  # pool words under (and in) the stack; the most consumed at once
        self._from_pool = data is None
        if self._from_pool:
            self._coder = _stack.AnsCoder(_pool_stack(self._START))
            self._pool = self._START
            return
        words = _from_bytes(data, "a bits-back stack")
        if len(words) < 2:
            raise ValueError(f"a bits-back stack holds a 2-word head, not {len(data)} bytes: it is damaged")
        try:
            self._coder = _stack.AnsCoder(words)
        except ValueError:  # its top word is 0: no stack a coder writes ends so (its head is >= 2^32)
            raise ValueError("the bits-back stack's head is out of range: it is damaged") from None

    def to_bytes(self) -> bytes:
        """The stack's words from the bottom up, less the pool words under it that it never read."""
        words = self._coder.get_compressed()
        kept = self._pool - 2 - self._used  # untouched pool words at the bottom (the head took words 0 and 1)
        assert np.array_equal(words[:kept], _pool_stack(self._pool)[:kept]), "the pool under the stack changed"
        return _to_bytes(words[kept:])

    def num_bits(self) -> int:
        """Bits of to_bytes()."""
        return WORD_BITS * (self._coder.num_words() - (self._pool - 2 - self._used if self._from_pool else 0))

    @property
    def pool_used(self) -> int:
        """Pool words consumed (below the start head): the start-up cost of bits-back coding, in words."""
        return self._used

    def check_start(self) -> bool:
        """True when a decoder is back where its coder started: the start head over the pool words that the
        coder's pops consumed (regenerated by the decoder's pushes)."""
        words = self._coder.get_compressed()
        return len(words) >= 2 and np.array_equal(words, _pool_stack(len(words)))

    def _reserve(self, r: int) -> None:
        """At least r words in the stack's bulk (below its head), by more pool words underneath if need be."""
        bulk = self._coder.num_words() - 2
        if not self._from_pool or bulk >= r:
            return
        extra = max(r - bulk, self._pool)  # doubling: a few rebuilds while the first image drains the pool
        deeper = _pool_stack(self._pool + extra)[:extra]  # the pool words below the present bottom
        self._coder = _stack.AnsCoder(np.concatenate([deeper, self._coder.get_compressed()]))
        self._pool += extra

    def _popped(self) -> None:
        if self._from_pool:  # a pop's deepest point is its end: pops only take words
            self._used = max(self._used, self._pool - self._coder.num_words())

    # ----- rows of symbols, each with its own table: push and pop are inverses -----------------------------------
    def push(self, cum, values) -> None:
        """Push values (r,) with tables cum (r, K + 1), the last row first, so that pop(cum) pops them back in
        row order."""
        self._coder.encode_reverse(_symbols(values), _CATEGORICAL, probabilities(cum))

    def pop(self, cum) -> np.ndarray:
        """Pop r symbols with tables cum (r, K + 1), row 0 first: what the bits on the stack decode to. -> (r,)"""
        self._reserve(len(cum))
        values = self._coder.decode(_CATEGORICAL, probabilities(cum))
        self._popped()
        return values.astype(np.int64)

    def push_uniform(self, values, bits: int) -> None:
        """Push values (r,) in [0, 2^bits), each with probability 2^-bits (exactly `bits` bits each: 2^bits
        divides 2^24), the last first, so that pop_uniform pops them back in order."""
        self._coder.encode_reverse(_symbols(values), _model.Uniform(1 << bits))

    def pop_uniform(self, count: int, bits: int) -> np.ndarray:
        """Pop count values with probability 2^-bits each, in order. -> (count,)"""
        self._reserve(count)
        values = self._coder.decode(_model.Uniform(1 << bits), count)
        self._popped()
        return values.astype(np.int64)
