"""`pclucas14-pixelcnn_pp`: the PyTorch PixelCNN++ port's state dict (github.com/pclucas14/pixel-cnn-pp).

The port saves `torch.save(model.state_dict(), ...)` of its `PixelCNN` module, often wrapped in DataParallel
(every key prefixed "module."). Its layers, by the port's names -> pixelar's `pixelcnn_pp`:

    u_init.conv, ul_init.0.conv, ul_init.1.conv          -> u_init, ul_init_up, ul_init_left
    up_layers.S.{u,ul}_stream.K.{conv_input.conv, nin_skip.lin_a, conv_out.conv}
                                                          -> up_{u,ul}.S.K.{conv1, skip, conv2}
    down_layers.S.{u,ul}_stream.K.(...)                   -> down_{u,ul}.S.K.(...)
    downsize_{u,ul}_stream.I.conv, upsize_{u,ul}_stream.I.deconv
                                                          -> downsample_{u,ul}.I, upsample_{u,ul}.I
    nin_out.lin_a                                         -> out (rows permuted, below)

Weights come in two forms, detected per layer: before the port's April 2019 fix (`self.conv == wn(...)`, a
comparison where an assignment was meant) its shifted convolutions were plain (`conv.weight`) while the nin
layers and transposed convolutions were weight-normalised (`weight_g`, `weight_v`); after it, every layer is.
Weight norm is folded as torch's `weight_norm(dim=0)` computes it: per output filter of a Conv2d or Linear,
but per INPUT channel of a ConvTranspose2d (its weight is (in, out, kh, kw)).

The mixture's output rows are in the TF original's per-channel layout, permuted to pixelar's
(checkpoint.output_rows).

The checkpoint fixes the channels (1: the port's MNIST models, 3: CIFAR-10), filters, resnets per stage and
mixture components, not the image size: image= (default 1x28x28 or 3x32x32, the datasets the port trains on).
The port's loss uses bins of width 2/255 (256 values), so other value counts are refused.
"""

from __future__ import annotations

from ..models import create_model
from ..types import ImageSpec
from . import register_source
from .checkpoint import Tensors, load_weights, output_rows, read_torch_state, strip_prefix

DEFAULT_IMAGES = {1: ImageSpec(1, 28, 28, 256), 3: ImageSpec(3, 32, 32, 256)}  # MNIST, CIFAR-10


@register_source(
    "pclucas14-pixelcnn_pp",
    paper="PixelCNN++ (Salimans, Karpathy, Chen, Kingma 2017), as ported to PyTorch by pclucas14/pixel-cnn-pp",
    paper_bpd="2.95 on CIFAR-10 (the port's README; the paper's own TF model: 2.92)",
    reads="the port's .pth state dict (torch.save(model.state_dict()), with or without DataParallel's 'module.')",
    download="https://mega.nz/#F!W7IhST7R!PV7Pbet8Q07GxVLGnmQrZg (linked from the port's README)",
    options={"image": "C,H,W,K of the images (default: 3,32,32,256 for colour, 1,28,28,256 for greyscale files)"},
)
def convert(path, image: ImageSpec | None = None):
    state, stripped = strip_prefix(read_torch_state(path), "module.")
    t = Tensors(state, f"checkpoint {path}")
    if not t.has("u_init.conv.weight") and not t.has("u_init.conv.weight_g"):
        raise ValueError(
            f"checkpoint {path} is not a pclucas14/pixel-cnn-pp state dict (it has no u_init.conv weights; "
            f"its first keys: {', '.join(list(state)[:3])})"
        )
    u_init = t.weight("u_init.conv")[0]
    F_, C = u_init.shape[0], u_init.shape[1] - 1
    R = t.count("up_layers.0.u_stream.{}.")
    if C not in DEFAULT_IMAGES or R < 1:
        raise ValueError(f"checkpoint {path}: {C} image channels, {R} resnets per stage (the port makes 1 or 3, >= 1)")
    out_rows = t.state["nin_out.lin_a.bias"].shape[0] if t.has("nin_out.lin_a.bias") else 0
    per_mix = 3 if C == 1 else 10  # the port's rows per mixture component
    if out_rows % per_mix:
        raise ValueError(f"checkpoint {path}: {out_rows} output rows are not a multiple of {per_mix}")
    M = out_rows // per_mix
    image = image or DEFAULT_IMAGES[C]
    if image.channels != C or image.num_values != 256:
        raise ValueError(
            f"checkpoint {path} models {C}-channel images of 256 values, got image {image.channels} channels, "
            f"{image.num_values} values"
        )
    model = create_model(
        "pixelcnn_pp",
        image,
        size="paper",
        nr_filters=F_,
        nr_resnet=R,
        dropout=0.5,  # the port's Dropout2d(0.5): only matters for training on
        output={"kind": "logistic_mixture", "nr_mix": M},
    )

    weights, forms = {}, {}

    def layer(ours: str, theirs: str, linear: bool = False) -> None:
        w, form = t.weight(theirs)
        forms[form] = forms.get(form, 0) + 1
        weights[f"{ours}.weight"] = w[:, :, None, None] if linear else w  # nin: a Linear on channels = 1x1 conv
        weights[f"{ours}.bias"] = t.take(f"{theirs}.bias")

    layer("u_init", "u_init.conv")
    layer("ul_init_up", "ul_init.0.conv")
    layer("ul_init_left", "ul_init.1.conv")
    for ours, theirs in (("up", "up_layers"), ("down", "down_layers")):
        for s in range(3):
            for stream in ("u", "ul"):
                n = len(getattr(model, f"{ours}_{stream}")[s])
                for k in range(n):
                    src, dst = f"{theirs}.{s}.{stream}_stream.{k}", f"{ours}_{stream}.{s}.{k}"
                    layer(f"{dst}.conv1", f"{src}.conv_input.conv")
                    layer(f"{dst}.conv2", f"{src}.conv_out.conv")
                    if ours == "down" or stream == "ul":
                        layer(f"{dst}.skip", f"{src}.nin_skip.lin_a", linear=True)
    for i in range(2):
        for stream in ("u", "ul"):
            layer(f"downsample_{stream}.{i}", f"downsize_{stream}_stream.{i}.conv")
            layer(f"upsample_{stream}.{i}", f"upsize_{stream}_stream.{i}.deconv")
    layer("out", "nin_out.lin_a", linear=True)
    t.finish()
    rows = output_rows(C, M)
    weights["out.weight"], weights["out.bias"] = weights["out.weight"][rows], weights["out.bias"][rows]
    load_weights(model, weights, f"checkpoint {path}")
    notes = [
        f"{F_} filters, {R} resnets per stage, {M} mixture components; images {image.channels}x{image.height}"
        f"x{image.width} of {image.num_values} values",
        *(["DataParallel's 'module.' prefix stripped"] if stripped else []),
        ", ".join(f"{n} layers {form.replace('_', ' ')}" for form, n in sorted(forms.items()))
        + " (weight norm folded as torch's weight_norm(dim=0): per output filter, per input channel of the "
        "transposed convolutions)",
        "mixture output rows permuted from the port's per-channel layout",
    ]
    return model, notes
