"""Lossless image compression with a model's conditionals: entropy coding of every sub-pixel in the model's
generation order, with the probabilities the model gives it (so an image costs about its -log2 p(x) bits).

    data = compress(model, x)          # x int64 (n, C, H, W) -> bytes
    y = decompress(model, data)        # -> int64 (n, C, H, W), equal to x

The decoder must see exactly the probabilities the encoder used, so both run one shared loop
(`_coding_steps`): the image is filled step by step from zeros in generation order (the encoder with the true
values, the decoder with the decoded ones), each step's parameters come from the model's incremental forward
(the cached sampler's; naive forward passes where a model has none), and the distribution's probabilities
of all K values of the sub-pixel, given the earlier sub-pixels of its pixel (`value_probs`), are turned into
an integer frequency table (`tables.coder_rows`, as `tables.quantize`), one row per image of the step. A
row depends on the other images of its batch (the network's matrix products round otherwise at another batch
size), so decoding runs the network on exactly the coder's batch, a segment's images. The rows are range-coded by
constriction's compiled coder (coders.py), one call per step for all of a segment's images, from
probabilities that are an exact function of the integer tables (so both directions quantise them alike).
Coding computes on CODING_THREADS CPU threads whatever the caller's count (see there), so the bytes do not
depend on the thread count nor on the number of torchrun processes. Decode with the same model, weights,
device and precision settings: another platform may round the network's floats differently (the error then
names the settings); the header's fingerprint catches another model or other weights.

The stream (version 4): a 33-byte header (magic, version, image count n and shape, number of values, the
model's fingerprint, a CRC-32 of the images, and S, the images per segment), one 4-byte length per segment,
then the segments: images 0..S-1 range-coded together (per step the segment's images in turn), then the
next S, and so on (S = 16 when compressing); a segment is the coder's 32-bit words, big-endian. The model
runs on one segment's images at a time, so compression and decompression memory stay those of a batch of S
images however many images a stream holds: compress checks and checksums its input a segment at a time
(uint8 input holds the images in an eighth of int64's memory), and `decompress_segments` hands the decoded
images over segment by segment (to be written out as they come) where `decompress` returns them all. Under
torchrun the segments are coded (decoded) in rounds, segment k by rank k % N, and every process gets the whole
stream (all images): the bytes are those of one process, since a segment depends only on its images.

The lengths make the stream's end exact: trailing bytes (two files concatenated), a truncated file or a
length that is not a whole number of words are errors, and so is a segment that is not exactly the code of
what it decodes to (the range decoder cannot tell where its data end: a twin encoder re-codes what it
decodes, and the two must agree word for word). They also bound the image count by the stream's length
before anything is decoded: every segment costs at least 8 bytes (its length and at least one coded word), so
n <= S * (bytes - 33) / 8, and a segment is decoded only once its bytes are there. The coded bits alone bound
nothing useful: a near-certain sub-pixel costs almost no bits (quantize leaves the likeliest value up to
1 - (K - 1) / 2^16 of the total: 2e-5 bits for K = 2), so a few bytes could claim billions of images. A
segment costs its 4-byte length and the range coder's seal, one or two words (up to 64 bits over the ideal),
about 0.5 to 0.75 bytes per image. Streams of versions 1 and 2 (written with pure-Python coders) and 3
(other tables: the softmax of the log-probabilities) are refused, naming the version and what to do. A
damaged stream, or probabilities computed differently at decode time, fail with a clear error instead of
returning wrong images (the segment's code, else the checksum). Class labels or cond vectors are side
information: pass the same `cond` to both calls. Models with palette tokens (image_gpt) code the tokens,
when their palette reproduces the images exactly.

The model says how it is coded (`coding_scheme()`): "stepwise" as above, or "latent" (VQ-VAE): a two-part code,
exact for a deterministic posterior z(x): each segment codes its images' latents with their priors' stepwise
conditionals (the loop above), then x given them with the output distribution's per-channel conditionals
(`pixel_steps`, one channel of all pixels per step); the decoder's parameters are computed once per segment
from the coded latents, in the same batch when coding and decoding. The stream format is the same; or
"bits-back" (VDVAE, bits_back.py), whose segments are constriction's ANS stack, 32-bit words too.
"""

from __future__ import annotations

import hashlib
import json
import struct
import zlib

import torch

from .. import distributed
from ..errors import ArgumentValueError
from ..inference import inference
from ..progress import tracking
from ..sampling.naive import generation_steps
from ..threads import check_threads, num_threads
from . import bits_back
from .coders import DamagedCode, RangeDecoder, RangeEncoder
from .pixels import pixel_steps
from .tables import coder_rows

MAGIC = b"PXAR"
VERSION = 4
# magic, version, n, C, H, W, num_values, fingerprint, CRC-32 of the images, images per segment
_HEADER = struct.Struct(">4sBIHHHI8sIH")
_LENGTH = 4  # bytes of each segment's length (big-endian unsigned), after the header
_WORD = 4  # both coders write 32-bit words: a segment is a whole number of them, at least one
SEGMENT_IMAGES = 16  # images coded together: the model's batch when coding, and what one length covers
# bits-back coding chains a segment's images (each takes back bits the one before left): a segment pays the
# start-up cost once (bits_back.py), so it holds many images; the model still runs on one image at a time
SEGMENT_IMAGES_BITS_BACK = 16384
# The CPU threads that compress and decompress run on, whatever the caller's count: a frequency table that moves
# by one count breaks the stream, and torch's CPU kernels split their sums by the thread count, so that on 2
# threads they add in another order than on 1 (measured, torch 2.13: the fused attention of PixelSNAIL and the
# Image Transformer at 16 images, a 5x384 by 384x64 matrix product of PixelCNN++ small's cached step, a
# VQ-VAE decoder's 1x1 and transposed convolutions at 4 images, a VDVAE's output convolution at 1). Tiny models
# survived by luck: none of their operations had a size or shape that the kernels split. One thread never
# splits a sum (and is what the codec chose for small steps anyway); a fixed count also frees the bytes from
# the number of torchrun processes, each with its own thread count.
CODING_THREADS = 1


def segment_images(model) -> int:
    """Images per segment of a stream of this model's (the header says which a stream has)."""
    return SEGMENT_IMAGES_BITS_BACK if model.coding_scheme() == "bits-back" else SEGMENT_IMAGES


def fingerprint(model) -> bytes:
    """8 bytes of SHA-256 over the model's config and weights: decompress refuses a stream made by another."""
    h = hashlib.sha256(json.dumps(model.config(), sort_keys=True).encode())
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.digest()[:8]


def _crc(images: torch.Tensor, value: int = 0) -> int:
    """CRC-32 of the data images' values (int64, C order): decompress checks what it decoded against it. Taken
    segment by segment: `value` is the CRC of the images before these (the CRC of their concatenation)."""
    return zlib.crc32(images.detach().cpu().long().contiguous().numpy().tobytes(), value)


def _stages(model, cond, n: int) -> list[tuple]:
    """What codes each segment, in order, for n images: [(coder, its cond for the n images)], the stepwise models
    whose conditionals code an image each: the model's (scheme "stepwise"), or its latents' priors (scheme
    "latent", followed by x given the latents; their cond, None here, comes per segment from `_stage_cond`).
    Raises NotImplementedError for a model the codec cannot drive."""
    scheme = model.coding_scheme()
    if scheme == "stepwise":
        return [model.stepwise(cond, n)]  # a wrapper's base, e.g. DistAug under the identity
    if scheme == "bits-back":
        return []  # bits_back.py drives the model itself
    return [(prior, None) for prior in model.coding_priors()]


def _stage_cond(model, stages, k: int, coded: list[torch.Tensor], cond, part: slice, m: int):
    """Stage k's cond for the m images `part` of a segment: the stepwise model's, or (latent) the prior's given
    the latents `coded` before it in this segment (e.g. a VQ-VAE-2 bottom prior's map of the top codes)."""
    coder, coder_cond = stages[k]
    if model.coding_scheme() != "latent":
        return _part(coder_cond, part)
    return coder.stepwise(model.coding_cond(k, coded, _part(cond, part)), m)[1]


def _symbols(model, stages) -> int:
    """Symbols coded per image: the sub-pixels of every stage's image (and of x, after latents)."""
    extra = model.image.dims if model.coding_scheme() in ("latent", "bits-back") else 0
    return sum(coder.image.dims for coder, _ in stages) + extra


def _step_params(model, x: torch.Tensor, cond):
    """params_at(i, j) for the image x being filled: the incremental forward, else full forward passes."""
    if model.has_incremental_forward:
        return model.begin_cache(x, cond).params_at
    return lambda i, j: model(x, cond)[:, :, i, j]


def _coding_steps(model, x: torch.Tensor, cond):
    """Yield (i, j, c, p) in generation order: p (n, K) the coder's rows (tables.coder_rows: the integer
    frequencies / 2^16) of sub-pixel (c, i, j) of each image, given what x holds. The caller writes x[:, c, i, j]
    before the next step."""
    dist = model.distribution
    params_at = _step_params(model, x, cond)
    for i, j, channels in generation_steps(model):
        params = params_at(i, j) if dist.joint else None  # joint: one evaluation per pixel, as the samplers
        for c in channels:
            if not dist.joint:
                params = params_at(i, j)  # per channel: it may read the channels < c just written
            probs = dist.value_probs(params, x[:, :, i, j], c)  # (n, K): every value given the channels < c
            yield i, j, c, coder_rows(probs)


def _model_input(model, images: torch.Tensor) -> torch.Tensor:
    """Data images (n, C, H, W) -> what the model codes: the images, or palette tokens that reproduce them."""
    if model.tokenizer is None:
        return model.check_input(images)
    d = model.data_image
    if (
        not isinstance(images, torch.Tensor)
        or images.dtype.is_floating_point
        or images.dim() != 4
        or tuple(images.shape[1:]) != d.shape
        or int(images.min()) < 0
        or int(images.max()) >= d.num_values
    ):
        raise ValueError(
            f"images must be int64 (n, {d.channels}, {d.height}, {d.width}) with values in [0, {d.num_values})"
        )
    images = images.long()  # uint8 images (held compactly by the caller) as the tokenizer takes them
    tokens = model.encode(images)
    if not torch.equal(model.decode(tokens), images):
        raise ValueError(
            f"{model.name}'s colour palette does not reproduce these images exactly, so its tokens "
            "cannot code them losslessly; use a model of the pixel values"
        )
    return tokens


def compress(model, x: torch.Tensor, cond=None, progress=None, threads: int | None = None) -> bytes:
    """Losslessly compress images x, integers (n, C, H, W) of the model's data image (int64, or uint8 to hold
    many images in less memory: each segment is widened to int64 on its own), to bytes.

    progress: report the sub-pixels coded (pixelar.progress: True for a bar, or a callable on_progress(done,
    total, images=, bpd=) with the images and bits/dim of the segments finished so far). threads: None or an
    integer >= 1, checked as by the other long jobs, but coding always runs on CODING_THREADS CPU threads (the
    caller's count restored after), so that neither changes the bytes."""
    with inference(model), _coding_threads(threads):
        return _compress(model, x, cond, progress)


def _coding_threads(threads):
    """The block of a whole compress or decompress call (the model's input, its latents, every table):
    CODING_THREADS CPU threads whatever `threads` (checked) asks, the caller's count restored after."""
    check_threads(threads)
    return num_threads(CODING_THREADS)


def _compress(model, x: torch.Tensor, cond, progress) -> bytes:
    model.coding_scheme()  # refuses a model the codec cannot drive, saying why
    device = next(model.parameters()).device
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        _model_input(model, x)  # raises, saying what the images must be
    n = x.shape[0]
    if n == 0:
        raise ValueError("no images to compress: give at least one")
    S = segment_images(model)
    count = -(-n // S)
    # every image checked, and the checksum taken, before any coding, a segment at a time: the model's
    # int64 input (or tokens) of one segment is held, never of all n images
    crc = 0
    for k in range(count):
        _model_input(model, x[k * S : (k + 1) * S])
        crc = _crc(x[k * S : (k + 1) * S], crc)
    stages = _stages(model, cond, n)
    # the latent model's own cond, for coding_latents / coding_params (the stages hold their coders')
    cond = model.check_cond(cond, n) if model.coding_scheme() in ("latent", "bits-back") else None
    mine = range(distributed.rank(), count, distributed.world_size())  # this process's segments (in rounds)
    total = sum(min(S, n - k * S) for k in mine) * _symbols(model, stages)
    segments, coded = [], [0, 0]  # the stream's segments in order; this process's images and bytes
    with tracking(progress, total, "compressing", "sub-pixel") as bar:

        def encode(k: int) -> bytes:  # one segment at a time: memory of S images, not n
            part = slice(k * S, min(n, (k + 1) * S))
            segment = _encode_segment(model, stages, _model_input(model, x[part]).to(device), cond, part, bar)
            coded[0], coded[1] = coded[0] + part.stop - part.start, coded[1] + len(segment)
            bar.update(images=coded[0], bpd=8 * coded[1] / (coded[0] * model.data_image.dims))
            return segment

        # under torchrun segment k is coded by rank k % N; every process gets every segment's bytes, in order
        distributed.each_in_order(count, encode, lambda k, segment: segments.append(segment), "compressing")
    d = model.data_image
    header = _HEADER.pack(MAGIC, VERSION, n, d.channels, d.height, d.width, d.num_values, fingerprint(model), crc, S)
    return header + struct.pack(f">{len(segments)}I", *map(len, segments)) + b"".join(segments)


def _part(cond, part: slice):
    return None if cond is None else cond[part]


def _encode_segment(model, stages, images: torch.Tensor, cond, part: slice, bar) -> bytes:
    """One segment: the model's inputs `images` (m, C, H, W) of the stream's images `part`, coded together; bar
    (a pixelar.progress.Progress) counts the sub-pixels coded. Stepwise: per step each image in turn. Latent:
    each latent image z(x) so, with its prior's conditionals, then x given them, one channel of all pixels per
    step."""
    m = len(images)
    if model.coding_scheme() == "bits-back":
        return bits_back.encode_segment(model, images, _part(cond, part), bar)
    latent = model.coding_scheme() == "latent"
    targets = model.coding_latents(images, _part(cond, part)) if latent else [images]
    enc = RangeEncoder()
    for k, ((coder, _), target) in enumerate(zip(stages, targets)):
        work = torch.zeros_like(target)  # filled step by step, exactly as the decoder fills its images
        coder_cond = _stage_cond(model, stages, k, targets[:k], cond, part, m)
        for i, j, c, p in _coding_steps(coder, work, coder_cond):
            enc.encode_rows(p, target[:, c, i, j])  # the step's m images in one call
            work[:, c, i, j] = target[:, c, i, j]
            bar.advance(m)
    if latent:
        # the decoder's parameters from the coded latents, in this segment's batch: what decoding computes
        params = model.coding_params([t.clone() for t in targets], _part(cond, part))
        work = torch.zeros_like(images)
        for c, cum in pixel_steps(model.distribution, params, work):
            enc.encode(cum, images[:, c].reshape(-1))
            work[:, c] = images[:, c]
            bar.advance(m * images[0, 0].numel())
    return enc.finish()


def stream_info(data: bytes) -> dict:
    """The header of a compressed stream, its structure checked against the stream's length: {"n", "channels",
    "height", "width", "num_values", "fingerprint", "crc32", "segment_images", "segments" (each segment's coded
    bytes)}."""
    if len(data) < _HEADER.size or data[:4] != MAGIC:
        raise ValueError("not a pixelar compressed stream (it does not start with the PXAR header)")
    version = data[4]
    if version != VERSION:
        raise ValueError(_version_error(version))
    _, _, n, C, H, W, K, fp, crc, S = _HEADER.unpack(data[: _HEADER.size])
    if n == 0 or S == 0:
        raise ValueError(
            f"the stream's header claims {n} images in segments of {S} (damaged header?): a stream "
            "holds at least one image"
        )
    count = -(-n // S)
    table = _HEADER.size + _LENGTH * count
    least = table + _WORD * count  # before reading the lengths: every segment takes its length and a word
    if len(data) < least:
        raise ValueError(
            f"the stream's header claims {n:,} images, which need at least {least:,} bytes, "
            f"but the stream has {len(data):,}: it is truncated or its header is damaged"
        )
    lengths = struct.unpack_from(f">{count}I", data, _HEADER.size)
    end = table + sum(lengths)
    if min(lengths) == 0 or len(data) < end:
        raise ValueError(
            f"the stream is truncated or damaged: its segment lengths add up to {end:,} bytes, the "
            f"stream has {len(data):,}"
        )
    if len(data) > end:
        raise ValueError(
            f"{len(data) - end:,} bytes follow the end of the stream (several files concatenated?): "
            "decompress each file on its own"
        )
    odd = next((k for k, length in enumerate(lengths) if length % _WORD), None)
    if odd is not None:
        raise ValueError(
            f"segment {odd}'s length, {lengths[odd]:,} bytes, is not a whole number of 32-bit words (what the "
            "coders write): the stream is damaged"
        )
    return {
        "n": n,
        "channels": C,
        "height": H,
        "width": W,
        "num_values": K,
        "fingerprint": fp,
        "crc32": crc,
        "segment_images": S,
        "segments": list(lengths),
    }


# what wrote the streams of earlier versions, which this pixelar no longer reads
_OLD_VERSIONS = {
    1: "in one segment, without segment lengths, by the pure-Python arithmetic coder",
    2: "by the pure-Python arithmetic coder (bits-back: its rANS stack)",
    3: "with the tables of the log-probabilities' softmax, which the logistic mixture now computes otherwise",
}


def _version_error(version: int) -> str:
    if version < VERSION:
        what = _OLD_VERSIONS.get(version, "")
        return (
            f"stream version {version} was written by an older pixelar{' (' + what + ')' if what else ''}: this "
            f"pixelar reads version {VERSION} only; decode it with the pixelar release "
            f"that wrote it (and compress the images again with this one to have a version {VERSION} stream)"
        )
    return (
        f"stream version {version} was written by a newer pixelar: this pixelar reads version {VERSION}; "
        "decode it with that release or a later one"
    )


def decompress(model, data: bytes, cond=None, progress=None, threads: int | None = None) -> torch.Tensor:
    """The images compress() coded, int64 (n, C, H, W). Raises ValueError for another format or model.
    progress and threads: as compress's."""
    out = None

    def keep(rows: slice, images: torch.Tensor) -> None:
        nonlocal out
        if out is None:
            out = images.new_empty((stream_info(data)["n"], *images.shape[1:]))
        out[rows] = images

    decompress_segments(model, data, keep, cond, progress, threads)
    return out.to(next(model.parameters()).device)


def decompress_segments(model, data: bytes, use, cond=None, progress=None, threads: int | None = None) -> None:
    """The images of decompress(model, data, ...) handed over as they are decoded: use(rows, images) for each
    segment in order, rows a slice of range(n) and images (m, C, H, W) int64 on the CPU, on every process under
    torchrun. Memory: one round of segments (one per process), not n images. threads: as compress's.

    The stream's checksum covers all its images, so a damaged stream may be found only after the last use:
    the ValueError comes then, and a caller that wrote images out must discard them (pixelar.io.write_folder
    does when the error leaves its block)."""
    with inference(model), _coding_threads(threads):
        _decompress(model, data, use, cond, progress)


def _decode_segment(model, stages, segment: bytes, cond, part: slice, device, k: int, bar) -> torch.Tensor:
    """The m images (m, C, H, W) of segment k, images part of the stream; bar (a pixelar.progress.Progress)
    counts the sub-pixels. Mirrors _encode_segment step for step."""
    m = part.stop - part.start
    if model.coding_scheme() == "bits-back":
        try:
            return bits_back.decode_segment(model, segment, m, _part(cond, part), device, bar)
        except ValueError as e:
            raise _undecodable(model, f"segment {k}'s bits-back coding fails ({e})") from None
    dec = RangeDecoder(segment)
    try:
        x = _decode_symbols(model, stages, dec, cond, part, device, bar)
    except DamagedCode as e:  # constriction found the data invalid
        raise _undecodable(model, f"segment {k} does not decode: {e}") from None
    if not dec.exact():  # the segment must be exactly the code of what it decoded to, not a word more or less
        raise _undecodable(
            model,
            f"segment {k}'s coded data ({len(segment)} bytes) is not the code of the sub-pixels it decodes to "
            f"({dec.coded_bytes()} bytes)",
        )
    return x


def _decode_symbols(model, stages, dec: RangeDecoder, cond, part: slice, device, bar) -> torch.Tensor:
    """The range-coded images of a segment, stage by stage (_encode_segment's steps, decoded)."""
    m = part.stop - part.start
    decoded = []
    for stage, (coder, _) in enumerate(stages):
        x = torch.zeros(m, *coder.image.shape, dtype=torch.long, device=device)
        for i, j, c, p in _coding_steps(coder, x, _stage_cond(model, stages, stage, decoded, cond, part, m)):
            x[:, c, i, j] = torch.from_numpy(dec.decode_rows(p)).to(device)  # the step's m images in one call
            bar.advance(m)
        decoded.append(x)
    if model.coding_scheme() == "latent":
        params = model.coding_params(decoded, _part(cond, part))  # the latents' batch, as when coding
        x = torch.zeros(m, *model.image.shape, dtype=torch.long, device=device)
        for c, cum in pixel_steps(model.distribution, params, x):
            x[:, c] = torch.from_numpy(dec.decode(cum)).to(device).view(m, *model.image.shape[1:])
            bar.advance(m * model.image.height * model.image.width)
    return x


def _undecodable(model, what: str) -> ValueError:
    """The error of a stream that does not decode (a segment that ends elsewhere, a bits-back stack that does
    not unwind, images that fail the checksum): `what`, then the causes, the inputs that must be compress's
    named (the model is the header's fingerprint's; the thread count is none: CODING_THREADS)."""
    where = (
        "on the device and platform (torch build, CPU or GPU kind) that compress ran on, whose floats the "
        "model's probabilities depend on; the thread count does not matter"
    )
    if not (model.num_classes or model.cond_dim or model.cond_channels):
        return ValueError(f"{what}: the stream is damaged, or it is decoded elsewhere than coded: decode {where}")
    kind = "class labels" if model.num_classes else "cond vectors" if model.cond_dim else "cond maps"
    return ArgumentValueError(
        "cond",
        "cond",
        f"{what}: the stream is damaged, or decompress is not given what compress was: pass the same ",
        f" ({kind}), {where}",
    )


def _decompress(model, data: bytes, use, cond, progress) -> None:
    info = stream_info(data)
    n, C, H, W, K, fp = (info[k] for k in ("n", "channels", "height", "width", "num_values", "fingerprint"))
    model.coding_scheme()  # refuses a model the codec cannot drive, saying why
    d = model.data_image
    if (C, H, W, K) != (d.channels, d.height, d.width, d.num_values):
        raise ValueError(
            f"the stream holds {C}x{H}x{W} images with {K} values, the model is for "
            f"{d.channels}x{d.height}x{d.width} with {d.num_values}"
        )
    if fp != fingerprint(model):
        raise ValueError(
            "the stream was made with another model or other weights (fingerprint mismatch): "
            "decompress with the model that compressed it"
        )
    stages = _stages(model, cond, n)
    # the latent model's own cond (the stages hold their coders')
    cond = model.check_cond(cond, n) if model.coding_scheme() in ("latent", "bits-back") else None
    device = next(model.parameters()).device
    S, lengths = info["segment_images"], info["segments"]
    starts = [_HEADER.size + _LENGTH * len(lengths) + sum(lengths[:k]) for k in range(len(lengths))]
    mine = range(distributed.rank(), len(lengths), distributed.world_size())  # this process's segments (rounds)
    total = sum(min(S, n - k * S) for k in mine) * _symbols(model, stages)  # symbols of what is coded
    decoded, crc = [0, 0], 0  # this process's images and coded bytes; the CRC of the images so far, in order
    with tracking(progress, total, "decompressing", "sub-pixel") as bar:

        def decode(k: int) -> torch.Tensor:  # one segment at a time: S images' memory
            part = slice(k * S, min(n, (k + 1) * S))
            seg = data[starts[k] : starts[k] + lengths[k]]
            x = _decode_segment(model, stages, seg, cond, part, device, k, bar)
            decoded[0], decoded[1] = decoded[0] + part.stop - part.start, decoded[1] + lengths[k]
            bar.update(images=decoded[0], bpd=8 * decoded[1] / (decoded[0] * d.dims))
            return model.decode(x).cpu()  # tokens -> data images where tokenized

        def take(k: int, images: torch.Tensor) -> None:
            nonlocal crc
            crc = _crc(images, crc)
            use(slice(k * S, k * S + len(images)), images)

        # under torchrun segment k is decoded by rank k % N; every process gets every segment, in order
        distributed.each_in_order(len(lengths), decode, take, "decompressing")
    if crc != info["crc32"]:
        raise _undecodable(model, "the decoded images fail the stream's checksum")
