"""Lossless compression (pixelar.codec): the arithmetic coder on its own, then every model with a generation
order as its probability model: decompress(compress(x)) == x for arbitrary images, and the stream costs the
model's -log2 p(x) bits up to the frequency-table rounding and the coder's termination."""

import math
import struct

import constriction
import numpy as np
import pytest
import torch
from codec_helpers import (
    constriction_tables,
    differs_on_two_threads,
    ideal_bits,
    perturbed,
    random_images,
    round_trip_across_thread_counts,
)

import pixelar
from pixelar import ImageSpec
from pixelar.codec import compress, decompress, stream_info
from pixelar.codec.ans import ANS
from pixelar.codec.arithmetic import Decoder, Encoder
from pixelar.codec.coders import PRECISION, RangeDecoder, RangeEncoder, Stack, probabilities
from pixelar.codec.images import _HEADER, SEGMENT_IMAGES, _coding_steps
from pixelar.codec.tables import TOTAL, coder_rows, frequencies, quantize
from pixelar.errors import ArgumentValueError
from pixelar.models.distaug import create_distaug_model

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


# ----- the coders ---------------------------------------------------------------------------------------------
def random_tables(K: int, sharpness: float, rows: int = 2000):
    """Integer tables (rows, K + 1) of softmax(sharpness * N(0, 1)) and values not drawn from them (improbable
    values too)."""
    g = torch.Generator().manual_seed(K)
    probs = torch.softmax(sharpness * torch.randn(rows, K, generator=g, dtype=torch.float64), dim=-1)
    return quantize(probs), torch.randint(0, K, (rows,), generator=g)


def oracle_bytes(cum: torch.Tensor, symbols: torch.Tensor) -> bytes:
    """The pure-Python arithmetic coder's code of symbols (the test oracle)."""
    enc = Encoder()
    for row, s in zip(cum.tolist(), symbols.tolist()):
        enc.encode(row[s], row[s + 1], TOTAL)
    return enc.finish()


@pytest.mark.parametrize("K,sharpness", [(2, 1.0), (16, 3.0), (256, 1.0), (256, 30.0)])
def test_arithmetic_coder_round_trips_at_the_ideal_length(K, sharpness):
    """The oracle: the pure-Python coder that streams of version 2 were written with."""
    cum, symbols = random_tables(K, sharpness)
    assert torch.equal(cum[:, 0], torch.zeros(2000, dtype=torch.long)) and bool((cum[:, -1] == TOTAL).all())
    assert bool((cum.diff(dim=1) >= 1).all()), "every value keeps a frequency of at least 1"
    data = oracle_bytes(cum, symbols)
    ideal = ideal_bits(cum, symbols, tables=None)
    assert ideal <= 8 * len(data) <= ideal + 2 + 7  # two termination bits and the byte padding
    dec = Decoder(data)
    assert [dec.decode(row, TOTAL) for row in cum.tolist()] == symbols.tolist()
    assert dec.bytes_used() == len(data)  # the decoder knows where the encoder's output ends


@pytest.mark.parametrize("K,sharpness", [(2, 1.0), (16, 3.0), (256, 1.0), (256, 30.0)])
def test_range_coder_round_trips_at_the_ideal_length(K, sharpness):
    """constriction's range coder, 16 rows a call as the codec calls it: the code length of the 24-bit tables
    plus at most the two words of its seal and a little for its range's truncation, within a few bytes of
    the oracle's; the decoder gets the values back and knows the data are exactly their code."""
    cum, symbols = random_tables(K, sharpness)
    enc = RangeEncoder()
    for k in range(0, len(cum), 16):
        enc.encode(cum[k : k + 16], symbols[k : k + 16])
    data = enc.finish()
    ideal = ideal_bits(cum, symbols)
    assert ideal <= 8 * len(data) <= ideal + 64 + 1e-3 * len(cum)
    # at most -log2(1 - K / 2^24) bits a value above the integer tables' own length (coders.py)
    assert ideal <= ideal_bits(cum, symbols, tables=None) - len(cum) * math.log2(1 - K / 2**24)
    assert abs(len(data) - len(oracle_bytes(cum, symbols))) <= 9
    dec = RangeDecoder(data)
    back = np.concatenate([dec.decode(cum[k : k + 16]) for k in range(0, len(cum), 16)])
    assert back.tolist() == symbols.tolist() and dec.exact()
    for other in (data + bytes(4), data[:-4], data[:-4] + bytes([data[-4] ^ 1]) + data[-3:]):
        dec = RangeDecoder(other)  # a word more, a word less, a flipped bit in the last word
        try:
            for k in range(0, len(cum), 16):
                dec.decode(cum[k : k + 16])
        except ValueError:
            continue  # constriction refused it
        assert not dec.exact()
    with pytest.raises(ValueError, match="not a whole number of 32-bit words"):
        RangeDecoder(data[:-1])


def quantile_value(probs: np.ndarray, q: int) -> int:
    """The value constriction's range decoder reads at quantile q of 2^24 with the row probs (K,): a fresh
    decoder's range is 2^64 - 1, so the point q * ((2^64 - 1) >> 24) is quantile q exactly."""
    point = q * (((1 << 64) - 1) >> PRECISION)
    dec = constriction.stream.queue.RangeDecoder(np.array([point >> 32, point & 0xFFFFFFFF], dtype=np.uint32))
    return int(dec.decode(constriction.stream.model.Categorical(perfect=False), probs[None])[0])


def extreme_table(K: int) -> torch.Tensor:
    """One value (K // 2) certain: quantize leaves the others 1 of 2^16 each. -> (1, K + 1)"""
    probs = torch.zeros(1, K, dtype=torch.float64)
    probs[0, K // 2] = 1
    return quantize(probs)


@pytest.mark.parametrize("K", [2, 16, 256])
def test_constriction_codes_with_the_24_bit_tables_coders_derives(K):
    """What constriction quantises is a function of the integer table alone, the one coders.py documents
    (codec_helpers.constriction_tables): each value's interval of 2^24, read off the decoder at both its
    ends, for an extreme table (one value near-certain, the rest 1 of 2^16) and a random one. Every value
    keeps a nonzero probability."""
    for cum in (extreme_table(K), random_tables(K, 3.0, rows=1)[0]):
        freq = constriction_tables(cum)[0]
        assert freq.min() >= 1 and freq.sum() == 1 << PRECISION
        if K > 2:  # the 1-of-2^16 values get about 2^8 of 2^24, never less than 1
            assert sorted(freq)[0] >= 255
        left = np.concatenate([[0], np.cumsum(freq)[:-1]])
        probs = probabilities(cum)[0]
        for s in range(K):
            assert quantile_value(probs, int(left[s])) == s
            assert quantile_value(probs, int(left[s] + freq[s] - 1)) == s


@pytest.mark.parametrize("K", [2, 256])
def test_an_extreme_table_codes_every_value(K):
    """One value near-certain (the others 1 of 2^16): every value, coded among long runs of the certain one,
    round-trips on both coders at the 24-bit tables' length; the certain one costs almost nothing."""
    cum = extreme_table(K)
    values = torch.tensor([K // 2] * 1000 + list(range(K)) + [K // 2] * 1000)
    rows = cum.expand(len(values), -1)
    enc = RangeEncoder()
    enc.encode(rows, values)
    data = enc.finish()
    dec = RangeDecoder(data)
    assert dec.decode(rows).tolist() == values.tolist() and dec.exact()
    ideal = ideal_bits(rows, values)
    assert ideal <= 8 * len(data) <= ideal + 64 + 1e-3 * len(values)
    assert ideal_bits(rows[:1000], values[:1000]) < 1000 * 2 * K / 2**16  # 2e-5 bits each for K = 2
    stack = Stack()
    stack.push(rows, values)
    back = Stack(stack.to_bytes())
    assert back.pop(rows).tolist() == values.tolist() and back.check_start()


def test_quantize_keeps_zero_probabilities_codable_and_refuses_huge_alphabets():
    cum = quantize(torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=torch.float64))
    assert cum.tolist() == [[0, TOTAL - 3, TOTAL - 2, TOTAL - 1, TOTAL]]
    with pytest.raises(ValueError, match="symbols per table"):
        quantize(torch.ones(1, TOTAL))


# ----- models as probability models --------------------------------------------------------------------------------
# grayscale_pixelcnn has no single order; the latent-variable models have their own schemes
# (test_codec_vqvae.py, test_codec_bits_back.py)
CODABLE = [
    n
    for n in pixelar.list_models()
    if n != "grayscale_pixelcnn" and pixelar.models.registry.model_class(n).likelihood == "exact"
]
SPECS = [ImageSpec(1, 5, 4, 16), ImageSpec(3, 4, 4, 8)]


def tiny(name, spec, scale=0.2, **kw):
    return perturbed(name, spec, scale, **kw)


def images_for(model, n=3, seed=0):
    """Arbitrary images of the model's data image (palette models: colours from a fitted lossless palette)."""
    d = model.data_image
    g = torch.Generator().manual_seed(seed)
    if model.tokenizer is None:
        return torch.randint(0, d.num_values, (n, *d.shape), generator=g)
    x = torch.randint(0, 2, (n, 1, d.height, d.width), generator=g).expand(n, d.channels, d.height, d.width)
    x = (x * (d.num_values - 1)).contiguous()  # black and white: a palette of two colours or more is exact
    model.tokenizer.fit(x, seed=0)
    return x


def payload_bound(model, x, cond=None) -> float:
    """-log2 p(x) of the model plus what the frequency tables and the coder may add: per symbol the 2^16
    tables' rounding, and 1e-3 bits for the 24-bit ones' (at most 2.2e-5) and the range's truncation (its range
    is at least 2^32, cut to multiples of 2^-24 of it); per segment of up to SEGMENT_IMAGES images the range
    coder's seal, at most two 32-bit words."""
    with torch.no_grad():
        nats = -model.log_prob(model.encode(x), cond).sum().item()
    C, H, W = model.image.shape
    K, steps = model.image.num_values, x.shape[0] * C * H * W
    segments = -(-x.shape[0] // SEGMENT_IMAGES)
    return nats / math.log(2) + steps * (-math.log2(1 - K / TOTAL) + 1e-3) + segments * 64


def payload(data: bytes, n: int) -> int:
    """Bytes of the coded segments: the stream less its header and the segment lengths."""
    assert stream_info(data)["n"] == n
    return len(data) - _HEADER.size - 4 * len(stream_info(data)["segments"])


@pytest.mark.parametrize("spec", SPECS, ids=str)
@pytest.mark.parametrize("name", CODABLE)
def test_every_model_compresses_losslessly_at_its_likelihood(name, spec):
    model = tiny(name, spec)
    x = images_for(model)
    data = compress(model, x)
    assert torch.equal(decompress(model, data), x)
    assert 8 * payload(data, len(x)) <= payload_bound(model, x)


def test_conditioning_distaug_another_order_and_palette_tokens():
    spec = SPECS[1]
    model = tiny("pixelcnn_pp", spec, num_classes=3)
    x, cond = images_for(model), torch.tensor([2, 0, 1])
    data = compress(model, x, cond)
    assert torch.equal(decompress(model, data, cond), x)
    assert 8 * payload(data, len(x)) <= payload_bound(model, x, cond)
    da = create_distaug_model("pixelcnn_pp", spec, "tiny", ["rot90"]).eval()  # codes through the identity
    assert torch.equal(decompress(da, compress(da, x)), x)
    lm = tiny("lmconv", spec).set_order(5)  # any generation order
    assert torch.equal(decompress(lm, compress(lm, x)), x)
    gpt = tiny("image_gpt", ImageSpec(3, 4, 4, 256), palette=4)  # codes palette tokens, exact for these images
    x = images_for(gpt)
    data = compress(gpt, x)
    assert torch.equal(decompress(gpt, data), x) and 8 * payload(data, len(x)) <= payload_bound(gpt, x)


def test_bad_streams_and_models_are_refused():
    spec = SPECS[0]
    model = tiny("pixelcnn_pp", spec)
    x = images_for(model)
    data = compress(model, x)
    with pytest.raises(ValueError, match="another model or other weights"):
        decompress(tiny("pixelcnn_pp", spec, scale=0.3), data)
    with pytest.raises(ValueError, match="holds 1x5x4 images"):
        decompress(tiny("pixelcnn_pp", ImageSpec(1, 4, 4, 16)), data)
    with pytest.raises(ValueError, match="not a pixelar compressed stream"):
        decompress(model, b"GIF89a" + data[6:])
    damaged = bytearray(data)
    damaged[_HEADER.size + 4 * len(stream_info(data)["segments"]) + 3] ^= (
        0x10  # one flipped bit in the coded sub-pixels
    )
    with pytest.raises(ValueError, match="stream is damaged"):  # its segment's end, or else the checksum
        decompress(model, bytes(damaged))
    damaged = bytearray(data)
    start = _HEADER.size + 4 * len(stream_info(data)["segments"])
    damaged[start : start + 8] = b"\xff" * 8  # a point past every interval: constriction refuses to decode it
    with pytest.raises(ValueError, match="^segment 0 does not decode: the range coder cannot .* stream is damaged"):
        decompress(model, bytes(damaged))
    damaged = bytearray(data)
    damaged[_HEADER.size - 3] ^= 0x01  # the header's CRC-32 of the images (before the 2-byte segment size)
    with pytest.raises(ValueError, match="fail the stream's checksum"):
        decompress(model, bytes(damaged))
    with pytest.raises(ValueError, match="x must hold integer values"):
        compress(model, x.float())
    with pytest.raises(NotImplementedError, match="does not factor"):
        compress(tiny("grayscale_pixelcnn", spec, gray_levels=4), x)
    gpt = tiny("image_gpt", ImageSpec(3, 4, 4, 256), palette=4)
    images_for(gpt)  # fits a palette of black and white
    with pytest.raises(ValueError, match="palette does not reproduce"):
        compress(gpt, torch.full((1, 3, 4, 4), 100))


def first_tables(model, x: torch.Tensor, steps: int) -> list[torch.Tensor]:
    """The frequency tables of the first `steps` coding steps of the images x, as the coder builds them."""
    work, tables = torch.zeros_like(x), []
    for _, (i, j, c, p) in zip(range(steps), _coding_steps(model, work, None)):
        tables.append(torch.from_numpy(p))  # the coder's rows: frequencies / 2^16
        work[:, c, i, j] = x[:, c, i, j]
    return tables


def test_a_stream_decodes_on_any_thread_count():
    """Coding runs on codec.images.CODING_THREADS whatever the caller's count (torch's or threads=), so the
    bytes are the same on 1 and 2 threads and a stream decodes on either. PixelSNAIL small's fused attention
    splits its sums by the thread count: its tables move by a count on 2 threads (checked here on 4 images),
    and streams so coded on one count did not decode on the other; 17 images also code a last segment of one."""
    spec = ImageSpec(1, 8, 8, 256)
    model = perturbed("pixelsnail", spec, 0.05, size="small")
    x = random_images(spec, SEGMENT_IMAGES + 1)
    round_trip_across_thread_counts(model, x)
    assert differs_on_two_threads(lambda: first_tables(model, x[:4], 14)), (
        "this model's tables no longer depend on the thread count: the test would prove nothing"
    )
    with pytest.raises(ArgumentValueError, match="threads must be None"):  # still checked
        compress(model, x[:1], threads=0)


def test_a_stream_decoded_with_another_class_label_names_the_label():
    spec = SPECS[0]
    model = tiny("pixelcnn_pp", spec, num_classes=3)
    x = images_for(model)
    data = compress(model, x, torch.ones(len(x), dtype=torch.long))
    with pytest.raises(
        ValueError, match=r"damaged, or decompress is not given what compress was: pass the same cond \(class labels\)"
    ):
        decompress(model, data, torch.full((len(x),), 2))


def _with_count(data: bytes, n: int) -> bytes:
    """The stream with its header's image count replaced (offset 5: after the magic and the version)."""
    return data[:5] + struct.pack(">I", n) + data[9:]


def test_the_stream_knows_its_end_and_its_count():
    model = tiny("pixelcnn_pp", SPECS[0])
    x = images_for(model).repeat(14, 1, 1, 1)[:40]  # segments of 16, 16 and 8 images
    data = compress(model, x)
    info = stream_info(data)
    assert info["n"] == 40 and info["segment_images"] == SEGMENT_IMAGES == 16 and len(info["segments"]) == 3
    assert len(data) == _HEADER.size + 4 * 3 + sum(info["segments"])
    assert torch.equal(decompress(model, data), x)
    with pytest.raises(ValueError, match="bytes follow the end of the stream"):
        decompress(model, data + data)  # cat a.pxar b.pxar
    with pytest.raises(ValueError, match="1 bytes follow"):
        decompress(model, data + b"\0")
    with pytest.raises(ValueError, match="truncated"):
        decompress(model, data[:-1])
    with pytest.raises(ValueError, match="truncated or its header is damaged"):
        stream_info(_with_count(data, 10**9))  # refused from the lengths, before anything is allocated
    # every segment takes at least 8 bytes (its length and a 32-bit word): one segment more than the bytes hold
    # is refused before a length is read; as many as they hold pass that bound (and fail on their lengths)
    most = (len(data) - _HEADER.size) // 8
    with pytest.raises(ValueError, match=f"claims {SEGMENT_IMAGES * (most + 1):,} images, which need at least"):
        stream_info(_with_count(data, SEGMENT_IMAGES * (most + 1)))
    with pytest.raises(ValueError, match="segment lengths add up to"):
        stream_info(_with_count(data, SEGMENT_IMAGES * most))
    with pytest.raises(ValueError, match="claims 0 images"):
        stream_info(_with_count(data, 0))
    for old in (1, 2, 3):  # the pure-Python coders' streams; version 3's tables of the softmax of log-probs
        with pytest.raises(ValueError, match=f"version {old} .*older pixelar.*decode it with the pixelar release"):
            stream_info(data[:4] + bytes([old]) + data[5:])
    with pytest.raises(ValueError, match="version 5 .*newer pixelar"):
        stream_info(data[:4] + b"\x05" + data[5:])
    with pytest.raises(ValueError, match="damaged|checksum"):  # more images than the stream codes
        decompress(model, _with_count(data, 48))
    # a segment length moved from one segment to the next (total unchanged): by a byte, refused from the
    # lengths (the coder writes 32-bit words); by a word, the first segment's data run on past its code
    table = _HEADER.size
    a, b = struct.unpack_from(">II", data, table)
    for shift, message in [(1, "^segment 0's length, .* 32-bit words"), (4, "^segment 0's coded data .* damaged")]:
        shifted = bytearray(data)
        struct.pack_into(">II", shifted, table, a + shift, b - shift)
        with pytest.raises(ValueError, match=message):
            decompress(model, bytes(shifted))
    with pytest.raises(ValueError, match="no images to compress"):
        compress(model, x[:0])


def test_no_user_path_runs_the_pure_python_coders(monkeypatch):
    """The pure-Python arithmetic coder and rANS stack are the tests' oracle only: compress and decompress of
    every scheme (stepwise, latent: VQ-VAE, bits-back: VDVAE) run constriction's coders, in version 4 streams."""

    def oracle(*args, **kw):
        raise AssertionError("a user path ran a pure-Python coder")

    for cls, names in ((Encoder, ("encode", "finish")), (Decoder, ("decode",)), (ANS, ("push", "pop"))):
        for name in names:
            monkeypatch.setattr(cls, name, oracle)
    for model in (
        tiny("pixelcnn_pp", SPECS[0]),
        perturbed("vqvae", ImageSpec(1, 8, 8, 16)),
        perturbed("vdvae", ImageSpec(1, 4, 4, 16), 0.05),
    ):
        x = random_images(model.image, 3)
        data = compress(model, x)
        assert data[4] == 4 and torch.equal(decompress(model, data), x)


def test_frequencies_are_quantize_of_the_old_torch_formula_and_the_coder_rows_of_it():
    """tables.frequencies (numpy) is floor(p (TOTAL - K)) + 1 with the rest on the first likeliest value, the
    formula quantize always had (written out here in torch); coders.rows of it is probabilities(quantize)."""
    from pixelar.codec.coders import rows

    g = torch.Generator().manual_seed(3)
    for K in (2, 16, 256):
        probs = torch.softmax(4 * torch.randn(50, K, generator=g, dtype=torch.float64), -1)
        probs[0] = 0.0
        probs[0, K // 2] = 1.0  # one certain value
        probs[1] = 1.0 / K  # all tied: the rest goes to value 0
        freq = torch.floor(probs * (TOTAL - K)).long() + 1
        freq = freq.scatter_add(-1, probs.argmax(-1, keepdim=True), TOTAL - freq.sum(-1, keepdim=True))
        assert np.array_equal(frequencies(probs), freq.numpy())
        assert np.array_equal(rows(frequencies(probs)), probabilities(quantize(probs)))
        assert np.array_equal(coder_rows(probs), rows(frequencies(probs)))
