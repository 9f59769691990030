"""The papers' authors' code, run from a checkout of their public repository, to make reference outputs and
random checkpoints in their layouts (test fixtures, conversion benchmarks). Nothing of theirs is copied: the
checkout's path is given on the command line, and its modules are loaded from there.

    git clone https://github.com/pclucas14/pixel-cnn-pp /tmp/pixel-cnn-pp
    git clone https://github.com/openai/vdvae /tmp/vdvae
    git clone https://github.com/ajayjain/lmconv /tmp/lmconv
    git clone https://github.com/openai/pixel-cnn /tmp/pixel-cnn      # needs TensorFlow (2.x, run as 1.x)

openai/distribution_augmentation cannot run on a CPU (TensorFlow 1 and blocksparse's GPU kernels): for it
there is only its save format, transcribed from its train.py and utils.save_params (`distaug_variables`,
`write_distaug_npz`), which writes random files of its variable names, shapes and dtypes.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.machinery
import math
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn


def load_flat_modules(path: Path, names: list[str], fixes: dict[str, str] | None = None) -> dict[str, types.ModuleType]:
    """Modules of a checkout whose files import each other flatly (`from utils import *`), loaded in the order
    given; `fixes` replaces text in their source as it is read (Python 2 statements), never on disk."""
    modules = {}
    for name in names:
        file = Path(path) / f"{name}.py"
        source = file.read_text()
        for old, new in (fixes or {}).items():
            source = source.replace(old, new)
        module = types.ModuleType(name)
        module.__file__ = str(file)
        sys.modules[name] = module  # the next module's `from NAME import *` finds this one
        exec(compile(source, str(file), "exec"), module.__dict__)
        modules[name] = module
    return modules


def pclucas14(path: Path):
    """(model module, utils module) of pclucas14/pixel-cnn-pp, runnable on a CPU. Its utils.py has one Python 2
    statement (`print e`, in a checkpoint loader not used here), read as print(e); its loss puts a buffer on
    the GPU with .cuda(), made a no-op."""
    torch.Tensor.cuda = lambda self, *a, **k: self
    m = load_flat_modules(path, ["utils", "layers", "model"], {"print e\n": "print(e)\n"})
    return m["model"], m["utils"]


def openai_pixelcnn(path: Path):
    """(model_spec, nn module) of openai/pixel-cnn, the original TF1 PixelCNN++, runnable on TensorFlow 2 in its
    1.x mode: `import tensorflow as tf` is read as tensorflow.compat.v1, and tf.contrib's arg_scope (gone from
    TensorFlow 2) as tf_slim's, the same decorator. Needs `pip install tensorflow tf_slim`; call
    tf.compat.v1.disable_v2_behavior() before building graphs."""
    fixes = {
        "import tensorflow as tf\n": "import tensorflow.compat.v1 as tf\n",
        "from tensorflow.contrib.framework.python.ops import add_arg_scope": "from tf_slim import add_arg_scope",
        "from tensorflow.contrib.framework.python.ops import arg_scope": "from tf_slim import arg_scope",
    }
    package = types.ModuleType("pixel_cnn_pp")
    package.__path__ = [str(Path(path) / "pixel_cnn_pp")]
    sys.modules["pixel_cnn_pp"] = package
    modules = {}
    for name in ("nn", "model"):
        file = Path(path) / "pixel_cnn_pp" / f"{name}.py"
        source = file.read_text()
        for old, new in fixes.items():
            source = source.replace(old, new)
        module = types.ModuleType(f"pixel_cnn_pp.{name}")
        module.__file__ = str(file)
        sys.modules[module.__name__] = module  # model.py's `import pixel_cnn_pp.nn as nn` finds it
        setattr(package, name, module)
        exec(compile(source, str(file), "exec"), module.__dict__)
        modules[name] = module
    return modules["model"].model_spec, modules["nn"]


def perturb(model: nn.Module, gen: torch.Generator) -> None:
    """Move every weight-norm gain and bias away from its initial value (a test must not pass because the
    values the converter reads at a wrong place happen to be equal at initialisation)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("weight_g") or name.endswith("original0"):
                p.mul_(0.5 + torch.rand(p.shape, generator=gen))
            elif name.endswith("bias"):
                p.add_(0.2 * torch.randn(p.shape, generator=gen))


def pclucas14_published_layout(net: nn.Module) -> dict:
    """The state dict of the port's model `net` as the published CIFAR-10 file stores it: inside DataParallel
    ("module." keys), plain weights on the shifted convolutions (their weight norm removed: the file predates
    the port's 2019 fix), weight_g/weight_v on the nin layers and transposed convolutions."""
    for m in net.modules():
        if type(m).__name__ in ("down_shifted_conv2d", "down_right_shifted_conv2d"):
            nn.utils.remove_weight_norm(m.conv)
    return nn.DataParallel(net).state_dict()


def _placeholder(attr: str):
    """What a stubbed module gives for a name imported from it (ImageFolder, train_test_split, ...)."""
    if attr.startswith("__"):
        raise AttributeError(attr)
    return object


def stub_missing(*names: str) -> None:
    """Empty modules for what a checkout imports at its top but the code run here does not use, where missing."""
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError:
            module = types.ModuleType(name)
            module.__spec__ = importlib.machinery.ModuleSpec(name, None)  # what importlib asks a module for
            module.__getattr__ = _placeholder
            sys.modules[name] = module


@contextlib.contextmanager
def without_stubs():
    """sys.modules without stub_missing's empty modules for the block (a library that probes for an optional
    package, as transformers does for torchvision, would take a stub for the package), restored after it."""
    stubs = {k: m for k, m in sys.modules.items() if getattr(m, "__getattr__", None) is _placeholder}
    for k in stubs:
        del sys.modules[k]
    try:
        yield
    finally:
        sys.modules.update(stubs)


def vdvae(path: Path):
    """(data, hps, vae) modules of openai/vdvae, runnable on a CPU. They are imported from the checkout (they
    import each other by their flat names, and torch.jit.script reads their source files); data.py's imports
    of torchvision and sklearn, unused here, are stubbed where missing; its .cuda() calls are made no-ops."""
    sys.path.insert(0, str(Path(path).resolve()))
    stub_missing("torchvision", "torchvision.datasets", "torchvision.transforms", "sklearn", "sklearn.model_selection")
    torch.Tensor.cuda = lambda self, *a, **k: self
    return tuple(importlib.import_module(name) for name in ("data", "hps", "vae"))


def vdvae_hyperparameters(hps, shape: dict):
    """openai/vdvae's Hyperparams: its argument defaults (as train.py starts from), then `shape` over them."""
    H = hps.Hyperparams()
    H.update(vars(hps.add_vae_arguments(argparse.ArgumentParser()).parse_args([])))
    H.update(shape)
    return H


def vdvae_preprocess(data, H, nhwc) -> tuple[torch.Tensor, torch.Tensor]:
    """(encoder input, loss target) of uint8 images (N, H, W, C) by openai/vdvae's data.py for H.dataset: its
    set_up_data with the dataset's loader replaced by these images (H keeps its own image_size)."""
    size = H.image_size
    if H.dataset == "cifar10":
        data.cifar10 = lambda data_root, one_hot: ((nhwc, None),) * 3  # (images, labels) per split
    else:
        setattr(data, H.dataset, lambda data_root: (nhwc,) * 3)
    H, _, _, preprocess = data.set_up_data(H)  # sets image_size from the dataset
    H.image_size = size or H.image_size
    return preprocess([torch.as_tensor(nhwc)])


def perturb_all(model: nn.Module, gen: torch.Generator, scale: float) -> None:
    """Move every parameter by scale * N(0, 1) noise (zero-initialised biases, outputs and constants included)."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))


# ----- openai/distribution_augmentation: its .npz format (the code itself needs TF1 and GPU kernels) ------------
# its augmentation types in the order of train.py's H.self_gen_types: (start-token variable, hyperparameter,
# number of tokens)
DISTAUG_TYPES = (
    ("sos_rot", "use_rotation", 4),
    ("sos_c", "use_color", 6),
    ("sos_tr", "use_transposition", 2),
    ("sos_rev", "use_reverse", 2),
    ("sos_js", "use_jigsaw", 24),
)


def distaug_variables(h: dict, rows: int, cols: int, chans: int) -> list[tuple[str, tuple[int, ...]]]:
    """The trainable variables (name without ":0", shape) that train.py's model() creates for the hyperparameters
    h (their names: n_embd, n_layer, qk_ratio, mlp_multiple, use_rotation, ...; n_vocab 256) on images of
    rows x cols x chans: stack() (we, pos_emb_I, sos_token/...), each layer's dense or sparse attention and
    post_attention (norm g/b, linear w/b), final_norm and get_logits."""
    d, n_vocab = h["n_embd"], 256
    qk, ff = int(d * h.get("qk_ratio", 1.0)), int(d * h.get("mlp_multiple", 4.0))
    out = [("model/we", (n_vocab, d))]
    out += [(f"model/pos_emb_{i}", (n, d)) for i, n in enumerate((rows, cols, chans))]
    used = [(sos, n) for sos, key, n in DISTAUG_TYPES if h.get(key)]
    if used and not h.get("use_unconditional_augmentation"):
        out += [(f"model/sos_token/{sos}", (n, d)) for sos, n in used]
    else:
        out.append(("model/sos_token/sos", (1, 1, d)))
    for i in range(h["n_layer"]):
        p = f"model/h{i}"
        out += [(f"{p}/attn_input/g", (d,)), (f"{p}/attn_input/b", (d,))]
        for name, width in (("q_proj", qk), ("k_proj", qk), ("v_proj", d), ("post_proj", d)):
            out += [(f"{p}/{name}/w", (d, width)), (f"{p}/{name}/b", (width,))]
        out += [(f"{p}/mlp/g", (d,)), (f"{p}/mlp/b", (d,))]
        out += [(f"{p}/mlp_proj1/w", (d, ff)), (f"{p}/mlp_proj1/b", (ff,))]
        out += [(f"{p}/mlp_proj2/w", (ff, d)), (f"{p}/mlp_proj2/b", (d,))]
    out += [("model/final_norm/g", (d,)), ("model/final_norm/b", (d,)), ("model/gen_logits/logits_proj", (d, n_vocab))]
    return out


def _distaug_value(name: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Random float32 values of a plausible scale for variable `name`: gains about 1, biases about 0.3,
    embeddings about 1, weights about 1.5 / sqrt(fan in) (attention neither uniform nor one-hot)."""
    if name.endswith("/g"):
        v = 1.0 + 0.3 * rng.standard_normal(shape)
    elif name.endswith("/b"):
        v = 0.3 * rng.standard_normal(shape)
    elif name.endswith("/w") or name.endswith("logits_proj"):
        v = 1.5 / math.sqrt(shape[0]) * rng.standard_normal(shape)
    else:  # we, pos_emb_I, sos_token/...
        v = rng.standard_normal(shape)
    return v.astype(np.float32)


def write_distaug_npz(path, h: dict, rows: int, cols: int, chans: int, seed: int, ema: bool = True) -> None:
    """A random file in the layout utils.save_params writes for hyperparameters h: np.savez of every global
    variable by its TF name (":0"): each weight (float32, the f32_storage_getter), with ema its moving average
    X/Ema/ema:0 (blocksparse's Ema, float32; the raw weight then differs from it by noise), Adam's two moments
    X/Adam:0 and X/Adam_1:0 (float16 for tensors of >= 8192 entries, as fp16_mean_var stores them), the
    beta powers under adam_beta/ and the training loop's counters. Written one array at a time (as np.savez
    does it, so that a 150M-parameter file needs no copy of itself in memory)."""
    rng = np.random.default_rng(seed)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:

        def put(name: str, arr: np.ndarray) -> None:
            with zf.open(f"{name}.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asanyarray(arr), allow_pickle=False)

        for name, shape in distaug_variables(h, rows, cols, chans):
            value = _distaug_value(name, shape, rng)
            if ema:
                raw = value + (0.5 * value.std() + 0.1) * rng.standard_normal(shape).astype(np.float32)
                put(f"{name}:0", raw)
                put(f"{name}/Ema/ema:0", value)
            else:
                put(f"{name}:0", value)
            dtype = np.float16 if math.prod(shape) >= 8 * 1024 else np.float32
            put(f"{name}/Adam:0", (1e-3 * rng.standard_normal(shape)).astype(dtype))
            put(f"{name}/Adam_1:0", (1e-6 * rng.random(shape)).astype(dtype))
        for name, value in (
            ("adam_beta/beta1_power:0", np.float32(0.9**1000)),
            ("adam_beta/beta2_power:0", np.float32(0.999**1000)),
            ("global_step:0", np.int64(1000)),
            ("num_epochs:0", np.int64(3)),
            ("num_examples_processed:0", np.int64(16000)),
            ("curr_loss_scale:0", np.float32(2.0**16)),
            ("best_val_loss:0", np.float32(2.1)),
        ):
            put(name, np.asarray(value))


def lmconv(path: Path):
    """(model, layers, utils, masking) modules of ajayjain/lmconv, runnable on a CPU. Its files import each other
    flatly (`from layers import *`); masking.py's hilbert_idx uses np.int (gone since numpy 1.24), read as int,
    and its hilbertcurve import is stubbed where the package is missing (then only the hilbert order fails);
    its loss puts a buffer on the GPU with .cuda(), made a no-op."""
    torch.Tensor.cuda = lambda self, *a, **k: self
    stub_missing("hilbertcurve", "hilbertcurve.hilbertcurve")
    names = ["utils", "layers", "locally_masked_convolution", "gilbert2d", "masking", "model"]
    m = load_flat_modules(path, names, {"dtype=np.int)": "dtype=int)"})
    return m["model"], m["layers"], m["utils"], m["masking"]


def lmconv_args(path: Path, argv: list[str]) -> argparse.Namespace:
    """main.py's arguments for the command line `argv`: its argument parser, read from the checkout's main.py (the
    script does its work at import, so only the parser's lines run), then the one default main.py sets after
    parsing and before it saves `vars(args)` with a checkpoint (the image sizes it trains at)."""
    source = (Path(path) / "main.py").read_text()
    start, end = source.index("parser = argparse.ArgumentParser()"), source.index("args = parser.parse_args()")
    scope = {"argparse": argparse}
    exec(compile(source[start:end], str(Path(path) / "main.py"), "exec"), scope)
    args = scope["parser"].parse_args(argv)
    size = {"mnist": 28, "cifar": 32, "celebahq": args.celeba_size}[args.dataset]
    if not args.resize_sizes:  # main.py: "args.resize_sizes = [dataset_obs[1]]; args.resize_probs = [1.]"
        args.resize_sizes, args.resize_probs = [size], [1.0]
    return args


def lmconv_model(model, layers, args) -> nn.Module:
    """main.py's model for `args` (its `if args.ours:` construction; the baseline PixelCNN++ is not built here)."""
    norm_op = {"order_rescale": lambda c: layers.OrderRescale(), "pono": lambda c: layers.PONO()}.get(
        args.normalization
    )
    assert args.ours and not args.two_stream
    return model.OurPixelCNN(
        nr_resnet=args.nr_resnet,
        nr_filters=args.nr_filters,
        input_channels=1 if args.dataset == "mnist" else 3,
        nr_logistic_mix=args.nr_logistic_mix,
        kernel_size=(args.kernel_size, args.kernel_size),
        max_dilation=args.max_dilation,
        weight_norm=(args.normalization == "weight_norm"),
        feature_norm_op=norm_op,
        dropout_prob=args.dropout_prob,
        conv_bias=(not args.no_bias),
        conv_mask_weight=args.learn_weight_for_masks,
        rematerialize=args.rematerialize,
        binarize=args.binarize,
    )


def lmconv_orders(masking, args, rows: int, cols: int) -> list:
    """main.py's generation orders for `args` (its loop over args.order: the base order, --base_order_transpose,
    _reflect_rows, _reflect_cols, --randomize_order's 8 variants, --order_variants), each (rows*cols, 2) of
    (row, col)."""
    obs = (None, rows, cols)
    out = []
    for order in args.order:
        idx = masking.get_generation_order_idx(order, rows, cols)
        if args.base_order_transpose:
            idx = masking.transpose(idx)
        if args.base_order_reflect_rows:
            idx = masking.reflect_rows(idx, obs)
        if args.base_order_reflect_cols:
            idx = masking.reflect_cols(idx, obs)
        out.extend(masking.augment_orders(idx, obs) if args.randomize_order else [idx])
    if args.order_variants:
        out = [out[i] for i in args.order_variants]
    return [np.asarray(o) for o in out]


def lmconv_masks(masking, order, args, rows: int, cols: int) -> tuple:
    """(mask_init, mask_undilated, mask_dilated) of one order, as masking.get_masks makes them for one device
    (get_masks also moves them to the GPU and repeats them once per GPU for DataParallel)."""
    k = args.kernel_size
    init = masking.get_unfolded_masks(order, rows, cols, k=k, dilation=1, mask_type="A")
    undilated = masking.get_unfolded_masks(order, rows, cols, k=k, dilation=1, mask_type="B")
    if args.max_dilation == 1:
        return init, undilated, undilated
    return (
        init,
        undilated,
        masking.get_unfolded_masks(order, rows, cols, k=k, dilation=args.max_dilation, mask_type="B"),
    )


def lmconv_losses(utils, args):
    """main.py's (loss_op, loss_op_averaged) for `args`: summed nats of a batch under one output, and under the
    uniform mixture of several outputs (one per order: utils.average_loss)."""
    if args.dataset == "mnist":
        if args.binarize:
            return utils.binarized_loss, utils.binarized_loss_averaged
        return utils.discretized_mix_logistic_loss_1d, utils.discretized_mix_logistic_loss_1d_averaged
    return (
        lambda x, l: utils.discretized_mix_logistic_loss(x, l, n_bits=args.n_bits),
        lambda x, ls: utils.discretized_mix_logistic_loss_averaged(x, ls, n_bits=args.n_bits),
    )


def lmconv_checkpoint(args, net: nn.Module, optimizer, epoch: int, ema=None, test_bpd: float | None = None) -> dict:
    """The dictionary main.py saves after an epoch: before its June 2020 "Add EMA" commit (the code the
    published files come from) epoch, global_step, args, model_state_dict and optimizer_state_dict, with the
    epoch's test loss where it tested; since then also ema_state_dict (with --ema < 1: otherwise its
    `ema.state_dict()` raises NameError inside the try, and it saves nothing)."""
    size = "x".join(map(str, (1 if args.dataset == "mnist" else 3, args.resize_sizes[0], args.resize_sizes[0])))
    out = {} if test_bpd is None else {f"test_loss_{size}": test_bpd}
    out |= {"epoch": epoch, "global_step": 0, "args": vars(args)}
    out |= {"model_state_dict": net.state_dict(), "optimizer_state_dict": optimizer.state_dict()}
    if ema is not None:
        out["ema_state_dict"] = ema.state_dict()
    return out


def write_openai_pixelcnn(repo: Path, out: Path, nr_filters: int = 160, nr_resnet: int = 5, nr_mix: int = 10) -> None:
    """A random openai/pixel-cnn CIFAR-10 model (default: the published 160 filters, 5 resnets, 10 mixtures)
    saved as its train.py saves params_cifar.ckpt: tf.train.Saver in the V1 format, every weight, its EMA copy
    and adam_updates' unnamed variables (made here from zero gradients: the same variables, without building
    the gradient graph). Runs under TensorFlow (see openai_pixelcnn)."""
    import tensorflow.compat.v1 as tf

    tf.disable_v2_behavior()
    model_spec, pnn = openai_pixelcnn(repo)
    with tf.Graph().as_default():
        x = tf.placeholder(tf.float32, (1, 32, 32, 3))
        model = tf.make_template("model", model_spec)
        model(x, None, init=False, dropout_p=0.5, nr_resnet=nr_resnet, nr_filters=nr_filters, nr_logistic_mix=nr_mix)
        params = tf.trainable_variables()
        tf.train.ExponentialMovingAverage(decay=0.9995).apply(params)
        pnn.adam_updates(params, [tf.zeros_like(p) for p in params])
        saver = tf.train.Saver(write_version=tf.train.SaverDef.V1)
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            saver.save(sess, str(out), write_meta_graph=False)
    (Path(out).parent / "checkpoint").unlink(missing_ok=True)


if __name__ == "__main__":  # python -m benchmarks.authors_code openai-pixelcnn REPO OUT (under TensorFlow)
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["openai-pixelcnn"])
    ap.add_argument("repo", type=Path)
    ap.add_argument("out", type=Path)
    a = ap.parse_args()
    write_openai_pixelcnn(a.repo, a.out)
