"""Bits-back coding (pixelar.codec, coding scheme "bits-back", vdvae) and its ANS stack (constriction's,
coders.Stack; the pure-Python rANS stack of ans.py as the oracle): exact round trips (1 and 3 channels,
256/8/2 values, class labels, several segments), a cost that is the discretised negative ELBO per image plus
a one-off start-up (the bits popped for the first image), every pushed and popped symbol at its ideal length,
and damaged streams refused."""

import math

import numpy as np
import pytest
import torch
from codec_helpers import (
    differs_on_two_threads,
    ideal_bits,
    perturbed,
    random_images,
    round_trip_across_thread_counts,
)

from pixelar import ImageSpec
from pixelar.codec import compress, decompress, images, stream_info
from pixelar.codec.ans import ANS, StackEmpty
from pixelar.codec.bits_back import LATENT_BITS, _posterior_table, _values
from pixelar.codec.coders import Stack, pool_words
from pixelar.codec.pixels import pixel_steps
from pixelar.codec.tables import TOTAL
from pixelar.models.base import LatentImageModel

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def random_tables(rng, rows, K, prec):
    """Cumulative tables (rows, K + 1) of total 2^prec with every frequency >= 1, and values drawn from them."""
    p = rng.dirichlet(np.full(K, 0.3), size=rows)
    freq = np.floor(p * ((1 << prec) - K)).astype(np.int64) + 1
    freq[:, 0] += (1 << prec) - freq.sum(1)
    cum = np.concatenate([np.zeros((rows, 1), np.int64), freq.cumsum(1)], 1)
    values = np.array([rng.choice(K, p=f / f.sum()) for f in freq])
    return cum, values, -np.log2(freq[np.arange(rows), values] / (1 << prec)).sum()


# ----- the rANS stack (the oracle) ----------------------------------------------------------------------------------
@pytest.mark.parametrize("prec", [8, 16, 24])
def test_ans_round_trips_at_the_ideal_length(prec):
    rng = np.random.default_rng(prec)
    cum, values, bits = random_tables(rng, 3000, 12, prec)
    uniform = rng.integers(0, 1 << 5, 700)
    enc = ANS()
    enc.push_rows(cum, values, prec)
    enc.push_uniform(uniform, 5)
    data = enc.to_bytes()
    ideal = bits + 5 * len(uniform)
    # the head's 64 bits hold up to 32 bits beyond the last whole word; a 64-bit state loses ~1e-9 bits per symbol
    assert ideal <= 8 * len(data) <= ideal + 64 + 32
    dec = ANS.from_bytes(data)
    assert np.array_equal(dec.pop_uniform(700, 5), uniform)
    assert np.array_equal(dec.pop_rows(cum, prec), values)
    assert dec.check_start()  # back at the start: the head, nothing below it


def test_ans_pops_from_the_pool_and_gives_it_back():
    rng = np.random.default_rng(0)
    cum, _, _ = random_tables(rng, 200, 40, 16)
    enc = ANS()
    drawn = enc.pop_rows(cum, 16)  # from an empty stack: the pseudo-random pool
    assert enc.pool_used > 0 and not enc.words
    # the pool's bits are (pseudo-)uniform, so the draws follow the tables: most values land on likely symbols
    freq = np.diff(cum, axis=1)
    assert np.mean(freq[np.arange(200), drawn] / TOTAL) > np.mean(1 / 40) * 2
    enc.push_rows(cum, drawn, 16)
    assert enc.check_start()  # pushing back regenerated exactly the pool words popped
    assert len(enc.words) == enc.pool_used
    enc.words[0] ^= 1
    assert not enc.check_start()


def test_ans_decoder_refuses_damaged_stacks():
    with pytest.raises(ValueError, match="8-byte head and 4-byte words"):
        ANS.from_bytes(b"\x80" * 10)
    with pytest.raises(ValueError, match="head is out of range"):
        ANS.from_bytes(bytes(8))
    dec = ANS.from_bytes(ANS().to_bytes())  # nothing below the head: a pop past it cannot read the pool
    with pytest.raises(StackEmpty, match="truncated or damaged"):
        dec.pop_uniform(40, 16)


# ----- constriction's ANS stack (what bits-back coding runs on) ----------------------------------------------------
def test_stack_round_trips_at_the_ideal_length_of_the_oracle():
    """Rows of 2^16 tables and 5-bit uniform values pushed, popped back in order: the bytes are the head and
    words of the 24-bit tables' ideal length, within a word or two of the pure-Python stack's."""
    rng = np.random.default_rng(16)
    cum, values, _ = random_tables(rng, 3000, 12, 16)
    uniform = rng.integers(0, 1 << 5, 700)
    enc = Stack()
    enc.push(cum, values)
    enc.push_uniform(uniform, 5)
    data = enc.to_bytes()
    ideal = ideal_bits(cum, values) + 5 * len(uniform)
    assert ideal <= 8 * len(data) <= ideal + 64 + 32  # the head's 64 bits, the last partial word
    assert enc.num_bits() == 8 * len(data) and enc.pool_used == 0
    oracle = ANS()
    oracle.push_rows(cum, values, 16)
    oracle.push_uniform(uniform, 5)
    assert abs(len(data) - len(oracle.to_bytes())) <= 8
    dec = Stack(data)
    assert np.array_equal(dec.pop_uniform(700, 5), uniform)
    assert np.array_equal(dec.pop(cum), values)
    assert dec.check_start()  # back at the start: the head, nothing below it


def test_stack_pops_from_the_pool_and_gives_it_back():
    """Pops from a new stack read the pool (deepened under the stack as they need: 5,000 rows need more than
    the first 1,024 words); pushing the values back regenerates exactly the pool words read, and the stream
    leaves out the pool words never read."""
    rng = np.random.default_rng(0)
    cum, _, _ = random_tables(rng, 5000, 40, 16)
    enc = Stack()
    drawn = enc.pop(cum)  # from an empty stack: the pseudo-random pool
    assert enc.pool_used > 1024 // 2
    # the pool's bits are (pseudo-)uniform, so the draws follow the tables: most values land on likely symbols
    freq = np.diff(cum, axis=1)
    assert np.mean(freq[np.arange(5000), drawn] / TOTAL) > np.mean(1 / 40) * 2
    # the bits drawn are the values' information under their tables, up to the word the head holds
    assert abs(32 * enc.pool_used - ideal_bits(cum, drawn)) <= 64
    enc.push(cum, drawn)
    data = enc.to_bytes()
    assert len(data) == 4 * (enc.pool_used + 2)  # the head and the words read, regenerated
    assert enc.check_start() and Stack(data).check_start()
    words = np.frombuffer(data, ">u4")
    assert np.array_equal(words[:-2][::-1], pool_words(2, enc.pool_used))  # pool word 2 on top, then 3 ...
    damaged = bytearray(data)
    damaged[0] ^= 1
    assert not Stack(bytes(damaged)).check_start()


def test_stack_decoder_refuses_damaged_stacks():
    with pytest.raises(ValueError, match="not a whole number of 32-bit words"):
        Stack(b"\x80" * 10)
    with pytest.raises(ValueError, match="2-word head"):
        Stack(b"\x80" * 4)
    with pytest.raises(ValueError, match="head is out of range"):
        Stack(bytes(8))
    dec = Stack(Stack().to_bytes())  # the start head alone: pops past it read nothing, and it is not restored
    assert dec.check_start()
    dec.pop_uniform(40, 16)
    assert not dec.check_start()


# ----- bits-back coding of a VDVAE -----------------------------------------------------------------------------------
def tiny_vdvae(spec, scale=0.05, **kw):
    return perturbed("vdvae", spec, scale, **kw)


def latent_dims(model) -> int:
    return sum(model.zdim * h * w for h, w in (model.levels[i] for i in model.dec_level))


@pytest.mark.parametrize(
    "spec,kw",
    [
        (ImageSpec(1, 4, 4, 256), {}),
        (ImageSpec(3, 4, 4, 8), {"num_classes": 3}),
        (ImageSpec(1, 8, 4, 2), {"output": {"kind": "bernoulli"}}),
    ],
)
def test_vdvae_round_trips_and_is_deterministic(spec, kw):
    model = tiny_vdvae(spec, **kw)
    assert model.coding_scheme() == "bits-back"
    x = random_images(spec, 12)
    x[:4] = x[0]  # repeated images, and constant ones
    x[4] = 0
    cond = torch.arange(12) % 3 if "num_classes" in kw else None
    data = compress(model, x, cond)
    assert compress(model, x, cond) == data  # no global random state: the pool is fixed
    assert torch.equal(decompress(model, data, cond), x)
    if cond is not None:  # the labels are side information: other labels decode other latents, then fail
        with pytest.raises(ValueError, match=r"pass the same cond \(class labels\)"):
            decompress(model, data, (cond + 1) % 3)


def test_a_stream_decodes_on_any_thread_count():
    """Every pass of the model runs on codec.images.CODING_THREADS, whatever the caller's count: the same
    bytes on 1 and 2 threads, each stream decoding on the other. On one 8x8 image the output convolution adds
    in another order on 2 threads (checked here): streams so coded on one count did not decode on the other
    (the stack did not unwind)."""
    spec = ImageSpec(1, 8, 8, 256)
    model = tiny_vdvae(spec)
    x = random_images(spec, 3)
    round_trip_across_thread_counts(model, x)

    def params():  # of p(x | z) for the first image, z its posterior means
        return model.coding_top_down(1, None, lambda k, prior, posterior: posterior[0], x[:1])

    assert differs_on_two_threads(params), "this model's floats no longer depend on the thread count"


def test_segments_are_independent_and_each_pays_the_start_up(monkeypatch):
    spec = ImageSpec(1, 4, 4, 16)
    model = tiny_vdvae(spec)
    x = random_images(spec, 12, seed=1)
    monkeypatch.setattr(images, "SEGMENT_IMAGES_BITS_BACK", 5)
    data = compress(model, x)
    info = stream_info(data)
    assert info["segment_images"] == 5 and len(info["segments"]) == 3
    assert torch.equal(decompress(model, data), x)
    # segment 1 is the stream of images 5..9 alone (what torchrun's shares rely on)
    alone = compress(model, x[5:10])
    assert alone[-stream_info(alone)["segments"][0] :] == data[-sum(info["segments"][1:]) : -info["segments"][2]]


def discrete_cost_bits(model, x, rng) -> float:
    """One draw of an image's net bits-back cost under the discretised latents: buckets b ~ Q (the quantised
    posterior, layer by layer), -log2 P(x | z_b) + LATENT_BITS * dims - (-log2 Q(b))."""
    logq, dims = [0.0], [0]

    def draw(k, prior, posterior):
        cum = _posterior_table(prior, posterior)
        freq = np.diff(cum, axis=1)
        b = (cum[:, 1:] <= rng.random(len(cum))[:, None] * TOTAL).sum(1)
        logq[0] += np.log2(freq[np.arange(len(b)), b] / TOTAL).sum()
        dims[0] += len(b)
        return _values(prior, b)

    params = model.coding_top_down(1, None, draw, x)
    pixels, work = 0.0, torch.zeros_like(x)
    for c, cum in pixel_steps(model.distribution, params, work):
        v, rows = x[:, c].reshape(-1), torch.arange(x[0, 0].numel())
        pixels -= torch.log2((cum[rows, v + 1] - cum[rows, v]).double() / TOTAL).sum().item()
        work[:, c] = x[:, c]
    return pixels + LATENT_BITS * dims[0] + logq[0]


def test_cost_is_the_discretised_negative_elbo_plus_a_start_up(monkeypatch):
    """The stream's coded bits are the sum over images of push - pop ideal lengths plus the pool bits of the
    start-up (measured by wrapping the stack); in expectation that is the discretised -ELBO per image (checked
    against Monte-Carlo draws), far below coding every image's latents without bits back."""
    spec = ImageSpec(1, 4, 4, 256)
    model = tiny_vdvae(spec)
    n = 60
    x = random_images(spec, n, seed=2)
    ideal, pool = {"bits": 0.0}, {"words": 0}
    pop, push, push_uniform, to_bytes = Stack.pop, Stack.push, Stack.push_uniform, Stack.to_bytes

    def wrapped_pop(self, cum):
        v = pop(self, cum)
        ideal["bits"] -= ideal_bits(cum, v)  # under the 24-bit tables the stack codes with
        return v

    def wrapped_push(self, cum, v):
        ideal["bits"] += ideal_bits(cum, v)
        push(self, cum, v)

    def wrapped_push_uniform(self, v, b):
        ideal["bits"] += b * len(v)
        push_uniform(self, v, b)

    def counted(self):
        pool["words"] += self.pool_used
        return to_bytes(self)

    monkeypatch.setattr(Stack, "pop", wrapped_pop)
    monkeypatch.setattr(Stack, "push", wrapped_push)
    monkeypatch.setattr(Stack, "push_uniform", wrapped_push_uniform)
    monkeypatch.setattr(Stack, "to_bytes", counted)
    data = compress(model, x)
    coded = 8 * info_bytes(data)
    start_up = 32 * pool["words"]
    assert 0 < start_up <= LATENT_BITS * latent_dims(model) * 3 + 64  # the first image's pops, at most ~24 bits each
    # the coder realises its ideal lengths: head (64 bits) and the last partial word aside
    assert ideal["bits"] + start_up <= coded + 1 <= ideal["bits"] + start_up + 64 + 32 + 1
    monkeypatch.undo()
    rng = np.random.default_rng(0)
    with torch.no_grad():
        costs = np.array([[discrete_cost_bits(model, x[j : j + 1], rng) for _ in range(6)] for j in range(n)])
    expected = costs.mean(1).sum()
    spread = 4 * math.sqrt(costs.var(1, ddof=1).sum() * (1 + 1 / 6))  # the stream's draws and the estimate's
    assert expected - spread <= coded - start_up <= expected + spread + 64 + 32
    # without bits back every image would also pay its posterior's bits: about LATENT_BITS per latent dimension
    assert coded < expected + 0.5 * n * LATENT_BITS * latent_dims(model)


def info_bytes(data: bytes) -> int:
    """The coded segments' bytes (no header, no lengths)."""
    return sum(stream_info(data)["segments"])


def test_damaged_bits_back_streams_are_refused():
    spec = ImageSpec(1, 4, 4, 256)
    model = tiny_vdvae(spec)
    data = bytearray(compress(model, random_images(spec, 6)))
    data[-7] ^= 0x10  # a word of the stack
    with pytest.raises(ValueError, match="damaged|checksum"):
        decompress(model, bytes(data))
    short = bytes(data[:-4])  # one word fewer, lengths fixed up: the stack runs out or ends elsewhere
    header = images._HEADER.size
    short = short[:header] + (stream_info(bytes(data))["segments"][0] - 4).to_bytes(4, "big") + short[header + 4 :]
    with pytest.raises(ValueError, match="damaged|checksum"):
        decompress(model, short)


def test_a_stochastic_posterior_without_latent_layers_is_refused():
    class Opaque(type(tiny_vdvae(ImageSpec(1, 4, 4, 2), output={"kind": "bernoulli"}))):
        coding_top_down = LatentImageModel.coding_top_down

    model = tiny_vdvae(ImageSpec(1, 4, 4, 2), output={"kind": "bernoulli"})
    model.__class__ = Opaque
    with pytest.raises(NotImplementedError, match="does not expose its latent layers"):
        compress(model, torch.zeros(1, 1, 4, 4, dtype=torch.long))
