"""`openai-vdvae`: the Very Deep VAE's own checkpoints (github.com/openai/vdvae, Child 2021) -> pixelar's `vdvae`.

Files: its train.py saves `ema_vae.state_dict()` of a plain VAE as PATH-model-ema.th (no key prefix: the files
its README publishes, the only ones for CIFAR-10) and `vae.state_dict()` of the DistributedDataParallel-wrapped
model as PATH-model.th (every key "module."); both are read. Their layers -> pixelar's:

    encoder.in_conv, encoder.enc_blocks.I.c1..c4      -> encoder.in_conv, encoder.blocks.I.c1..c4 (same order)
    decoder.dec_blocks.K.{enc, prior, z_proj, resnet} -> dec_blocks.K.{posterior, prior, z_proj, resnet}
    decoder.bias_xs.J (per resolution <= no_bias_above, ascending)
                                                      -> start.I (the resolutions above it start from zero)
    decoder.gain, decoder.bias                        -> gain, bias
    decoder.out_net.out_conv                          -> out (mixture rows permuted: checkpoint.output_rows)

A file does not record its block layout: `hps` gives it, one of hps.py's named sets or openai/vdvae's own
hyperparameter names (a JSON file, or a dict from Python) for those that shape the model, over hps.py's
defaults. Its layer strings ("32x11,32d2,16x6,...", "1x1,4m1,4x2,...") become pixelar's block counts per
resolution where they fit them: the resolutions of pixelar's vdvae for the image size, each encoder
resolution left by one pooling block at its end (RESdRATE), each decoder resolution above 1x1 entered by one
block mixing in the one below (RESmRES).

The encoder's input: data.py shifts and scales the 0..255 values per dataset, (x - mean) / std; that is the
model's input_mean and input_std on the [-1, 1] scale. The likelihood's targets are (x - 127.5) / 127.5 for
every dataset, the bin centres of pixelar's mixture, with the end bins open as here. What cannot be matched
exactly is refused: FFHQ-256's 5-bit loss (dataset ffhq_256) and per-resolution widths (custom_width_str).
"""

from __future__ import annotations

import numbers
import re

import torch

from ..errors import ArgumentValueError
from ..models import create_model
from ..models.vdvae import resolutions
from ..types import ImageSpec
from . import register_source
from .checkpoint import Tensors, load_weights, named_hps, output_rows, read_torch_state, strip_prefix

# hps.py's defaults (add_vae_arguments) of the hyperparameters that shape the model; dataset, image_size and
# image_channels are data.py's (set from the dataset there)
DEFAULTS = {
    "dataset": "cifar10",
    "width": 512,
    "zdim": 16,
    "enc_blocks": None,
    "dec_blocks": None,
    "bottleneck_multiple": 0.25,
    "custom_width_str": "",
    "no_bias_above": 64,
    "num_mixtures": 10,
    "image_size": None,
    "image_channels": None,
}
_CIFAR10 = {
    "dataset": "cifar10",
    "width": 384,
    "zdim": 16,
    "enc_blocks": "32x11,32d2,16x6,16d2,8x6,8d2,4x3,4d4,1x3",
    "dec_blocks": "1x1,4m1,4x2,8m4,8x5,16m8,16x10,32m16,32x21",
}
_I32 = {
    **_CIFAR10,
    "dataset": "imagenet32",
    "width": 512,
    "enc_blocks": "32x15,32d2,16x9,16d2,8x8,8d2,4x6,4d4,1x6",
    "dec_blocks": "1x2,4m1,4x4,8m4,8x9,16m8,16x19,32m16,32x40",
}
_I64 = {
    **_I32,
    "dataset": "imagenet64",
    "enc_blocks": "64x11,64d2,32x20,32d2,16x9,16d2,8x8,8d2,4x7,4d4,1x5",
    "dec_blocks": "1x2,4m1,4x3,8m4,8x7,16m8,16x15,32m16,32x31,64m32,64x12",
}
_FFHQ256 = {
    **_I64,
    "dataset": "ffhq_256",
    "enc_blocks": "256x3,256d2,128x8,128d2,64x12,64d2,32x17,32d2,16x7,16d2,8x5,8d2,4x5,4d4,1x4",
    "dec_blocks": "1x2,4m1,4x3,8m4,8x4,16m8,16x9,32m16,32x21,64m32,64x13,128m64,128x7,256m128",
    "no_bias_above": 64,
}
# hps.py's named sets (`--hps NAME`), their keys that shape the model; the FFHQ ones are refused (see above)
NAMED = {
    "cifar10": _CIFAR10,
    "imagenet32": _I32,
    "imagenet64": _I64,
    "ffhq256": _FFHQ256,
    "ffhq1024": {
        **_FFHQ256,
        "dataset": "ffhq_1024",
        "num_mixtures": 2,
        "width": 16,
        "enc_blocks": "1024x1,1024d2,512x3,512d2,256x5,256d2,128x7,128d2,64x10,64d2,32x14,32d2,16x7,16d2,8x5,8d2,"
        "4x5,4d4,1x4",
        "dec_blocks": "1x2,4m1,4x3,8m4,8x4,16m8,16x9,32m16,32x20,64m32,64x14,128m64,128x7,256m128,256x2,512m256,"
        "1024m512",
        "custom_width_str": "512:32,256:64,128:512,64:512,32:512,16:512,8:512,4:512,1:512",
    },
}
# data.py per dataset: image size, and the mean and std its encoder input is normalised with, on 0..255 values
# (its shift is -mean and its scale 1 / std; FFHQ-1024's are given there on x / 255)
DATASETS = {
    "cifar10": (32, 120.63838, 64.16736),
    "imagenet32": (32, 116.2373, 69.37404),
    "imagenet64": (64, 115.92961967, 69.37404),
    "ffhq_256": (256, 112.8666757481, 69.84780273),
    "ffhq_1024": (1024, 0.4387 * 255, 0.2743 * 255),
}
HPS_HELP = "cifar10, imagenet32 or imagenet64 (hps.py's sets), or a .json file of openai/vdvae's hyperparameters"


def hyperparameters(hps, what: str) -> tuple[dict, str]:
    """openai/vdvae's hyperparameters that shape the model, from a named set, a .json file or a dict, over hps.py's
    defaults, checked. -> (H, how they were given)."""
    H, shown = named_hps(hps, NAMED, DEFAULTS, HPS_HELP, "openai/vdvae", what)
    if H["dataset"] not in DATASETS:
        raise ValueError(f"{shown}: dataset {H['dataset']!r} is none of openai/vdvae's ({', '.join(DATASETS)})")
    if H["dataset"] == "ffhq_256":
        raise ValueError(
            f"{shown}: dataset ffhq_256 is scored by openai/vdvae's 5-bit loss, whose bins (half-width 1/31 around "
            "values 8/127.5 apart) overlap and whose top value (248) is no open end bin: not a normalised discrete "
            "likelihood, so no pixelar model gives it exactly (and pixelar does not convert it approximately)"
        )
    size = DATASETS[H["dataset"]][0]
    H["image_size"] = size if H["image_size"] is None else H["image_size"]
    H["image_channels"] = 3 if H["image_channels"] is None else H["image_channels"]
    for key in ("width", "zdim", "num_mixtures", "image_size", "image_channels", "no_bias_above"):
        v = H[key]
        if not isinstance(v, numbers.Integral) or isinstance(v, bool) or v < (0 if key == "no_bias_above" else 1):
            raise ValueError(f"{shown}: {key} must be an integer >= {int(key != 'no_bias_above')}, got {v!r}")
    if H["image_channels"] != 3:
        raise ValueError(f"{shown}: image_channels {H['image_channels']}: openai/vdvae's loss models RGB images (3)")
    b = H["bottleneck_multiple"]
    if not isinstance(b, numbers.Real) or isinstance(b, bool) or not 0 < b <= 1 or int(H["width"] * b) < 1:
        raise ValueError(f"{shown}: bottleneck_multiple must be in (0, 1] with width * it >= 1, got {b!r}")
    for key in ("enc_blocks", "dec_blocks", "custom_width_str"):
        if not isinstance(H[key], str):
            raise ValueError(f"{shown}: {key} must be a string of openai/vdvae's layer format, got {H[key]!r}")
    return H, shown


def _blocks(text: str, key: str, shown: str) -> list[tuple[int, int | None]]:
    """A layer string ("32x11,32d2,4m1,1") -> one (resolution, second number or None) per block: the second
    number is a pooling rate in the encoder and the resolution mixed in in the decoder, as openai/vdvae reads it."""
    out: list[tuple[int, int | None]] = []
    for part in text.split(","):
        m = re.fullmatch(r"(\d+)(?:([xdm])(\d+))?", part.strip())
        if m is None:
            raise ValueError(f"{shown}: {key} block {part!r} is not RESxN, RESdRATE, RESmRES or RES")
        res, kind, n = int(m[1]), m[2], None if m[3] is None else int(m[3])
        out += [(res, None)] * n if kind == "x" else [(res, n)]
    return out


def encoder_counts(text: str, sizes: list[int], shown: str) -> list[int]:
    """enc_blocks -> blocks per resolution from the top (sizes, full resolution first), each resolution but the
    last ending with the one block that pools it to the next."""
    counts, i, n = [], 0, 0
    for res, rate in _blocks(text, "enc_blocks", shown):
        ok = res == sizes[i] and (rate is None or (i + 1 < len(sizes) and res == rate * sizes[i + 1]))
        if not ok:
            raise ValueError(
                f"{shown}: enc_blocks {text!r} does not fit pixelar's vdvae, whose resolutions at {sizes[0]}x"
                f"{sizes[0]} are {', '.join(map(str, sizes))}, each left by one pooling block at its end "
                f"(block {res}{'' if rate is None else f'd{rate}'} where a block at {sizes[i]} is due)"
            )
        n += 1
        if rate is not None:
            counts.append(n)
            i, n = i + 1, 0
    if i != len(sizes) - 1 or n < 1:
        raise ValueError(
            f"{shown}: enc_blocks {text!r} must end with at least one block at 1x1 after pooling through "
            f"{', '.join(map(str, sizes))}"
        )
    return counts + [n]


def decoder_counts(text: str, sizes: list[int], shown: str) -> list[int]:
    """dec_blocks -> blocks per resolution from the top: from 1x1 up, each resolution above it entered by one
    block that mixes in the resolution below."""
    up = sizes[::-1]
    counts, i, n = [], 0, 0
    for res, mixin in _blocks(text, "dec_blocks", shown):
        if res == up[i] and mixin is None and (n or i == 0):
            n += 1
        elif n and i + 1 < len(up) and res == up[i + 1] and mixin == up[i]:
            counts.append(n)
            i, n = i + 1, 1
        else:
            raise ValueError(
                f"{shown}: dec_blocks {text!r} does not fit pixelar's vdvae, whose resolutions at {sizes[0]}x"
                f"{sizes[0]} are {', '.join(map(str, up))} upwards, each above 1x1 entered by one block mixing in "
                f"the one below (block {res}{'' if mixin is None else f'm{mixin}'} does not follow)"
            )
    if i != len(up) - 1:
        raise ValueError(f"{shown}: dec_blocks {text!r} stops below {up[-1]}x{up[-1]}, the image size")
    return (counts + [n])[::-1]


def _custom_widths(text: str, shown: str) -> list[tuple[int, int]]:
    """custom_width_str ("512:32,256:64") -> [(resolution, width)]."""
    try:
        return [(int(r), int(w)) for r, w in (part.split(":") for part in text.split(",") if part.strip())]
    except ValueError:
        raise ValueError(f"{shown}: custom_width_str {text!r} is not RES:WIDTH,RES:WIDTH,...") from None


@register_source(
    "openai-vdvae",
    paper="Very Deep VAEs (Child 2021, 'Very Deep VAEs Generalize Autoregressive Models and Can Outperform Them on "
    "Images'), the authors' code openai/vdvae",
    paper_bpd="<= 2.87 on CIFAR-10 (mean of the four seeds, 2.879 / 2.842 / 2.898 / 2.864), <= 3.80 on ImageNet 32, "
    "<= 3.52 on ImageNet 64 (ELBO; the README; ImageNet: van den Oord et al.'s old downsampled version, pixelar's "
    "imagenet32_oord and imagenet64_oord)",
    reads="its *-model-ema.th (or *-model.th, with DistributedDataParallel's 'module.') state dict",
    download="https://openaipublic.blob.core.windows.net/very-deep-vaes-assets/vdvae-assets-2/"
    "cifar10-seed0-iter-900000-model-ema.th and the others listed in the README of github.com/openai/vdvae",
    options={"hps": f"{HPS_HELP} (required: the files do not record the block layout)"},
)
def convert(path, hps=None):
    what = f"checkpoint {path}"
    if hps is None:
        raise ArgumentValueError(
            "hps", "hps=NAME", f"{what}: openai/vdvae's files do not record their block layout: pass ", f" ({HPS_HELP})"
        )
    H, shown = hyperparameters(hps, what)
    S = H["image_size"]
    image = ImageSpec(3, S, S, 256)
    sizes = [h for h, _ in resolutions(S, S)]
    other = [(r, w) for r, w in _custom_widths(H["custom_width_str"], shown) if r in sizes and w != H["width"]]
    if other:
        raise ValueError(
            f"{shown}: custom_width_str gives resolution {other[0][0]} width {other[0][1]}, not width {H['width']}: "
            "pixelar's vdvae has one width at every resolution"
        )
    enc = encoder_counts(H["enc_blocks"], sizes, shown)
    dec = decoder_counts(H["dec_blocks"], sizes, shown)
    state, stripped = strip_prefix(read_torch_state(path), "module.")
    if "encoder.in_conv.weight" not in state:
        raise ValueError(
            f"{what} is not an openai/vdvae model state dict (it has no encoder.in_conv.weight; its first keys: "
            f"{', '.join(map(str, list(state)[:3]))}): give its -model-ema.th or -model.th file"
        )
    t = Tensors(state, what)
    M = H["num_mixtures"]

    def size(key: str, axis: int) -> int:  # a tensor's size on one axis, 0 where the file lacks it
        return state[key].shape[axis] if t.has(key) else 0

    found = {
        "width": size("encoder.in_conv.weight", 0),
        "zdim": size("decoder.dec_blocks.0.z_proj.weight", 1),
        "encoder blocks": t.count("encoder.enc_blocks.{}."),
        "decoder blocks": t.count("decoder.dec_blocks.{}."),
        "mixture components": size("decoder.out_net.out_conv.bias", 0) / 10,
    }
    wanted = {"width": H["width"], "zdim": H["zdim"], "encoder blocks": sum(enc), "decoder blocks": sum(dec)}
    wanted |= {"mixture components": M}
    if found != wanted:
        text = ", ".join(f"{k} {v:g}" for k, v in found.items())
        raise ValueError(
            f"{what} does not fit {shown}: it has {text}; those hps give "
            f"{', '.join(f'{k} {v}' for k, v in wanted.items())}: give the hps it was trained with"
        )
    _, mean, std = DATASETS[H["dataset"]]
    model = create_model(
        "vdvae",
        image,
        size="paper",
        width=H["width"],
        zdim=H["zdim"],
        bottleneck=float(H["bottleneck_multiple"]),
        enc_blocks=enc,
        dec_blocks=dec,
        output={"kind": "logistic_mixture", "nr_mix": M},
        # data.py's (x - mean) / std on 0..255 values, with x = 127.5 (u + 1) for u on the [-1, 1] scale
        input_mean=mean / 127.5 - 1.0,
        input_std=std / 127.5,
    )

    weights: dict[str, torch.Tensor] = {}

    def conv(ours: str, theirs: str) -> None:
        weights[f"{ours}.weight"], weights[f"{ours}.bias"] = t.take(f"{theirs}.weight"), t.take(f"{theirs}.bias")

    def block(ours: str, theirs: str) -> None:
        for c in ("c1", "c2", "c3", "c4"):
            conv(f"{ours}.{c}", f"{theirs}.{c}")

    conv("encoder.in_conv", "encoder.in_conv")
    for i in range(sum(enc)):
        block(f"encoder.blocks.{i}", f"encoder.enc_blocks.{i}")
    for k in range(sum(dec)):
        theirs = f"decoder.dec_blocks.{k}"
        block(f"dec_blocks.{k}.posterior", f"{theirs}.enc")
        block(f"dec_blocks.{k}.prior", f"{theirs}.prior")
        conv(f"dec_blocks.{k}.z_proj", f"{theirs}.z_proj")
        block(f"dec_blocks.{k}.resnet", f"{theirs}.resnet")
    with_bias = sorted(r for r in sizes if r <= H["no_bias_above"])  # bias_xs: one per such resolution, ascending
    for i, r in enumerate(sizes):
        weights[f"start.{i}"] = (
            t.take(f"decoder.bias_xs.{with_bias.index(r)}") if r in with_bias else torch.zeros_like(model.start[i])
        )
    weights["gain"], weights["bias"] = t.take("decoder.gain"), t.take("decoder.bias")
    rows = output_rows(3, M)
    weights["out.weight"] = t.take("decoder.out_net.out_conv.weight")[rows]
    weights["out.bias"] = t.take("decoder.out_net.out_conv.bias")[rows]
    t.finish()
    load_weights(model, weights, what)
    unbiased = [r for r in sizes if r not in with_bias]
    notes = [
        f"{shown}: width {H['width']}, zdim {H['zdim']}, bottleneck {H['bottleneck_multiple']:g}, {M} mixture "
        f"components, images 3x{S}x{S} of 256 values",
        f"enc_blocks {H['enc_blocks']} -> {enc} per resolution from {S} down; dec_blocks {H['dec_blocks']} -> "
        f"{dec} ({sum(dec)} latent layers)",
        f"encoder input normalised as openai/vdvae's data.py does for {H['dataset']}: (x - {mean:.10g}) / "
        f"{std:.10g} on 0..255 values, input_mean {model.encoder.input_mean:.9g} and input_std "
        f"{model.encoder.input_std:.9g} on the [-1, 1] scale",
        *(["DistributedDataParallel's 'module.' prefix stripped (a -model.th file)"] if stripped else []),
        *(
            [f"no learned constant at {', '.join(map(str, unbiased))} px (above no_bias_above): started from zero"]
            if unbiased
            else []
        ),
        "mixture output rows permuted from the TF PixelCNN++ layout",
    ]
    if H["dataset"] in ("imagenet32", "imagenet64"):  # setup_imagenet.sh fetches image-net.org/small's archives
        notes.append(
            f"openai/vdvae trains and scores {H['dataset']} on van den Oord et al.'s downsampled ImageNet: evaluate "
            f"on pixelar's {H['dataset']}_oord (its {H['dataset']} is the other, npz release)"
        )
    return model, notes
