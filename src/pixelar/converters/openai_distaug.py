"""`openai-distaug`: the Sparse Transformers of Distribution Augmentation (github.com/openai/distribution_augmentation,
Jun et al. 2020) -> pixelar's `sparse_transformer`, wrapped by DistAug where the file is a DistAug model.

Files: its train.py saves every global TF variable with np.savez (utils.save_params), and its README and eval.sh
publish eleven such .npz files of CIFAR-10 models. Besides the weights under model/ (float32: its
f32_storage_getter stores them so and casts them to float16 where they are used) a file holds their moving
averages `X/Ema/ema:0` (blocksparse's Ema, float32), Adam's moments `X/Adam:0` and `X/Adam_1:0` (float16 for
tensors of 8192 entries or more, fp16_mean_var), `adam_beta/beta1_power:0`, `adam_beta/beta2_power:0` and the
counters `global_step:0`, `num_epochs:0`, `num_examples_processed:0`, `curr_loss_scale:0`, `best_val_loss:0`.
Its evaluation and sampling graphs read the averages (the variable getter returns H.ema.average(var) once
mpi_train made them), so those are converted; the raw weights, the optimizer's state and the counters are
left out and counted in the notes; any other entry is refused. float16 weights are upcast to float32.
The .npz is read with numpy's allow_pickle=False, one array at a time.

Their variables (TF weights are (in, out), transposed here) -> pixelar's:

    model/we (256, d)                              -> value_emb: one table shared by the channels, repeated
    model/pos_emb_0, pos_emb_1, pos_emb_2           -> row_emb (H, d), col_emb (W, d), chan_emb (C, d)
    model/sos_token/sos (1, 1, d)                  -> start (a plain model)
    model/sos_token/sos_rot, sos_c, sos_tr, sos_rev, sos_js (choices, d)
                                                   -> the DistAug base's cond_emb columns, start zero
    model/hI/attn_input/{g,b}, model/hI/mlp/{g,b}  -> blocks.I.ln1, blocks.I.ln2
    model/hI/{q,k,v}_proj/{w,b}                    -> blocks.I.attn.qkv (rows: q, k, v)
    model/hI/post_proj, mlp_proj1, mlp_proj2       -> blocks.I.attn.proj, ff1, ff2
    model/final_norm/{g,b}                         -> ln_f (epsilon 1e-6)
    model/gen_logits/logits_proj (d, 256)          -> head.weight (head.bias zero: theirs has none)

What their model computes and the options of pixelar's sparse_transformer that give it: the positional
embeddings are added to the tokens before the shift right, so position t reads the value and the coordinates
of sub-pixel t-1 and the start token none (position_of="read"); pre-norm blocks with blocksparse's fast_gelu,
x * sigmoid(1.702 x) (activation="quick_gelu"); per layer one attention mode of attention_layers, cycled:
"a" dense, "b" the last local_attn_ctx positions ("strided.local"), "bT" every local_attn_ctx-th position
back ("strided.stride"), both including the position itself, with stride local_attn_ctx. A DistAug file sums
one start-token embedding per transformation type (cond_at="start"), applies the types in the order rotation,
colour, transposition, reverse, jigsaw, and moves the positional embeddings with the sub-pixels
(permute_embeddings, pixelar's DistAug option of the same name). Its rotation turns clockwise
(np.rot90(x, k, axes=(1, 0))), pixelar's rot90 counter-clockwise: pixelar's index k is their index (4 - k) % 4.

A file does not record the number of heads, the attention modes or local_attn_ctx: `hps` gives them, one of
hyperparams.py's sets for the published files (by default the one eval.sh uses with a published file's
name) or their hyperparameter names in a JSON file or dict. What pixelar cannot give is refused with the
reason: RandAugment conditioning (sos_aa: whether RandAugment was applied, no permutation of the sub-pixels),
the dataset indicator (sos_data), their randomly determined orders (sos_rd), jigsaw grids other than 2x2 and
the lookahead embedding.
"""

from __future__ import annotations

import math
import numbers
import re
from pathlib import Path

import torch

from ..errors import ArgumentValueError
from ..models import create_model
from ..models.distaug import create_distaug_model
from ..types import ImageSpec
from . import register_source
from .checkpoint import NpzArrays, Tensors, load_weights, named_hps

# hyperparams.py's add_arguments defaults of the hyperparameters that shape the model (resid_pdrop: only its
# dropout; dataset and rand_augment: informative, the file fixes the image)
DEFAULTS = {
    "dataset": "cifar10",
    "n_ctx": 256,
    "n_embd": 512,
    "n_head": 8,
    "n_layer": 6,
    "qk_ratio": 1.0,
    "mlp_multiple": 4.0,
    "attention_layers": "a",
    "local_attn_ctx": 64,
    "resid_pdrop": 0.1,
    "no_vocab_rounding": False,
    "rand_augment": False,
    "rand_augment_conditioning": False,
    "use_rotation": False,
    "use_color": False,
    "use_transposition": False,
    "use_reverse": False,
    "use_jigsaw": False,
    "jigsaw_grid_size": 2,
    "use_randomly_determined_order": False,
    "randomly_determined_order_use_lookahead": False,
    "use_dataset_conditioning": False,
    "use_unconditional_augmentation": False,
    "permute_embeddings": True,
}
# hyperparams.py's sets of the published files, resolved through their update() chains (keys that shape the
# model): c10_15m and c10-58m from c10-gemnet (c10-dense with 'bT,b,b,b'), the 150M ones from c10_150m_baseline
_C10_15M = {
    "dataset": "cifar10",
    "n_ctx": 3072,
    "n_embd": 256,
    "n_head": 2,
    "n_layer": 32,
    "qk_ratio": 0.5,
    "mlp_multiple": 2.0,
    "attention_layers": "bT,b,b,b",
    "local_attn_ctx": 96,
    "resid_pdrop": 0.005,
}
_C10_58M = {**_C10_15M, "n_layer": 128, "resid_pdrop": 0.25}
_C10_150M = {
    **_C10_15M,
    "n_embd": 512,
    "n_head": 16,
    "n_layer": 48,
    "qk_ratio": 1.0,
    "mlp_multiple": 4.0,
    "attention_layers": "b,bT,b,b",
}
_ROT, _TR = {"use_rotation": True}, {"use_transposition": True}
NAMED = {
    "c10_15m": _C10_15M,
    "c10_15m_rot": {**_C10_15M, **_ROT},
    "c10_15m_rot_tr": {**_C10_15M, **_ROT, **_TR},
    "c10-58m": _C10_58M,
    "c10-58m-rot": {**_C10_58M, **_ROT, "resid_pdrop": 0.01},
    "c10_150m_baseline": _C10_150M,
    "c10_150m_randaugment_dataaug": {**_C10_150M, "rand_augment": True},
    "c10_150m_randaugment_distaug": {**_C10_150M, "rand_augment": True, "rand_augment_conditioning": True},
    "c10-150m-rot": {**_C10_150M, **_ROT},
    "c10-150m-rot-tr": {**_C10_150M, **_ROT, **_TR},
    "c10-150m-rot-c-tr-js": {**_C10_150M, **_ROT, **_TR, "use_color": True, "use_jigsaw": True},
}
# the published files (README, eval.sh) -> the hps eval.sh evaluates each with
PUBLISHED = {
    "c10-15m-baseline": "c10_15m",
    "c10-15m-rot-dist-aug": "c10_15m_rot",
    "c10-15m-rot-tr-dist-aug": "c10_15m_rot_tr",
    "c10-58m-baseline": "c10-58m",
    "c10-58m-rot-dist-aug": "c10-58m-rot",
    "c10-150m-baseline": "c10_150m_baseline",
    "c10-150m-randaugment-data-aug": "c10_150m_randaugment_dataaug",
    "c10-150m-randaugment-dist-aug": "c10_150m_randaugment_distaug",
    "c10-150m-rot-dist-aug": "c10-150m-rot",
    "c10-150m-rot-tr-dist-aug": "c10-150m-rot-tr",
    "c10-150m-rot-tr-c-js-dist-aug": "c10-150m-rot-c-tr-js",
}
DOWNLOAD = "https://openaipublic.blob.core.windows.net/distribution-augmentation-assets/models/"
# their augmentation types pixelar has, in the order their train.py applies them (H.self_gen_types):
# (start-token variable, hyperparameter, pixelar type, choices)
TYPES = (
    ("sos_rot", "use_rotation", "rot90", 4),
    ("sos_c", "use_color", "colour", 6),
    ("sos_tr", "use_transposition", "transpose", 2),
    ("sos_rev", "use_reverse", "reverse", 2),
    ("sos_js", "use_jigsaw", "jigsaw", 24),
)
MODES = {"a": "dense", "b": "strided.local", "bT": "strided.stride"}
HPS_HELP = (
    "one of hyperparams.py's sets of the published files (" + ", ".join(NAMED) + "), or a .json file of "
    "openai/distribution_augmentation's hyperparameter names"
)
_VALUES = 256  # their datasets' n_vocab: 8-bit sub-pixels
# the optimizer's and the training loop's scalars save_params writes beside the weights (all left out)
COUNTERS = (
    "adam_beta/beta1_power:0",
    "adam_beta/beta2_power:0",
    "global_step:0",
    "num_epochs:0",
    "num_examples_processed:0",
    "curr_loss_scale:0",
    "best_val_loss:0",
)


def hyperparameters(hps, path: Path, what: str) -> tuple[dict, str]:
    """Their hyperparameters that shape the model, from a named set, a .json file or a dict over
    add_arguments' defaults (no hps: eval.sh's for a published file's name), checked. -> (H, how given)."""
    if hps is None:
        name = PUBLISHED.get(path.stem)
        if name is None:
            raise ArgumentValueError(
                "hps",
                "hps=NAME",
                f"{what}: its name is none of the published files', whose hps eval.sh gives, and the file does "
                "not record the heads or the attention layout: pass ",
                f" ({HPS_HELP})",
            )
        H, shown = {**DEFAULTS, **NAMED[name]}, f"hps {name} (eval.sh's for {path.name})"
    else:
        H, shown = named_hps(hps, NAMED, DEFAULTS, HPS_HELP, "openai/distribution_augmentation", what)
    for key, default in DEFAULTS.items():
        v = H[key]
        number = isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)
        if isinstance(default, bool):
            ok, expected = isinstance(v, bool), "true or false"
        elif isinstance(default, int):
            ok, expected = number and isinstance(v, numbers.Integral) and v >= 1, "an integer >= 1"
        elif key == "resid_pdrop":
            ok, expected = number and 0 <= v < 1, "a probability in [0, 1)"
        elif isinstance(default, float):
            ok, expected = number and v > 0, "a number > 0"
        else:
            ok, expected = isinstance(v, str), "a string"
        if not ok:
            raise ValueError(f"{shown}: {key} must be {expected}, got {v!r}")
    return H, shown


def _refusals(H: dict, shown: str) -> None:
    """What pixelar cannot give exactly, refused with the reason."""
    conditioned = not H["use_unconditional_augmentation"]
    if H["randomly_determined_order_use_lookahead"]:
        raise ValueError(
            f"{shown}: randomly_determined_order_use_lookahead adds a second set of positional embeddings after "
            "the shift (the coordinates of the sub-pixel predicted), which pixelar's sparse_transformer has not"
        )
    if conditioned and H["rand_augment_conditioning"]:
        raise ValueError(
            f"{shown}: rand_augment_conditioning conditions the model (sos_aa) on whether RandAugment was applied "
            "to the image, which is no permutation of its sub-pixels: pixelar's DistAug has only those, so "
            "p(x | RandAugment applied) has no pixelar form (and keeping only the identity would leave sos_aa's "
            "second row unconverted)"
        )
    if conditioned and H["use_dataset_conditioning"]:
        raise ValueError(
            f"{shown}: use_dataset_conditioning conditions the model on a dataset indicator (sos_data), which "
            "pixelar's DistAug has not"
        )
    if conditioned and H["use_randomly_determined_order"]:
        raise ValueError(
            f"{shown}: use_randomly_determined_order permutes all sub-pixels with numpy's RandomState(seed), "
            "pixelar's randperm whole pixels with torch's generator: not the same permutations"
        )
    if conditioned and H["use_jigsaw"] and H["jigsaw_grid_size"] != 2:
        raise ValueError(f"{shown}: jigsaw_grid_size {H['jigsaw_grid_size']}: pixelar's jigsaw permutes a 2x2 grid")


def _layout(H: dict, shown: str) -> tuple[list[str], int, int]:
    """attention_layers -> (pixelar's pattern per layer cycle, qk width, feed-forward width), checked as their
    code checks them."""
    modes = H["attention_layers"].split(",")
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise ValueError(
            f"{shown}: attention_layers mode {bad[0]!r} is none of 'a', 'b', 'bT' (what their sparse kernels run)"
        )
    if H["n_layer"] % len(modes):
        raise ValueError(f"{shown}: n_layer {H['n_layer']} is not a multiple of the {len(modes)} attention_layers")
    if "bT" in modes and H["n_ctx"] % H["local_attn_ctx"]:
        raise ValueError(f"{shown}: 'bT' reshapes n_ctx {H['n_ctx']} by local_attn_ctx {H['local_attn_ctx']}")
    d, heads = H["n_embd"], H["n_head"]
    qk, ff = int(d * H["qk_ratio"]), int(d * H["mlp_multiple"])
    if d % heads or qk % heads or qk < heads or ff < 1:
        raise ValueError(f"{shown}: n_embd {d} and its query width {qk} must be multiples of n_head {heads}")
    return [MODES[m] for m in modes], qk, ff


@register_source(
    "openai-distaug",
    paper="Distribution Augmentation (Jun, Child, Chen, Schulman, Ramesh, Radford, Sutskever 2020, 'Distribution "
    "Augmentation for Generative Modeling'), Sparse Transformers of the authors' code "
    "openai/distribution_augmentation",
    paper_bpd="2.56 on CIFAR-10 (the 152M DistAug model; the paper's abstract)",
    reads="its .npz files (utils.save_params: every TF variable; the EMA copies are converted)",
    download=f"{DOWNLOAD}c10-15m-baseline.npz and the ten others in eval.sh of "
    "github.com/openai/distribution_augmentation",
    options={"hps": f"{HPS_HELP} (default: eval.sh's for a published file's name)"},
)
def convert(path, hps=None):
    path = Path(path)
    what = f"checkpoint {path}"
    H, shown = hyperparameters(hps, path, what)
    _refusals(H, shown)
    patterns, qk, ff = _layout(H, shown)
    arrays = NpzArrays(path)
    if not any(k in arrays for k in ("model/we:0", "model/we/Ema/ema:0")):
        raise ValueError(
            f"{what} is not an openai/distribution_augmentation model (it has no model/we:0; its first entries: "
            f"{', '.join(list(arrays)[:3])}): give one of its .npz files"
        )
    t = Tensors(arrays, what)
    ema = any(k.endswith("/Ema/ema:0") for k in arrays)

    def key(var: str) -> str:  # the stored copy that is converted
        return f"model/{var}/Ema/ema:0" if ema else f"model/{var}:0"

    def shape(var: str) -> tuple[int, ...]:
        return arrays.shape(key(var)) if key(var) in arrays else ()

    types = [] if H["use_unconditional_augmentation"] else [ty for ty in TYPES if H[ty[1]]]
    stored = re.compile(r"model/sos_token/([^/]+)/Ema/ema:0" if ema else r"model/sos_token/([^/]+):0")
    sos_found = {m[1]: arrays.shape(m[0]) for m in map(stored.fullmatch, arrays) if m}  # start-token tables
    d = H["n_embd"]
    n_vocab = _VALUES if H["no_vocab_rounding"] else math.ceil(_VALUES / 128) * 128
    found = {
        "n_embd": shape("we")[1:2],
        "n_vocab": shape("we")[:1],
        "layers": t.count("model/h{}/"),
        "query width": shape("h0/q_proj/w")[1:],
        "feed-forward width": shape("h0/mlp_proj1/w")[1:],
        "positional embeddings": t.count("model/pos_emb_{}"),
        "start tokens": sos_found,
    }
    wanted = {
        "n_embd": (d,),
        "n_vocab": (n_vocab,),
        "layers": H["n_layer"],
        "query width": (qk,),
        "feed-forward width": (ff,),
        "positional embeddings": 3,
        "start tokens": {name: (n, d) for name, _, _, n in types} if types else {"sos": (1, 1, d)},
    }
    if found != wanted:
        text = "; ".join(f"{k} {v}" for k, v in found.items())
        raise ValueError(
            f"{what} does not fit {shown}: it has {text}; those hps give "
            f"{'; '.join(f'{k} {v}' for k, v in wanted.items())}: give the hps it was trained with"
        )
    if n_vocab != _VALUES:
        raise ValueError(f"{what}: {n_vocab} logits normalise over {n_vocab - _VALUES} tokens no sub-pixel takes")
    pos = [shape(f"pos_emb_{i}") for i in range(3)]
    if any(len(p) != 2 or p[1] != d for p in pos):
        raise ValueError(
            f"{what}: positional embeddings of shapes {pos}, not (rows, {d}), (columns, {d}), (channels, {d})"
        )
    rows, cols, chans = (p[0] for p in pos)
    if not rows * cols * chans == H["n_ctx"]:
        raise ValueError(
            f"{what}: positional embeddings of {rows} rows, {cols} columns and {chans} channels do not make n_ctx "
            f"{H['n_ctx']} positions"
        )
    image = ImageSpec(chans, rows, cols, _VALUES)

    left_out = {"raw": 0, "Adam": 0, "float16 Adam": 0}
    float16 = []

    def take(var: str) -> torch.Tensor:
        """The converted copy of `var` as float32; its raw weight and Adam moments counted as left out."""
        w = t.take(key(var))
        if not w.is_floating_point():
            raise ValueError(f"{what}: {key(var)} holds {w.dtype} values, not weights")
        if w.dtype != torch.float32:
            float16.append(key(var))
        for extra, kind in (
            (f"model/{var}:0", "raw"),
            (f"model/{var}/Adam:0", "Adam"),
            (f"model/{var}/Adam_1:0", "Adam"),
        ):
            if extra != key(var) and extra in arrays:
                t.skip(extra)
                left_out[kind] += 1
                if kind == "Adam" and arrays.dtype(extra).itemsize == 2:
                    left_out["float16 Adam"] += 1
        return w.float()

    counters = [k for k in COUNTERS if k in arrays]
    for k in counters:
        t.skip(k)

    C, K = image.channels, image.num_values
    weights = {"value_emb.weight": take("we").repeat(C, 1)}  # one table for every channel
    weights["row_emb.weight"], weights["col_emb.weight"], weights["chan_emb.weight"] = (
        take(f"pos_emb_{i}") for i in range(3)
    )
    if types:
        weights["start"] = torch.zeros(d)  # their start token is the sum of the types' embeddings alone
        blocks = []
        for sos, _, name, n in types:
            table = take(f"sos_token/{sos}")  # (n, d), row = their index
            # pixelar's rot90 index k turns counter-clockwise by k * 90 degrees, theirs clockwise
            their = [(n - k) % n for k in range(n)] if name == "rot90" else list(range(n))
            blocks.append(table[their].T)
        weights["cond_emb.weight"] = torch.cat(blocks, dim=1)  # (d, sum of choices)
    else:
        weights["start"] = take("sos_token/sos").reshape(d)

    def pair(ours: str, theirs: str, w: str, b: str, transpose: bool) -> None:
        weight = take(f"{theirs}/{w}")
        weights[f"{ours}.weight"] = weight.T if transpose else weight  # TF's (in, out) -> torch's (out, in)
        weights[f"{ours}.bias"] = take(f"{theirs}/{b}")

    for i in range(H["n_layer"]):
        ours, theirs = f"blocks.{i}", f"h{i}"
        pair(f"{ours}.ln1", f"{theirs}/attn_input", "g", "b", False)
        qkv = [(take(f"{theirs}/{p}_proj/w").T, take(f"{theirs}/{p}_proj/b")) for p in "qkv"]
        weights[f"{ours}.attn.qkv.weight"] = torch.cat([w for w, _ in qkv])  # rows q | k | v, as attn splits
        weights[f"{ours}.attn.qkv.bias"] = torch.cat([b for _, b in qkv])
        pair(f"{ours}.attn.proj", f"{theirs}/post_proj", "w", "b", True)
        pair(f"{ours}.ln2", f"{theirs}/mlp", "g", "b", False)
        pair(f"{ours}.ff1", f"{theirs}/mlp_proj1", "w", "b", True)
        pair(f"{ours}.ff2", f"{theirs}/mlp_proj2", "w", "b", True)
    weights["ln_f.weight"], weights["ln_f.bias"] = take("final_norm/g"), take("final_norm/b")
    weights["head.weight"] = take("gen_logits/logits_proj").T
    weights["head.bias"] = torch.zeros(K)
    t.finish()

    options = dict(
        n_layer=H["n_layer"],
        d_model=d,
        n_head=H["n_head"],
        qk_dim=qk,
        ff_dim=ff,
        attention=patterns,
        stride=H["local_attn_ctx"],
        dropout=float(H["resid_pdrop"]),
        activation="quick_gelu",
        position_of="read",
        final_norm_eps=1e-6,
        output={"kind": "categorical"},
    )
    if types:
        names = [name for _, _, name, _ in types]
        model = create_distaug_model(
            "sparse_transformer",
            image,
            "paper",
            names,
            permute_embeddings=H["permute_embeddings"],
            cond_at="start",
            **options,
        )
        base = model.base
    else:
        model = base = create_model("sparse_transformer", image, "paper", **options)
    load_weights(base, weights, what)

    adam = left_out["Adam"]
    notes = [
        f"{shown}: n_embd {d}, n_head {H['n_head']}, n_layer {H['n_layer']}, query width {qk}, feed-forward "
        f"width {ff}, attention_layers {H['attention_layers']} -> {patterns} with stride {H['local_attn_ctx']}; "
        f"images {C}x{image.height}x{image.width} of {K} values",
        (
            "the moving averages (X/Ema/ema:0) converted, which their evaluation and sampling use"
            if ema
            else "no moving averages in the file (disable_ema_vars): the raw weights converted"
        ),
        f"left out: {left_out['raw']} raw weights, {adam} Adam moments ({left_out['float16 Adam']} of them float16)"
        f" and {len(counters)} optimizer and step counters",
        (
            f"{len(float16)} weights stored as float16, upcast to float32"
            if float16
            else "weights stored as float32 (their model cast them to float16 where used; pixelar computes in float32)"
        ),
        "positional embeddings added before the shift (position_of='read'), fast_gelu as quick_gelu, final norm "
        "epsilon 1e-6; the value embedding repeated for each channel; logits without bias (head bias zero)",
    ]
    if types:
        notes.append(
            f"DistAug over {', '.join(n for _, _, n, _ in types)} (their {', '.join(s for s, _, _, _ in types)}): "
            "their embeddings summed into the start token (cond_at='start'), applied in that order, "
            f"permute_embeddings {H['permute_embeddings']}"
            + (
                "; pixelar's rot90 index k is their sos_rot index (4 - k) % 4 (theirs turns clockwise)"
                if H["use_rotation"]
                else ""
            )
        )
    elif H["use_unconditional_augmentation"] or H["rand_augment"]:
        notes.append("trained on augmented images without being told the augmentation: a plain model")
    return model, notes
