"""`openai-pixelcnn_pp`: the original PixelCNN++ TensorFlow checkpoint (github.com/openai/pixel-cnn).

The published params_cifar.ckpt (the 2.92 bits/dim CIFAR-10 model) is a TensorFlow V1 checkpoint, one file,
read here without TensorFlow (tf_checkpoint.py); the V2 format (.index + .data) of later TensorFlow versions
reads the same. Its train.py saves every variable of the graph:

    model/conv2d_N/{V,g,b}, model/deconv2d_N/{V,g,b}, model/dense_N/{V,g,b}   the weight-normed layers
    model/conditional_weights_N/hw                                         --class_conditional: one per resnet
    .../ExponentialMovingAverage                                           the Polyak (EMA) copy of each
    Variable, Variable_1, ...                                              adam_updates' moments and step
                                                                           (and the sampling labels)

The test score uses the EMA copies, so they are converted (a file without them: its weights, said in the
card); the unnamed variables are the optimizer's state and are left out. Layers are numbered in the order
model_spec creates them (nn.get_name's counters): the three first convolutions, then per up-pass resnet its
conv2d (and for the ul stream the dense nin of the skip input) and second conv2d, the stride-2 convolutions
after stages 0 and 1, the down pass likewise with deconv2d after its stages 0 and 1, and the output dense.

Weight norm is folded as their code computes it: W = g * V / ||V||, the norm per OUTPUT filter (conv2d:
V is (kh, kw, in, out), norm over axes 0, 1, 2; deconv2d: V is (kh, kw, out, in), norm over 0, 1, 3; dense:
V is (in, out), norm over 0). Convolutions are the same cross-correlations as torch's (HWIO -> OIHW); their
transposed convolution is torch's ConvTranspose2d with its (in, out, kh, kw) weight. The mixture's output rows
are in their per-channel layout, permuted to pixelar's (checkpoint.output_rows); `hw` (labels x 2F, applied
to a one-hot label) is the class embedding of each gated resnet.

Their loss (nn.discretized_mix_logistic_loss) is written for 3 channels and 256 values; their data is
CIFAR-10 or van den Oord's downsampled ImageNet, unlabelled (data/imagenet_data.py): image= gives the size
(default 3x32x32). Their energy-distance models (--energy_distance) are not likelihood models and are refused,
as are resnet nonlinearities other than concat_elu (pixelar's pixelcnn_pp has only concat_elu).
"""

from __future__ import annotations

import re

import torch

from ..io import file_sha256
from ..models import create_model
from ..types import ImageSpec
from . import register_source
from .checkpoint import Tensors, fold_weight_norm, load_weights, output_rows
from .tf_checkpoint import TFCheckpoint

EMA = "/ExponentialMovingAverage"
UNNAMED = re.compile(r"Variable(_\d+)?")  # tf.Variable(value, 'name') passes the name as `trainable`


@register_source(
    "openai-pixelcnn_pp",
    paper="PixelCNN++ (Salimans, Karpathy, Chen, Kingma 2017), the authors' TensorFlow code openai/pixel-cnn",
    paper_bpd="2.92 on CIFAR-10",
    reads="their tf.train.Saver checkpoint: params_cifar.ckpt (TensorFlow V1, one file) or a V2 .index file",
    download="http://alpha.openai.com/pxpp.zip (dead; the authors' file re-uploaded at "
    "https://www.dropbox.com/s/we5cltujdlhuxr8/pxpp.zip, linked from openai/pixel-cnn issue 35; "
    "params_cifar.ckpt SHA-1 c0913e0aea902ad33dde81c96b3d8cea8c0687e9)",
    options={"image": "C,H,W,K of the images (default 3,32,32,256: CIFAR-10)"},
)
def convert(path, image: ImageSpec | None = None):
    ckpt = TFCheckpoint(path)
    what = f"checkpoint {path}"
    if "model/conv2d_0/V" not in ckpt:
        shown = ", ".join(list(ckpt)[:3])
        raise ValueError(f"{what} is not an openai/pixel-cnn checkpoint (no model/conv2d_0/V; it has {shown}, ...)")
    ema = any(k.endswith(EMA) for k in ckpt)
    t = Tensors(ckpt, what)
    counts = {kind: _count(ckpt, kind) for kind in ("conv2d", "dense", "deconv2d", "conditional_weights")}
    kh, kw, c_in, F_ = ckpt.shape("model/conv2d_0/V")
    C, R = c_in - 1, (counts["conv2d"] - 15) // 24  # conv2d layers: 3 + 24 per resnet of a stage + 12
    if C != 3:
        raise ValueError(f"{what}: its first layer reads {c_in} channels; openai/pixel-cnn models RGB (3 + 1)")
    if R < 1 or counts["conv2d"] != 24 * R + 15 or counts["dense"] != 9 * R + 5 or counts["deconv2d"] != 4:
        raise ValueError(
            f"{what}: {counts['conv2d']} conv2d, {counts['dense']} dense and {counts['deconv2d']} deconv2d layers "
            "are not those of model_spec's likelihood model (one of their energy_distance option, or another network)"
        )
    if ckpt.shape("model/conv2d_3/V")[2] != 2 * F_:
        raise ValueError(
            f"{what}: its resnets read {ckpt.shape('model/conv2d_3/V')[2]} channels, not 2 x {F_}: a model with "
            "resnet_nonlinearity elu or relu, which pixelar's pixelcnn_pp (concat_elu) does not have"
        )
    out_units = ckpt.shape(f"model/dense_{counts['dense'] - 1}/V")[1]
    if out_units % 10:
        raise ValueError(f"{what}: {out_units} output units are not 10 per mixture component")
    M, num_classes = out_units // 10, 0
    if counts["conditional_weights"]:
        num_classes = ckpt.shape("model/conditional_weights_0/hw")[0]
        if counts["conditional_weights"] != 12 * R + 4:  # one per gated resnet: 2 streams x (3R up, 3R + 2 down)
            raise ValueError(f"{what}: {counts['conditional_weights']} conditional_weights for {12 * R + 4} resnets")
    image = image or ImageSpec(3, 32, 32, 256)
    if image.channels != 3 or image.num_values != 256:
        raise ValueError(
            f"{what} models 3-channel images of 256 values, got image {image.channels} channels, "
            f"{image.num_values} values"
        )
    model = create_model(
        "pixelcnn_pp",
        image,
        size="paper",
        nr_filters=F_,
        nr_resnet=R,
        dropout=0.5,  # train.py's --dropout_p: only matters for training on
        output={"kind": "logistic_mixture", "nr_mix": M},
        num_classes=num_classes,
    )
    suffix = EMA if ema else ""
    layers = {"conv2d": 0, "dense": 0, "deconv2d": 0, "conditional_weights": 0}

    def var(scope: str, name: str) -> torch.Tensor:
        key = f"model/{scope}/{name}"
        if ema and t.has(key):
            t.skip(key)  # the training copy, beside the EMA copy converted
        return t.take(key + suffix)  # float32: fold_weight_norm computes in float64 itself

    def next_scope(kind: str) -> str:
        scope = f"{kind}_{layers[kind]}"
        layers[kind] += 1
        return scope

    weights = {}

    def layer(ours: str, kind: str) -> None:
        scope = next_scope(kind)
        V, g, b = var(scope, "V"), var(scope, "g"), var(scope, "b")
        if kind == "conv2d":  # (kh, kw, in, out) -> (out, in, kh, kw), norm per out
            w = fold_weight_norm(g[:, None, None, None], V.permute(3, 2, 0, 1), dim=0)
        elif kind == "deconv2d":  # (kh, kw, out, in) -> ConvTranspose2d's (in, out, kh, kw), norm per out
            w = fold_weight_norm(g[None, :, None, None], V.permute(3, 2, 0, 1), dim=1)
        else:  # dense (in, out) -> a 1x1 convolution (out, in, 1, 1), norm per out
            w = fold_weight_norm(g[:, None], V.t(), dim=0)[:, :, None, None]
        weights[f"{ours}.weight"], weights[f"{ours}.bias"] = w, b

    def resnet(ours: str, skip: bool) -> None:
        layer(f"{ours}.conv1", "conv2d")
        if skip:
            layer(f"{ours}.skip", "dense")
        layer(f"{ours}.conv2", "conv2d")
        if num_classes:
            weights[f"{ours}.cond.proj.weight"] = var(next_scope("conditional_weights"), "hw")

    layer("u_init", "conv2d")
    layer("ul_init_up", "conv2d")
    layer("ul_init_left", "conv2d")
    for s in range(3):  # the up pass, in model_spec's order
        for k in range(R):
            resnet(f"up_u.{s}.{k}", skip=False)
            resnet(f"up_ul.{s}.{k}", skip=True)
        if s < 2:
            layer(f"downsample_u.{s}", "conv2d")
            layer(f"downsample_ul.{s}", "conv2d")
    for s in range(3):  # the down pass
        for k in range(R if s == 0 else R + 1):
            resnet(f"down_u.{s}.{k}", skip=True)
            resnet(f"down_ul.{s}.{k}", skip=True)
        if s < 2:
            layer(f"upsample_u.{s}", "deconv2d")
            layer(f"upsample_ul.{s}", "deconv2d")
    layer("out", "dense")
    unnamed = [k for k in ckpt if UNNAMED.fullmatch(k)]
    for k in unnamed:
        t.skip(k)
    t.finish()
    rows = output_rows(3, M)
    weights["out.weight"], weights["out.bias"] = weights["out.weight"][rows], weights["out.bias"][rows]
    load_weights(model, weights, what)
    notes = [
        f"{F_} filters, {R} resnets per stage, {M} mixture components"
        + (f", conditioned on {num_classes} classes" if num_classes else "")
        + f"; images {image.channels}x{image.height}x{image.width} of {image.num_values} values",
        f"TensorFlow {ckpt.format} checkpoint, read without TensorFlow"
        + "".join(f"; data file {f.name} sha256 {file_sha256(f)}" for f in ckpt.data_files),
        "the EMA (Polyak-averaged) weights, as their test score uses"
        if ema
        else "the file has no EMA copies: its training weights converted",
        f"{len(unnamed)} unnamed variables (adam_updates' moments and step) left out",
        "weight norm folded per output filter, as their code computes it",
        "mixture output rows permuted from their per-channel layout",
    ]
    return model, notes


def _count(ckpt: TFCheckpoint, kind: str) -> int:
    """How many layers model/KIND_0, KIND_1, ... the checkpoint holds (consecutive)."""
    n = 0
    while any(k.startswith(f"model/{kind}_{n}/") for k in ckpt):
        n += 1
    return n
