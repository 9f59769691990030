"""`ajayjain-lmconv`: LMConv's own checkpoints (github.com/ajayjain/lmconv, Jain, Abbeel, Pathak 2020) -> pixelar's
`lmconv`.

Files: its main.py saves after every epoch (and its average_checkpoints.py averages such files into the same
layout) a dictionary of epoch, global_step, args (`vars(args)` of its argparse arguments: a dict of strings,
numbers, booleans and lists, so the whole file reads with weights_only and no Namespace is involved),
model_state_dict (the network's, taken from inside DataParallel: no prefix), optimizer_state_dict, the
epoch's test loss (test_loss_CxHxW) where it tested, and, since its June 2020 EMA commit, ema_state_dict. Its
--mode test, which gives the README's figures, loads model_state_dict, which is what is converted;
ema_state_dict is left alone: main.py never evaluates it, and its EMA.update returns inside its loop after
averaging the first tensor, so the others keep their initial values.

Its layers (model.py OurPixelCNN) -> pixelar's:

    u_init                                              -> init
    up_layers.S.u_stream.K.{conv_input, conv_out}       -> up.S.K.{conv1, conv2}
    down_layers.S.u_stream.K.{conv_input, nin_skip.lin_a, conv_out}
                                                        -> down.S.K.{conv1, skip, conv2}
    downsize_u_stream.I, upsize_u_stream.I              -> dilated_up.I, dilated_down.I (dilated, no stride)
    nin_out.lin_a                                       -> out (colour: rows permuted, checkpoint.output_rows)

Each convolution's weight is plain or weight-normed (folded, per output filter), its bias absent with
--no_bias (pixelar's is then zero) and its mask weight (out, k, k) present with --learn_weight_for_masks
(pixelar's mask_weight option, (out, k*k)). The nin layers are weight-normed Linears, 1x1 convolutions here.

The args fix what main.py builds from them: the image (dataset, celeba_size, n_bits, binarize), filters,
resnets, mixtures, kernel size, dilation, dropout, normalization (pono: pixelar's normalization="pono";
weight_norm and none: plain convolutions) and the generation orders (`orders` below). What pixelar cannot
match exactly is refused with the reason: order_rescale normalization, the baseline PixelCNN++ (no --ours),
several base orders, s_curve_center_quarter_last, and order lists that are not the first K dihedral variants
of one base order.
"""

from __future__ import annotations

import numbers

import torch

from ..models import create_model
from ..nn.orders import dihedral_orders, order_coords
from ..types import ImageSpec
from . import register_source
from .checkpoint import WEIGHT_FORMS, Tensors, load_weights, output_rows, read_torch_state, strip_prefix

# main.py's defaults of the arguments that shape the model (a file from before an argument existed lacks it,
# and main.py then behaved as with the default)
DEFAULTS = {
    "dataset": "cifar",
    "binarize": False,
    "celeba_size": 256,
    "n_bits": 8,
    "ours": False,
    "two_stream": False,
    "nr_resnet": 5,
    "nr_filters": 160,
    "nr_logistic_mix": 10,
    "kernel_size": 5,
    "max_dilation": 2,
    "dropout_prob": 0.5,
    "normalization": "weight_norm",
    "order": None,
    "randomize_order": False,
    "order_variants": None,
    "train_masks": None,
    "no_bias": False,
    "learn_weight_for_masks": False,
    "base_order_transpose": False,
    "base_order_reflect_rows": False,
    "base_order_reflect_cols": False,
    "resize_sizes": None,
}
DIRECTIONS = (WEIGHT_FORMS["weight_norm"][1], WEIGHT_FORMS["parametrized"][1])  # weight norm's v, its two spellings
# its order names -> pixelar's base orders (nn/orders.py; the same curves: see `orders`)
ORDERS = {"raster_scan": "raster", "s_curve": "s_curve", "hilbert": "hilbert", "gilbert2d": "gilbert"}


def _args(ckpt: dict, what: str) -> dict:
    """The checkpoint's args over main.py's defaults, each of the type main.py's parser gives it."""
    given = ckpt.get("args")
    if not isinstance(given, dict):
        raise ValueError(
            f"{what} has no args dictionary (main.py saves vars(args) with every checkpoint): it is not a file "
            "of ajayjain/lmconv's main.py, whose args fix the model"
        )
    A = {**DEFAULTS, **{k: v for k, v in given.items() if k in DEFAULTS}}
    if isinstance(A["order"], str):  # before February 2020 --order took one name
        A["order"] = [A["order"]]
    kinds = {bool: "true or false", int: "an integer", str: "a string"}
    for key, default in DEFAULTS.items():
        v, kind = A[key], type(default)
        if default is None or key == "dropout_prob":
            continue
        ok = isinstance(v, bool) if kind is bool else isinstance(v, kind) and not isinstance(v, bool)
        if not ok:
            raise ValueError(f"{what}: args[{key!r}] must be {kinds[kind]}, got {v!r}")
    for key in ("order", "order_variants", "train_masks", "resize_sizes"):
        v = A[key]
        item = str if key == "order" else numbers.Integral
        if v is not None and not (isinstance(v, list) and all(isinstance(e, item) for e in v)):
            raise ValueError(f"{what}: args[{key!r}] must be a list of {item.__name__.lower()}s, got {v!r}")
    if not isinstance(A["dropout_prob"], numbers.Real) or not 0 <= A["dropout_prob"] < 1:
        raise ValueError(f"{what}: args['dropout_prob'] must be in [0, 1), got {A['dropout_prob']!r}")
    return A


def image_of(A: dict, what: str) -> ImageSpec:
    """The images main.py trains on for these args: MNIST 1x28x28, CIFAR-10 3x32x32, CelebA-HQ 3 x celeba_size^2;
    2 values with --binarize (MNIST only), else 2^n_bits (8 bits but for CelebA-HQ)."""
    dataset, bits = A["dataset"], A["n_bits"]
    if dataset not in ("mnist", "cifar", "celebahq"):
        raise ValueError(f"{what}: dataset {dataset!r} is none of main.py's (mnist, cifar, celebahq)")
    C, S = {"mnist": (1, 28), "cifar": (3, 32)}.get(dataset, (3, A["celeba_size"]))
    if A["binarize"] and dataset != "mnist":
        raise ValueError(
            f"{what}: args['binarize'] with dataset {dataset}: main.py binarizes only MNIST and scores the others with "
            "the mixture loss, which a 2-logit output cannot feed"
        )
    if not 1 <= bits <= 8 or (dataset != "celebahq" and bits != 8):
        raise ValueError(f"{what}: n_bits {bits}: main.py takes 8 bits for {dataset} (1 to 8 for celebahq only)")
    if S < 1:
        raise ValueError(f"{what}: celeba_size {S} is no image size")
    return ImageSpec(C, S, S, 2 if A["binarize"] else 2**bits)


def _their_orders(A: dict, H: int, W: int) -> list[torch.Tensor]:
    """main.py's generation orders for args A as flat indices r*W + c: the base order, --base_order_transpose,
    _reflect_rows, _reflect_cols, then --randomize_order's 8 (masking.augment_orders: identity, rows, columns,
    both reflected, then the same four of the transposed order), then --order_variants and --train_masks."""
    base = A["order"][0]
    # masking.py's curves are pixelar's, except that its gilbert2d_idx(rows, cols) walks the rows as its x axis:
    # pixelar's gilbert curve with rows and columns swapped, which pixelar builds as its variant 4 (any size)
    rc = order_coords(ORDERS[base], H, W, 4 if base == "gilbert2d" else 0)
    if A["base_order_transpose"]:
        rc = rc.flip(1)
    if A["base_order_reflect_rows"]:
        rc = torch.stack([H - 1 - rc[:, 0], rc[:, 1]], 1)
    if A["base_order_reflect_cols"]:
        rc = torch.stack([rc[:, 0], W - 1 - rc[:, 1]], 1)

    def dihedral(rc):
        rows, cols = torch.stack([H - 1 - rc[:, 0], rc[:, 1]], 1), torch.stack([rc[:, 0], W - 1 - rc[:, 1]], 1)
        return [rc, rows, cols, torch.stack([H - 1 - rc[:, 0], W - 1 - rc[:, 1]], 1)]

    out = [*dihedral(rc), *dihedral(rc.flip(1))] if A["randomize_order"] else [rc]
    for key in ("order_variants", "train_masks"):  # train_masks indexes the list after order_variants
        if A[key]:
            bad = [i for i in A[key] if not 0 <= i < len(out)]
            if bad or len(set(A[key])) != len(A[key]):
                raise ValueError(
                    f"--{key} {A[key]} must name orders 0..{len(out) - 1} once each (a repeated one would weigh "
                    "twice in the mixture)"
                )
            out = [out[i] for i in A[key]]
    return [o[:, 0] * W + o[:, 1] for o in out]


def orders(A: dict, image: ImageSpec, what: str) -> tuple[str, int, list[int]]:
    """(pixelar base order, num_orders, lmconv's order i as pixelar's variant index) for args A, or ValueError
    with what pixelar cannot match: pixelar's lmconv uses the first num_orders dihedral variants of one base
    order (nn/orders.py), so the run's orders must be those, in any order (the mixture over a set of orders
    does not depend on how they are numbered)."""
    given = A["order"]
    if not given:
        raise ValueError(f"{what}: args['order'] is empty: main.py needs an order for its model (args['ours'])")
    if len(given) > 1:
        raise ValueError(
            f"{what}: the run trains on the orders of {len(given)} base orders ({', '.join(given)}); pixelar's "
            "lmconv generates in the variants of one"
        )
    if given[0] not in ORDERS:
        extra = " (s_curve with the centre quarter moved last)" if given[0] == "s_curve_center_quarter_last" else ""
        raise ValueError(
            f"{what}: order {given[0]!r}{extra} has no pixelar base order; pixelar's lmconv converts "
            f"{', '.join(ORDERS)}"
        )
    H, W = image.height, image.width
    name = ORDERS[given[0]]
    ours = dihedral_orders(name, H, W)  # (8, H*W)
    theirs = _their_orders(A, H, W)
    index = [next((k for k in range(len(ours)) if torch.equal(o, ours[k])), None) for o in theirs]
    K = len(index)
    if None in index or sorted(index) != list(range(K)):
        shown = ", ".join("?" if k is None else str(k) for k in index)
        ours_k = "variant 0" if K == 1 else f"variants 0..{K - 1}"
        raise ValueError(
            f"{what}: the run trains on {K} order{'s' if K > 1 else ''}, pixelar's {name!r} variants [{shown}] "
            f"(nn/orders.py); pixelar's lmconv with {K} generates in {ours_k}, so it cannot match "
            f"{'them' if K > 1 else 'it'} (its args base_order_* without randomize_order, order_variants or "
            "train_masks choose other variants)"
        )
    return name, K, index


@register_source(
    "ajayjain-lmconv",
    paper="LMConv (Jain, Abbeel, Pathak 2020, 'Locally Masked Convolution for Autoregressive Models'), the authors' "
    "code ajayjain/lmconv",
    paper_bpd="2.887 bits/dim on CIFAR-10 with 8 S-curve orders (2.909 with one), 77.56 nats on dynamically "
    "binarized MNIST with 8 (the README; the paper rounds to 2.89 and gives 77.58)",
    reads="the .pth dictionary its main.py saves (model_state_dict and args: they fix the model and its orders)",
    download="https://drive.google.com/drive/folders/1ESeIKS3itwaFO_XigF4g-SAXFofwfEjF (linked from the README of "
    "github.com/ajayjain/lmconv): cifar_s8.pth, binary_mnist_ep159_s8.pth, grayscale_mnist_ep299_hilbert8.pth, "
    "celeba_ep749_s8.pth",
    options={},
)
def convert(path):
    what = f"checkpoint {path}"
    ckpt = read_torch_state(path)
    if "model_state_dict" not in ckpt or not isinstance(ckpt["model_state_dict"], dict):
        raise ValueError(
            f"{what} is not a checkpoint of ajayjain/lmconv's main.py (it has no model_state_dict; its keys: "
            f"{', '.join(map(str, list(ckpt)[:4]))})"
        )
    A = _args(ckpt, what)
    # keep the network's tensors only: the optimizer's state (twice the weights) is freed before the model is built
    state, has_ema = ckpt["model_state_dict"], "ema_state_dict" in ckpt
    del ckpt
    if not A["ours"] or A["two_stream"]:
        raise ValueError(
            f"{what} holds main.py's baseline PixelCNN++ (args ours is false), not its LMConv model; "
            "pixelar converts that network's state dict with the pclucas14-pixelcnn_pp source"
        )
    if A["normalization"] not in ("none", "weight_norm", "pono"):
        raise ValueError(
            f"{what}: normalization {A['normalization']!r}: "
            + (
                "order_rescale divides each normalised layer's output by its mask's count of open taps at every "
                "pixel, which pixelar's lmconv does not do (it has none and pono)"
                if A["normalization"] == "order_rescale"
                else "not one of main.py's (none, weight_norm, order_rescale, pono)"
            )
        )
    image = image_of(A, what)
    name, K, index = orders(A, image, what)
    state, stripped = strip_prefix(state, "module.")
    t = Tensors(state, what)
    # the first layer's (out, in, k, k) weight in whichever form it is stored (the direction v has its shape)
    u_init = next((state[f"u_init.{n}"] for n in (*WEIGHT_FORMS["plain"], *DIRECTIONS) if t.has(f"u_init.{n}")), None)
    if u_init is None:
        raise ValueError(
            f"{what}: model_state_dict is not an LMConv OurPixelCNN's (it has no u_init weight; its first keys: "
            f"{', '.join(map(str, list(state)[:3]))})"
        )
    C, M = image.channels, A["nr_logistic_mix"]
    rows = state["nin_out.lin_a.bias"].shape[0] if t.has("nin_out.lin_a.bias") else 0
    found = {
        "filters": u_init.shape[0],
        "kernel size": u_init.shape[-1],
        "input channels": u_init.shape[1] - 1,
        "resnets per stage": t.count("up_layers.0.u_stream.{}."),
        "output rows": rows,
    }
    R = A["nr_resnet"]
    wanted = {"filters": A["nr_filters"], "kernel size": A["kernel_size"], "input channels": C}
    wanted |= {"resnets per stage": R, "output rows": 2 if A["binarize"] else (3 if C == 1 else 10) * M}
    if found != wanted:
        raise ValueError(
            f"{what}: model_state_dict does not fit its args: it has "
            f"{', '.join(f'{k} {v}' for k, v in found.items())}; the args give "
            f"{', '.join(f'{k} {v}' for k, v in wanted.items())}"
        )
    k, d = A["kernel_size"], A["max_dilation"]
    if k % 2 != 1 or d < 1:
        raise ValueError(
            f"{what}: kernel_size {k} and max_dilation {d}: main.py's masks need an odd kernel, dilation >= 1"
        )
    model = create_model(
        "lmconv",
        image,
        size="paper",
        nr_filters=A["nr_filters"],
        nr_resnet=R,
        kernel_size=k,
        dilation=d,
        dropout=float(A["dropout_prob"]),
        order=name,
        num_orders=K,
        output={"kind": "categorical"} if A["binarize"] else {"kind": "logistic_mixture", "nr_mix": M},
        normalization="pono" if A["normalization"] == "pono" else "none",
        mask_weight=A["learn_weight_for_masks"],
    )

    weights: dict[str, torch.Tensor] = {}
    forms: dict[str, int] = {}

    def conv(ours: str, theirs: str) -> None:
        w, form = t.weight(theirs)
        forms[form] = forms.get(form, 0) + 1
        weights[f"{ours}.weight"] = w
        weights[f"{ours}.bias"] = torch.zeros(w.shape[0]) if A["no_bias"] else t.take(f"{theirs}.bias")
        if A["learn_weight_for_masks"]:
            weights[f"{ours}.mask_weight"] = t.take(f"{theirs}.mask_weight").flatten(1)  # (out, k, k) -> (out, k*k)

    def nin(ours: str, theirs: str) -> None:
        w, _ = t.weight(theirs)  # weight-normed Linear (out, in): a 1x1 convolution
        weights[f"{ours}.weight"], weights[f"{ours}.bias"] = w[:, :, None, None], t.take(f"{theirs}.bias")

    conv("init", "u_init")
    for s in range(3):
        for j in range(R):
            conv(f"up.{s}.{j}.conv1", f"up_layers.{s}.u_stream.{j}.conv_input")
            conv(f"up.{s}.{j}.conv2", f"up_layers.{s}.u_stream.{j}.conv_out")
        for j in range(len(model.down[s])):
            conv(f"down.{s}.{j}.conv1", f"down_layers.{s}.u_stream.{j}.conv_input")
            nin(f"down.{s}.{j}.skip", f"down_layers.{s}.u_stream.{j}.nin_skip.lin_a")
            conv(f"down.{s}.{j}.conv2", f"down_layers.{s}.u_stream.{j}.conv_out")
    for i in range(2):
        conv(f"dilated_up.{i}", f"downsize_u_stream.{i}")
        conv(f"dilated_down.{i}", f"upsize_u_stream.{i}")
    nin("out", "nin_out.lin_a")
    t.finish()
    if C == 3:
        perm = output_rows(3, M)
        weights["out.weight"], weights["out.bias"] = weights["out.weight"][perm], weights["out.bias"][perm]
    load_weights(model, weights, what)

    numbering = (
        f"lmconv's orders 0..{K - 1} are pixelar's variants {index} (the same set: the mixture is the same; its "
        f"first order, its single-order evaluation, is set_order({index[0]}))"
        if index != list(range(K))
        else f"lmconv's orders 0..{K - 1} are pixelar's variants 0..{K - 1}"
    )
    sizes = A["resize_sizes"]
    notes = [
        f"args: {A['nr_filters']} filters, {R} resnets per stage, kernel {k}, dilation {d}, dropout "
        f"{A['dropout_prob']:g}, "
        + ("2 logits (binarized)" if A["binarize"] else f"{M} mixture components")
        + f"; images {C}x{image.height}x{image.width} of {image.num_values} values ({A['dataset']})",
        f"orders: {A['order'][0]} -> pixelar's {name!r}, {K} order{'s' if K > 1 else ''}; {numbering}",
        f"normalization {A['normalization']}"
        + (" -> pixelar's normalization 'pono' (no parameters)" if A["normalization"] == "pono" else "")
        + "; "
        + ", ".join(f"{n} convolutions {f.replace('_', ' ')}" for f, n in sorted(forms.items()))
        + (" (weight norm folded per output filter)" if "weight_norm" in forms else ""),
        "model_state_dict converted" + ("; ema_state_dict left alone (main.py never evaluates it)" if has_ema else ""),
        *(["no convolution biases (args['no_bias']): pixelar's are zero"] if A["no_bias"] else []),
        *(["mask weights (args['learn_weight_for_masks']) -> mask_weight"] if A["learn_weight_for_masks"] else []),
        *(["DataParallel's 'module.' prefix stripped"] if stripped else []),
        *(["mixture output rows permuted from the TF PixelCNN++ layout"] if C == 3 else []),
        *(
            [f"trained at sizes {sizes} (args['resize_sizes']): converted at {image.height}x{image.width}"]
            if sizes and sizes != [image.height]
            else []
        ),
        *(
            ["its figures score MNIST binarized anew at every pass (binarize_torch): pixelar's dataset mnist_dynamic"]
            if A["binarize"]
            else []
        ),
        *(
            [
                f"its Dropout2d({A['dropout_prob']:g}) drops whole feature maps, pixelar's dropout single features: "
                "the same in eval mode, not in further training"
            ]
            if A["dropout_prob"] > 0
            else []
        ),
    ]
    return model, notes
