"""Binary arithmetic coding with integer frequency tables (Witten, Neal and Cleary 1987, "Arithmetic coding for
data compression", CACM 30(6)), 32-bit registers, in pure Python.

A test oracle only: no user path runs it (the codec codes with constriction's compiled range coder,
coders.py); the tests compare that coder's rates against this one's.

A symbol is coded with its cumulative frequency interval [lo, hi) out of `total`; totals up to 2**16 keep the
interval arithmetic exact (the range never drops below a quarter of 2**32). The encoder's output is within
2 bits plus the byte padding of the ideal -log2(freq / total) summed over the symbols.
`tables.quantize` turns probabilities into such tables; encoder and decoder must build identical tables.
"""

from __future__ import annotations

from .tables import TOTAL

BITS = 32
_FULL = (1 << BITS) - 1
_HALF = 1 << (BITS - 1)
_QUARTER = 1 << (BITS - 2)


class Encoder:
    """encode(lo, hi, total) for each symbol, then finish() -> bytes."""

    def __init__(self):
        self.low, self.high, self.pending = 0, _FULL, 0
        self.bits: list[int] = []

    def _emit(self, bit: int) -> None:
        self.bits.append(bit)
        self.bits.extend([1 - bit] * self.pending)
        self.pending = 0

    def encode(self, lo: int, hi: int, total: int) -> None:
        if not 0 <= lo < hi <= total <= TOTAL:
            raise ValueError(f"bad frequency interval [{lo}, {hi}) of {total}")
        span = self.high - self.low + 1
        self.high = self.low + span * hi // total - 1
        self.low = self.low + span * lo // total
        while True:
            if self.high < _HALF:
                self._emit(0)
            elif self.low >= _HALF:
                self._emit(1)
                self.low -= _HALF
                self.high -= _HALF
            elif self.low >= _QUARTER and self.high < 3 * _QUARTER:
                self.pending += 1
                self.low -= _QUARTER
                self.high -= _QUARTER
            else:
                break
            self.low = 2 * self.low
            self.high = 2 * self.high + 1

    def finish(self) -> bytes:
        """Two more bits select a point inside the final interval; pad to whole bytes with zeros."""
        self.pending += 1
        self._emit(0 if self.low < _QUARTER else 1)
        bits = self.bits + [0] * (-len(self.bits) % 8)
        return bytes(int("".join(map(str, bits[i : i + 8])), 2) for i in range(0, len(bits), 8))


class Decoder:
    """decode(cum, total) -> symbol index for each symbol, in the encoder's order; cum (K + 1) ints."""

    def __init__(self, data: bytes):
        self.data, self.pos = data, 0
        self.low, self.high, self.value = 0, _FULL, 0
        for _ in range(BITS):
            self.value = 2 * self.value + self._bit()

    def _bit(self) -> int:
        byte, k = divmod(self.pos, 8)
        self.pos += 1
        return (self.data[byte] >> (7 - k)) & 1 if byte < len(self.data) else 0  # zeros past the end

    def bytes_used(self) -> int:
        """The bytes the encoder wrote for the symbols decoded so far: the decoder reads BITS bits ahead and one
        per renormalising shift, the encoder writes one bit per shift (the same shifts, on the same interval)
        plus the two of finish(), padded to whole bytes."""
        return (self.pos - BITS + 2 + 7) // 8

    def decode(self, cum: list[int], total: int) -> int:
        span = self.high - self.low + 1
        target = ((self.value - self.low + 1) * total - 1) // span  # the cumulative count the value falls in
        # the symbol s with cum[s] <= target < cum[s + 1] (binary search over the cumulative table)
        a, b = 0, len(cum) - 1
        while b - a > 1:
            mid = (a + b) // 2
            if cum[mid] <= target:
                a = mid
            else:
                b = mid
        s = a
        self.high = self.low + span * cum[s + 1] // total - 1
        self.low = self.low + span * cum[s] // total
        while True:
            if self.high < _HALF:
                pass
            elif self.low >= _HALF:
                self.value -= _HALF
                self.low -= _HALF
                self.high -= _HALF
            elif self.low >= _QUARTER and self.high < 3 * _QUARTER:
                self.value -= _QUARTER
                self.low -= _QUARTER
                self.high -= _QUARTER
            else:
                break
            self.low = 2 * self.low
            self.high = 2 * self.high + 1
            self.value = 2 * self.value + self._bit()
        return s
