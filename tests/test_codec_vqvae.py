"""Lossless compression with a VQ-VAE (pixelar.codec, coding scheme "latent"): the two-part code z(x) with the
prior, then x given z with the decoder's per-sub-pixel conditionals, round-trips exactly and costs the model's
bound -log2 p(z(x)) - log2 p(x | z(x)) plus the coder's overhead; the decoder's parameters are computed from
the same codes in the same batches when coding and decoding; a segment depends only on its images (what the
torchrun path relies on); models with a stochastic posterior are refused (test_vdvae.py)."""

import math

import pytest
import torch
from codec_helpers import (
    differs_on_two_threads,
    perturbed,
    pixel_tables,
    random_images,
    round_trip_across_thread_counts,
)

from pixelar import ImageSpec
from pixelar.codec import compress, decompress, stream_info
from pixelar.codec.images import _HEADER, SEGMENT_IMAGES
from pixelar.codec.tables import TOTAL

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def tiny_vqvae(spec, scale=0.2, **kw):
    return perturbed("vqvae", spec, scale, **kw)


def structured_images(spec, n, seed=0):
    """Smooth ramps and flat blocks: images whose codes repeat and whose pixels are predictable."""
    g = torch.Generator().manual_seed(seed)
    C, H, W = spec.shape
    ramp = (torch.arange(H)[:, None] + torch.arange(W)[None]) * (spec.num_values - 1) // (H + W - 2)
    x = ramp.expand(n, C, H, W).clone()
    x[: n // 2, :, : H // 2] = torch.randint(0, spec.num_values, (n // 2, C, 1, 1), generator=g)
    return x


def payload_bits_bound(model, x) -> float:
    """The model's bound in bits plus the frequency tables' rounding per symbol (and 1e-3 bits for the 24-bit
    tables' and the range's truncation, as test_codec.payload_bound) and, per segment, the range coder's seal
    of at most two 32-bit words."""
    with torch.no_grad():
        bits = -model.log_prob(x).sum().item() / math.log(2)
    symbols = [(p.image.dims, p.image.num_values) for p in model.coding_priors()] + [
        (model.image.dims, model.image.num_values)
    ]
    rounding = sum(d * (-math.log2(1 - K / TOTAL) + 1e-3) for d, K in symbols) * len(x)
    return bits + rounding + -(-len(x) // SEGMENT_IMAGES) * 64


def payload_bytes(data: bytes) -> int:
    return len(data) - _HEADER.size - 4 * len(stream_info(data)["segments"])


CASES = [
    (ImageSpec(1, 8, 8, 16), {}),
    (ImageSpec(3, 8, 8, 8), {}),  # the mixture's channels conditioned on the earlier ones (PixelCNN++ coupling)
    (ImageSpec(1, 8, 8, 2), {"output": "bernoulli"}),
    (ImageSpec(3, 8, 8, 8), {"levels": 2, "num_downsamples": 1}),
]


@pytest.mark.parametrize("spec,kw", CASES, ids=lambda v: str(v))
def test_round_trip_is_exact_at_the_bound(spec, kw):
    model = tiny_vqvae(spec, **kw)
    for x in (random_images(spec, 20), structured_images(spec, 20)):  # 2 segments: 16 + 4 images
        data = compress(model, x)
        assert torch.equal(decompress(model, data), x)
        assert 8 * payload_bytes(data) <= payload_bits_bound(model, x)
        with torch.no_grad():  # not below the bound either: it is the code length
            assert 8 * payload_bytes(data) >= -model.log_prob(x).sum().item() / math.log(2) - 50


def test_class_conditioned_prior_codes_with_the_same_cond():
    spec = ImageSpec(1, 8, 8, 16)
    model = tiny_vqvae(spec, num_classes=3)
    x, cond = random_images(spec, 5), torch.tensor([2, 0, 1, 1, 0])
    data = compress(model, x, cond)
    assert torch.equal(decompress(model, data, cond), x)
    with torch.no_grad():
        bits = -model.log_prob(x, cond).sum().item() / math.log(2)
    assert 8 * payload_bytes(data) <= bits + 64 + 0.01 * x.numel()  # the seal: at most two 32-bit words


def test_decoder_parameters_come_from_the_same_codes_in_the_same_batches(monkeypatch):
    """Float rounding may differ with the batch: compress and decompress must run p(x | z) on equal latents in
    equal batches (one call per segment), so both see the same probabilities."""
    spec = ImageSpec(3, 8, 8, 8)
    model = tiny_vqvae(spec)
    x = random_images(spec, 20)
    calls = []
    original = type(model).coding_params

    def recording(self, latents, cond):
        calls.append([z.clone() for z in latents])
        return original(self, latents, cond)

    monkeypatch.setattr(type(model), "coding_params", recording)
    data = compress(model, x)
    coded, calls[:] = list(calls), []
    assert torch.equal(decompress(model, data), x)
    assert [len(c[0]) for c in coded] == [16, 4]
    assert len(calls) == len(coded) and all(torch.equal(a[0], b[0]) for a, b in zip(coded, calls))
    assert torch.equal(torch.cat([c[0] for c in coded]), model.quantize(x)[:, None])  # the codes are z(x)


def test_a_segment_depends_only_on_its_images():
    """What the torchrun path relies on: each process codes its share of the segments, and the stream equals
    one process's. Here: the segments of a stream equal those of the streams of its segments' images."""
    spec = ImageSpec(1, 8, 8, 16)
    model = tiny_vqvae(spec)
    x = structured_images(spec, 20)
    whole = compress(model, x)
    table = _HEADER.size + 4 * 2
    parts = [compress(model, x[:16]), compress(model, x[16:])]
    assert whole[table:] == b"".join(p[_HEADER.size + 4 :] for p in parts)


def test_a_stream_decodes_on_any_thread_count():
    """The codes' priors, the encoder and the decoder all run on codec.images.CODING_THREADS, whatever the
    caller's count: the same bytes on 1 and 2 threads, each stream decoding on the other. At 28x28 the
    decoder's transposed convolutions on the last segment's 4 images add in another order on 2 threads, which
    moves its tables (checked here): streams so coded on one count did not decode on the other."""
    spec = ImageSpec(1, 28, 28, 256)
    model = tiny_vqvae(spec)
    x = random_images(spec, SEGMENT_IMAGES + 4)
    round_trip_across_thread_counts(model, x)
    last = x[SEGMENT_IMAGES:]
    latents = model.coding_latents(last, None)
    assert differs_on_two_threads(lambda: pixel_tables(model, model.coding_params(latents, None), last)), (
        "this model's tables no longer depend on the thread count: the test would prove nothing"
    )


def test_damaged_streams_and_other_models_are_refused():
    spec = ImageSpec(1, 8, 8, 16)
    model = tiny_vqvae(spec)
    x = random_images(spec, 4)
    data = compress(model, x)
    with pytest.raises(ValueError, match="another model or other weights"):
        decompress(tiny_vqvae(spec, scale=0.3), data)
    damaged = bytearray(data)
    damaged[_HEADER.size + 4 + 2] ^= 0x10  # a bit of the coded codes: the pixels decode with wrong parameters
    with pytest.raises(ValueError, match="stream is damaged|checksum"):
        decompress(model, bytes(damaged))
    with pytest.raises(ValueError, match="bytes follow the end"):
        decompress(model, data + b"\0")
    with pytest.raises(ValueError, match="truncated"):
        decompress(model, data[:-1])
    with pytest.raises(ValueError, match="x must hold integer values"):
        compress(model, x.float())
