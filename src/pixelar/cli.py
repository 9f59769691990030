"""Command-line interface: `pixelar train | eval | sample | complete | probe | score | compress | decompress |
recipes | plot | export | convert | models | pretrained`.

The only place that turns command-line input into objects; all work happens in the library.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import io
import json
import math
import os
import re
import sys
import time
from pathlib import Path

import torch

# codec.compress(...), models.load_model(...): looked up at each call, so they can be replaced (tests do)
from . import codec, converters, distributed, models, pretrained
from .augment import Augmenter, parse_transforms
from .config import MAX_SEED, TrainConfig
from .data import export_images, load_dataset
from .errors import SHORT_LIMIT, ArgumentValueError, NamesArgument, shown
from .evaluation import EVAL_BATCH_SIZE, TOKEN_NOTE, describe, evaluate, evaluate_per_augmentation, image_log_prob
from .evaluation.probe import linear_probe
from .image_files import Grid, image_format, load_image, save_grid, save_image
from .inference import inference
from .io import DiskFullError, read_json, write_atomic, write_folder
from .models import SIZES, create_model, list_models
from .progress import LOG_INTERVAL, tracking
from .recipes import OPTIONAL_TRAINING_FIELDS, TRAINING_FIELDS, get_recipe, list_recipes, num_parameters, recipe_config
from .sampling import CHUNK_IMAGES, sample_chunks
from .sampling.complete import complete, keep_mask
from .threads import num_threads
from .training import train
from .training.checkpoint import RunDir
from .training.curves import plot_runs
from .types import ImageSpec, bits_per_dim


def _parse_value(text: str):
    """'3' -> 3, '0.5' -> 0.5, 'true' -> True, '[1,2]' -> [1, 2], anything else -> the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _key_value(text: str) -> tuple[str, str]:
    """argparse type of --set: 'KEY=VALUE' -> (KEY, VALUE)."""
    key, eq, value = text.partition("=")
    if not eq or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. dropout=0.5), got {text!r}")
    return key.strip(), value


def _overrides(pairs: list[tuple[str, str]]) -> dict:
    """--set pairs -> model options, a dotted key naming an option inside an option object
    (output.nr_mix=5 -> {"output": {"nr_mix": 5}}); the registry checks them against the model's presets."""
    out: dict = {}
    for key, value in pairs or []:
        *path, last = key.split(".")
        node = out
        for part in path:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"--set {key}: {part} was given a value of its own, so it has no option {last!r}")
        if isinstance(node.get(last), dict):
            raise ValueError(f"--set {key}: options inside {key} were set too; give one or the other")
        node[last] = _parse_value(value)
    return out


# ----- argument types: a bad count, size or index fails while parsing, and argparse names the flag ----------
def _int_type(low: int, high: int | None = None):
    """An argparse type: integers in [low, high] (no upper bound when high is None)."""
    want = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {want}, got {text!r}") from None
        if v < low or (high is not None and v > high):
            raise argparse.ArgumentTypeError(f"expected {want}, got {v}")
        return v

    return parse


def _float_type(ok, want: str):
    """An argparse type: finite numbers v with ok(v); `want` describes them for the message."""

    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {want}, got {text!r}") from None
        if not math.isfinite(v) or not ok(v):  # float() accepts 'nan' and 'inf'
            raise argparse.ArgumentTypeError(f"expected {want}, got {text}")
        return v

    return parse


positive_int = _int_type(1)
nonnegative_int = _int_type(0)
seed = _int_type(0, MAX_SEED)
positive_float = _float_type(lambda v: v > 0, "a finite number > 0")
nonnegative_float = _float_type(lambda v: v >= 0, "a finite number >= 0")
decay_factor = _float_type(lambda v: 0 < v <= 1, "a number in (0, 1]")


def _layers(text: str) -> str | list[int]:
    """argparse type of probe --layer: 'all' or layer numbers '3', '2,3,4'."""
    if text == "all":
        return text
    try:
        layers = [int(v) for v in text.split(",")]
    except ValueError:
        layers = []
    if not layers or min(layers) < 0:
        raise argparse.ArgumentTypeError(f"expected 'all' or layer numbers >= 0 (e.g. 3 or 2,3,4), got {text!r}")
    return layers


def _image_spec(text: str) -> ImageSpec:
    """argparse type of models --image: 'C,H,W' or 'C,H,W,NUM_VALUES'."""
    try:
        return ImageSpec(*[int(v) for v in text.split(",")])
    except (TypeError, ValueError) as e:
        detail = f" ({e})" if str(e).startswith("ImageSpec") else ""
        raise argparse.ArgumentTypeError(
            f"expected C,H,W[,NUM_VALUES] such as 3,32,32,256, got {text!r}{detail}"
        ) from None


def _types(text: str | None) -> list[str]:
    """'rot90,transpose' -> ["rot90", "transpose"]; None -> []."""
    return [t.strip() for t in text.split(",") if t.strip()] if text else []


# ----- options of every command that runs a long job: --threads N, --progress / --no-progress ----------------
def _add_job_options(
    p: argparse.ArgumentParser, chooses_threads: bool = False, codes: bool = False, probes: bool = False
) -> None:
    """--threads and --progress/--no-progress, the same on every command that has a progress bar (codes: the
    codec's commands, which code on one thread whatever --threads says; probes: train and eval, which measure
    the counts)."""
    default = (
        "chosen for the work: one thread for the small steps of cached sampling, torch's default for large ones"
        if chooses_threads
        else "the fastest of torch's default, half of it and 1, measured on a few steps (a resumed run: the "
        "count of its checkpoint)"
        if probes
        else "torch's default"
    )
    threads_help = (
        "accepted as on the other commands; the coding itself runs on one thread, so that a file decodes "
        "whatever the thread count"
        if codes
        else f"CPU threads (default: {default})"
    )
    p.add_argument("--threads", type=positive_int, metavar="N", help=threads_help)
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: a bar when stderr is a terminal, else a plain line every "
        f"{LOG_INTERVAL:.0f} s of a long job; --no-progress: neither)",
    )


def _progress(args) -> bool | str:
    """The library's `progress` (pixelar.progress): bars or none as --progress / --no-progress say, else bars
    when stderr is a terminal and plain occasional lines ("log") when it is a log file or a pipe, which get
    none of a bar's carriage returns but should still hear from a long job."""
    if args.progress is not None:
        return args.progress
    return True if sys.stderr.isatty() else "log"


# ----- train ------------------------------------------------------------------------------------------------
def _train_flags(args) -> dict[str, tuple[str, object]]:
    """The training settings given on the command line: {TrainConfig field: (the flag as typed, value)}."""
    given = {}
    for field, flag, value in (
        ("model", "--model", args.model),
        ("size", "--size", args.size),
        ("dataset", "--dataset", args.dataset),
        ("data_dir", "--data-dir", args.data_dir),
        ("batch_size", "--batch-size", args.batch_size),
        ("grad_accum", "--grad-accum", args.grad_accum),
        ("lr", "--lr", args.lr),
        ("lr_decay", "--lr-decay", args.lr_decay),
        ("warmup_steps", "--warmup-steps", args.warmup_steps),
        ("precision", "--precision", args.precision),
        ("seed", "--seed", args.seed),
        ("checkpoint_every", "--checkpoint-every", args.checkpoint_every),
        ("log_every", "--log-every", args.log_every),
        ("sample_n", "--sample-n", args.sample_n),
        ("minutes", "--minutes", args.minutes),
        ("train_subset", "--train-subset", args.train_subset),
        ("test_subset", "--test-subset", args.test_subset),
        ("eval_num_samples", "--eval-num-samples", args.eval_num_samples),
        ("grad_clip", "--grad-clip", args.grad_clip),
        ("skip_threshold", "--skip-threshold", args.skip_threshold),
        ("ema_decay", "--ema-decay", args.ema_decay),
    ):
        if value is not None:
            given[field] = (f"{flag} {value}", value)
    for field, flag in (
        ("class_conditional", "--class-conditional"),
        ("compile", "--compile"),
        ("channels_last", "--channels-last"),
        ("tensorboard", "--tensorboard"),
    ):
        if getattr(args, field):  # store_true: absent means "not given", not False
            given[field] = (flag, True)
    for field in ("augment", "distaug"):
        if getattr(args, field) is not None:
            given[field] = (f"--{field} {getattr(args, field)}", _types(getattr(args, field)))
    if args.set:
        given["model_overrides"] = (" ".join(f"--set {k}={v}" for k, v in args.set), _overrides(args.set))
    return given


def _check_resume_flags(args, given: dict) -> None:
    """Refuse flags that contradict the run being resumed (it keeps its own settings; only --steps may change)."""
    conflicts = []
    if args.run_dir is not None and Path(args.run_dir).resolve() != Path(args.resume).resolve():
        conflicts.append(f"--run-dir {args.run_dir} is not the run being resumed")
    if given:
        section = _train_section(args.resume)  # {} for a saved model: train() says it cannot be resumed
        for field, (typed, value) in given.items():
            have = section.get(field, value)
            if value != have:
                shown = json.dumps(have) if isinstance(have, (dict, list, bool)) or have is None else have
                conflicts.append(f"{typed} conflicts with the run's {field} {shown}")
    if conflicts:
        raise ValueError(
            f"--resume {args.resume}: " + "; ".join(conflicts) + ". A resumed run keeps its settings "
            "(only --steps can change): drop these flags, or start a new run in another directory"
        )


def cmd_train(args) -> int:
    given = _train_flags(args)
    if not args.resume and args.run_dir and distributed.restarted() and RunDir(args.run_dir).has_checkpoint():
        # torchrun --max-restarts started the job again after a process failed: continue from the checkpoint
        print(f"restarted: resuming {args.run_dir} from its last checkpoint")
        args.resume, args.run_dir = args.run_dir, None
    if args.resume:
        if pretrained.is_pretrained(args.resume):
            raise ValueError(
                f"--resume {args.resume}: that is a pretrained model shipped with pixelar, not a run directory: it "
                "has no training state and its files are read-only. Train a run of your own instead (`pixelar "
                f"pretrained {Path(args.resume).name}` shows the command that trained it)"
            )
        if args.recipe:
            raise ValueError(
                f"--recipe {args.recipe} with --resume {args.resume}: a resumed run keeps its own settings; "
                "drop --recipe"
            )
        _check_resume_flags(args, given)
        result = train(
            TrainConfig(),
            args.resume,
            resume=True,
            progress=_progress(args),
            max_steps=args.steps,
            shard=args.shard,
            threads=args.threads,
        )
    else:
        if args.minutes is not None and args.steps is not None:
            raise ValueError(
                "--minutes and --steps both given: a time budget chooses the number of steps from the speed of "
                "the first steps; give one of them"
            )
        if args.recipe:
            cfg = _recipe_config(args, given)
        else:
            cfg = TrainConfig()
            for field, (_, value) in given.items():
                setattr(cfg, field, value)
            if args.steps is not None:
                cfg.max_steps = args.steps
        cfg.validate()
        # chosen once, by rank 0, for every process of a torchrun job (their clocks may not agree on the second)
        run_dir = distributed.broadcast_object(
            args.run_dir or f"runs/{cfg.model}-{cfg.dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
        )
        print(f"run directory: {run_dir}")
        result = train(cfg, run_dir, resume=False, progress=_progress(args), shard=args.shard, threads=args.threads)
    if result.get("tokenized"):
        print(
            f"test nats per token: {result['test_nats_per_token']:.4f}  ({result['run_dir']}); palette "
            f"reconstruction RMSE {result['palette_rmse']:.2f}; {TOKEN_NOTE}"
        )
    elif result.get("bound"):
        how = (
            f"importance-weighted, K={result['num_samples']}; ELBO {result['test_bpd_elbo']:.4f}"
            if "test_bpd_iw" in result
            else "the ELBO"
        )
        print(f"test bits/dim: <= {result['test_bpd']:.4f} (upper bound: {how})  ({result['run_dir']})")
    else:
        print(f"test bits/dim: {result['test_bpd']:.4f}  ({result['run_dir']})")
    return 0


# ----- recipes ----------------------------------------------------------------------------------------------
# the flags that give a setting a recipe leaves unstated (Recipe.required)
RECIPE_FLAGS = {"batch_size": "--batch-size", "max_steps": "--steps", "lr": "--lr", "lr_decay": "--lr-decay"}


def _recipe_config(args, given: dict) -> TrainConfig:
    """The recipe's TrainConfig, with the flags given on the command line on top (they win; --set adds to or
    replaces the recipe's model options)."""
    recipe = get_recipe(args.recipe)
    settings = {field: value for field, (_, value) in given.items()}
    if args.steps is not None:
        settings["max_steps"] = args.steps
    # a time budget (--minutes) chooses the number of steps
    missing = [f for f in recipe.required() if f not in settings and not (f == "max_steps" and "minutes" in settings)]
    if missing:
        raise ValueError(
            f"--recipe {recipe.name}: the paper does not state "
            + "; ".join(f"{f} ({recipe.unstated[f]})" for f in missing)
            + ". Give them: "
            + " ".join(f"{RECIPE_FLAGS[f]} N" for f in missing)
        )
    return recipe_config(recipe.name, settings)


def recipe_command(recipe) -> str:
    """The torchrun command line that runs `recipe` on its paper's GPU count (8 where unstated); placeholders
    for the settings the paper leaves open."""
    extra = "".join(f" {RECIPE_FLAGS[f]} {f.upper()}" for f in recipe.required())
    return (
        f"torchrun --standalone --nproc_per_node={recipe.gpus or 8} -m pixelar train --recipe {recipe.name}"
        f"{extra} --run-dir runs/{recipe.name}"
    )


def _shown(v) -> str:
    return "none" if v is None else json.dumps(v) if isinstance(v, (list, dict)) else str(v)


def cmd_recipes(args) -> int:
    if args.name is None:
        rows = [("recipe", "model", "bits/dim", "batch", "steps", "compute (as stated)")]
        for name in list_recipes():
            r = get_recipe(name)
            model = r.model + (" + distaug" if r.train.get("distaug") else "")
            batch, steps = (_shown(r.train[f]) if f in r.train else "unstated" for f in ("batch_size", "max_steps"))
            rows.append((name, model, r.bits_per_dim_text, batch, steps, r.compute))
        widths = [max(len(row[i]) for row in rows) for i in range(5)]
        for row in rows:
            print("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[5])
        print("\npixelar recipes NAME: one recipe in full, with its command line; docs/recipes.md lists them all")
        return 0
    r = get_recipe(args.name)
    defaults = TrainConfig()
    print(f"{r.name}: {r.paper}")
    print(f"  CIFAR-10 test bits/dim in the paper: {r.bits_per_dim_text} ({r.bits_per_dim_note})")
    settings = {f: 1 for f in r.required()}  # placeholders: the model does not depend on them
    ours = num_parameters(recipe_config(r.name, settings))
    paper = f"{r.parameters:,} ({r.parameters_note})" if r.parameters else r.parameters_note
    print(f"  parameters: paper {paper}; this recipe's model {ours:,}")
    print(f"  compute: {r.compute}")
    cost = f"{r.gpu_hours:,} GPU-hours" if r.gpu_hours is not None else "unknown"
    print(f"  cost: {cost} ({r.gpu_hours_how})")
    print("  settings:")
    shown = ("model", "size", "model_overrides", "dataset", "distaug", "augment")
    for field in (*shown, *TRAINING_FIELDS, *OPTIONAL_TRAINING_FIELDS):
        if field in r.train:
            source = r.sources.get(field)
            print(f"    {field:<16} {_shown(r.train[field])}" + (f"  ({source})" if source else ""))
        elif field in r.unstated:
            todo = (
                f"give {RECIPE_FLAGS[field]}"
                if field in r.required()
                else f"pixelar's default {_shown(getattr(defaults, field))} applies"
            )
            print(f"    {field:<16} unstated: {r.unstated[field]}; {todo}")
    if r.deviations:
        print("  differences from the paper's setup:")
        for d in r.deviations:
            print(f"    - {d}")
    gpus = f"the paper's {r.gpus} GPUs" if r.gpus else "8 GPUs (the paper's GPU count is unstated)"
    print(f"  run on {gpus}; the batch is global, so any --nproc_per_node takes the same steps:")
    print(f"    {recipe_command(r)}")
    return 0


# ----- eval -------------------------------------------------------------------------------------------------
def _train_section(run_dir) -> dict:
    """The checked settings a run was trained with (config.json's "train"); {} for a model saved without.
    run_dir may name a pretrained model: its config.json keeps the train section of the run that made it."""
    path = pretrained.resolve(run_dir) / "config.json"
    section = read_json(path, "run config").get("train")
    if section is None:
        return {}
    try:
        return TrainConfig.from_dict(section).validate().to_dict()
    except (TypeError, ValueError) as e:
        raise ValueError(f"run config {path}: bad 'train' section ({e})") from None


def cmd_eval(args) -> int:
    model = models.load_model(args.run_dir)
    train_cfg = _train_section(args.run_dir)
    dataset = args.dataset or train_cfg.get("dataset")
    if dataset is None:
        raise ValueError(f"{args.run_dir} has no training config: pass --dataset NAME")
    ds = load_dataset(dataset, args.split, data_dir=args.data_dir or train_cfg.get("data_dir"))
    if ds.spec != model.data_image:
        raise ValueError(f"dataset {dataset!r} has images {ds.spec} but the model expects {model.data_image}")
    if args.per_augmentation is not None:
        return _eval_per_augmentation(args, model, ds, dataset, train_cfg)
    res = evaluate(
        model,
        ds,
        batch_size=args.batch_size,
        precision=args.precision,
        subset=args.subset,
        num_samples=args.num_samples,
        progress=_progress(args),
        threads=args.threads,
    )
    res.update(dataset=dataset, split=args.split, run_dir=str(args.run_dir))
    if args.json:
        if res.get("tokenized"):
            res["note"] = TOKEN_NOTE
        print(json.dumps(res))
    else:
        print(f"{dataset} {args.split}: {describe(res)}")
        if res.get("bound"):  # latent-variable models: the ELBO's parts
            print(
                f"  ELBO {res['bpd_elbo']:.4f} bits/dim = distortion {res['bpd_distortion']:.4f} + rate "
                f"{res['bpd_rate']:.4f} (KL of the latents)"
            )
        if "bpd_parts" in res:  # models with auxiliary variables: their parts, in bits/dim of the image
            print(
                "  parts: "
                + " + ".join(f"{k} {v:.4f}" for k, v in res["bpd_parts"].items())
                + f" = {res['bpd']:.4f} bits/dim"
            )
        if "num_orders" in res:
            print(
                f"  mixture over {res['num_orders']} generation orders; single order: "
                f"{res['bpd_single_order']:.4f} bits/dim"
            )
    return 0


def _eval_per_augmentation(args, model, ds, dataset: str, train_cfg: dict) -> int:
    """Bits/dim per transformation type and index (identity first); see pixelar.evaluation.augment."""
    types = _types(args.per_augmentation) or None
    if types is None and model.augmenter is None:
        types = train_cfg.get("augment") or None
        if types is None:
            raise ValueError(
                "--per-augmentation: the model was trained without transformations; name the types "
                "to score it under, e.g. --per-augmentation rot90,transpose"
            )
    augmenter = Augmenter(parse_transforms(model.data_image, types)) if types else None  # acts on the data images
    rows = evaluate_per_augmentation(
        model,
        ds,
        augmenter,
        batch_size=args.batch_size,
        precision=args.precision,
        subset=args.subset,
        progress=_progress(args),
    )
    if args.json:
        print(
            json.dumps(
                {"dataset": dataset, "split": args.split, "run_dir": str(args.run_dir), "per_augmentation": rows}
            )
        )
        return 0
    how = "conditioned on the transformation" if model.augmenter is not None else "transformed images"
    unit = "bits/dim"
    if model.tokenizer is not None:  # Image GPT's palette: bits per token of the quantised images
        unit = "bits/tok"
        print(f"bits per palette token: {TOKEN_NOTE}")
    bound = rows[0]["bound"]  # a latent-variable model: every figure is an upper bound (its ELBO or IW bound)
    note = "; upper bounds" if bound else ""
    print(f"{dataset} {args.split}: {unit} per transformation ({how}, {rows[0]['num_images']} images{note})")
    print(f"  {'type':<10} {'index':>5} {unit:>12}")
    for r in rows:
        print(f"  {r['type']:<10} {r['index']:>5} {'<= ' if bound else '':>3}{r['bpd']:>9.4f}")
    return 0


# ----- sample / complete ------------------------------------------------------------------------------------
def _cond(model, n: int, cls: int | None):
    if model.num_classes:
        if cls is None:
            return torch.arange(n) % model.num_classes
        if not 0 <= cls < model.num_classes:
            raise ValueError(f"--class must be in [0, {model.num_classes}), got {cls}")
        return torch.full((n,), cls, dtype=torch.long)
    if cls is not None:
        raise ValueError("--class given but this model is not class-conditional")
    if model.cond_dim:
        raise ValueError("this model is conditioned on a vector; sample it from Python (model.sample(n, cond=...))")
    return None


def _load_images(args, spec, deep_ok: bool = True) -> torch.Tensor:
    """The command's image files as one batch (n, C, H, W), read strictly (--convert allows the conversions
    load_image lists); each conversion made is reported on stderr. uint8 where the values fit (8-bit files
    always do for models of up to 256 values): many images in an eighth of int64's memory, widened a batch at
    a time by the work that reads them."""
    dtype = torch.uint8 if spec.num_values <= 256 else torch.long
    x = torch.empty(len(args.images), *spec.shape, dtype=dtype)
    for k, path in enumerate(args.images):
        x[k] = _load_image(args, path, spec, deep_ok)
    return x


def _load_image(args, path, spec, deep_ok: bool = True) -> torch.Tensor:
    """One image file as the model takes it (C, H, W); a conversion made is reported on stderr."""
    x, notes = load_image(path, spec, convert=args.convert, deep_ok=deep_ok)
    _notes(args, path, notes)
    return x


def _notes(args, path, notes: list[str]) -> None:
    if notes and distributed.is_main():  # stderr: stdout stays the result (score --json); once under torchrun
        print(f"pixelar {args.command}: note: {path}: {', '.join(notes)}", file=sys.stderr)


def _writable(path: Path, what: str) -> None:
    """Refuse a destination that cannot be created before any work: its nearest existing ancestor must be a
    writable directory."""
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"cannot write {what} {path}: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK):
        raise ValueError(f"cannot write {what} {path}: {parent} is not writable")


def _check_out_file(path: Path, force: bool) -> None:
    if path.is_dir():
        raise ValueError(f"--out {path} is a directory: give the file to write")
    if path.exists() and not force:
        raise ValueError(f"--out {path} exists: pass --force to overwrite it")
    _writable(path, "--out")


def _check_out_image(path: Path, force: bool) -> None:
    """As _check_out_file, and the file name must say an image format (.png)."""
    _check_out_file(path, force)
    image_format(path)


def cmd_sample(args) -> int:
    _check_out_image(Path(args.out), args.force)  # before the slow sampling
    model = models.load_model(args.run_dir)
    t = time.time()
    method = model.sampling_method(args.method)
    # the grid's 8-bit pixels, filled chunk by chunk: memory of the PNG, not of n int64 images (rank 0 writes)
    grid = Grid(args.count, model.data_image, nrow=args.nrow) if distributed.is_main() else None
    device = next(model.parameters()).device

    def place(rows: slice, x: torch.Tensor) -> None:
        if grid is not None:
            grid.paste(rows.start, model.decode(x.to(device)))  # tokens -> colours where tokenized

    # chunks of images with generators of their own: the same images on any number of processes
    sample_chunks(
        model,
        args.count,
        args.seed,
        place,
        cond=_cond(model, args.count, args.cls),
        temperature=args.temperature,
        method=method,
        progress=_progress(args),
        threads=args.threads,
        batch_size=args.batch_size,
    )
    if grid is not None:
        grid.save(args.out)
    print(f"wrote {args.count} samples to {args.out} ({time.time() - t:.1f} s, method {method})")
    return 0


def cmd_complete(args) -> int:
    _check_out_image(Path(args.out), args.force)  # before the slow sampling
    model = models.load_model(args.run_dir)
    spec = model.data_image  # the images the user gives and gets back (8-bit colours for tokenized models)
    x = _load_image(args, args.image, spec)
    mask_notes = []
    keep = keep_mask(args.keep, spec.height, spec.width, convert=args.convert, notes=mask_notes)
    _notes(args, args.keep, mask_notes)
    if bool(keep.all()):
        raise ValueError("the mask keeps every pixel: nothing to complete (white = keep, black = hidden)")
    cond = _cond(model, args.count, args.cls)
    if args.score:
        with inference(model):  # NotImplementedError where the model generates in one fixed order
            nats = -model.conditional_log_prob(model.encode(x[None]), keep, None if cond is None else cond[:1]).item()
        dims = int((~keep).sum()) * spec.channels
        print(
            f"hidden region: {dims} sub-pixels, -log p(hidden | kept) = {nats:.2f} nats = "
            f"{bits_per_dim(nats, dims):.4f} bits/dim"
        )
    method = model.sampling_method(args.method)
    out = complete(
        model,
        model.encode(x[None])[0],
        keep,
        n=args.count,
        seed=args.seed,  # the same completions on any number of processes
        batch_size=args.batch_size,
        cond=cond,
        temperature=args.temperature,
        method=method,
        progress=_progress(args),
        threads=args.threads,
    )
    out = model.decode(out)
    if model.tokenizer is not None:  # kept pixels are shown as the palette has them (lossy)
        x = model.decode(model.encode(x[None]))[0]
    shown = x * keep  # the kept part, hidden pixels black
    if distributed.is_main():
        save_grid(torch.cat([x[None], shown[None], out]), spec, args.out, nrow=args.count + 2)
    print(f"wrote original, kept pixels and {args.count} completion(s) to {args.out} (method {method})")
    return 0


# ----- score ------------------------------------------------------------------------------------------------
SCORE_BATCH = 64  # images scored at a time: a batch's memory, and a progress bar that moves


def cmd_score(args) -> int:
    model = models.load_model(args.run_dir)
    x = _load_images(args, model.data_image)
    cond = _cond(model, len(args.images), args.cls)
    bound = model.likelihood == "bound"
    # a latent-variable model's draws are seeded by each image's content: the same value in any call
    nats = _shared_nats(model, x, cond, _progress(args), num_samples=args.num_samples)
    unit = "bits/token" if model.tokenizer is not None else "bits/dim"
    bpd = bits_per_dim(nats, model.image).tolist()
    le = "<= " if bound else ""
    how = ""
    if bound:
        k = args.num_samples or 1
        how = f" (upper bound: {'importance-weighted, K=' + str(k) if k > 1 else 'the ELBO'})"
    if args.json:
        extra = {"bound": True, "num_samples": args.num_samples or 1} if bound else {}
        print(
            json.dumps(
                [{"image": str(p), "nats": n, "bpd": b, **extra} for p, n, b in zip(args.images, nats.tolist(), bpd)]
            )
        )
        return 0
    for path, n, b in zip(args.images, nats.tolist(), bpd):
        print(f"{path}: {le}{b:.4f} {unit}{how} ({n:.1f} nats)")
    if len(bpd) > 1:
        print(f"mean: {le}{sum(bpd) / len(bpd):.4f} {unit} over {len(bpd)} images")
    if model.tokenizer is not None:
        print(f"note: {TOKEN_NOTE}")
    return 0


def _shared_nats(model, x: torch.Tensor, cond, progress: bool = False, num_samples: int | None = None) -> torch.Tensor:
    """-log p of each data image x (n,) float64, as image_log_prob scores it (a bound for latent-variable models,
    with num_samples importance samples), in chunks of SCORE_BATCH images by position, each encoded to the
    model's input on its own; under torchrun each process scores its share of the chunks (so every image is
    computed in the batch one process computes it in) and every process gets all n, in order."""
    chunks = distributed.chunks(len(x), SCORE_BATCH)
    parts = [torch.zeros(0, dtype=torch.float64)]  # more processes than chunks: some score none
    count = sum(c.stop - c.start for c in chunks)
    with distributed.together("scoring"), tracking(progress, count, "scoring", "img") as bar:
        for rows in chunks:
            part = None if cond is None else cond[rows]
            batch = model.encode(x[rows].long())
            parts.append(-image_log_prob(model, batch, part, num_samples=num_samples).cpu())
            bar.advance(rows.stop - rows.start)
    return torch.cat(distributed.gather_objects(torch.cat(parts)))


# ----- compress / decompress ---------------------------------------------------------------------------------
def cmd_compress(args) -> int:
    _check_out_file(Path(args.out), args.force)  # before the slow coding
    model = models.load_model(args.run_dir)
    spec = model.data_image
    x = _load_images(args, spec, deep_ok=False)  # lossless: never reduce a deeper file
    cond = _cond(model, len(args.images), args.cls)
    t = time.perf_counter()
    # under torchrun: each process codes its share of the segments
    data = codec.compress(model, x, cond, progress=_progress(args), threads=args.threads)
    seconds = time.perf_counter() - t
    if distributed.is_main():
        write_atomic(args.out, lambda tmp: Path(tmp).write_bytes(data))  # whole or not at all
    dims = x.numel()
    nats = _shared_nats(model, x, cond).sum().item()
    source = sum(Path(p).stat().st_size for p in args.images)
    what = "bound on -log2 p(x)" if model.likelihood == "bound" else "-log2 p(x)"
    print(
        f"wrote {len(args.images)} image(s) to {args.out}: {len(data):,} bytes = {8 * len(data) / dims:.4f} "
        f"bits/dim (the model's {what}: {bits_per_dim(nats, dims):.4f}; the input files: {source:,} bytes) "
        f"in {seconds:.1f} s"
    )
    if model.coding_scheme() == "bits-back":
        print(
            "note: bits-back coding: each stream's first image also pays a one-off start-up of about 8 bits per "
            "latent dimension the posterior leaves at its prior; every later image costs about its -ELBO, so "
            "compress many images into one stream (docs/codec.md)"
        )
    if spec.num_values != 256:
        print(
            f"note: the model codes {spec.num_values} values per sub-pixel: the 8-bit files were reduced to them "
            "first, so decompress returns the reduced images, not the original files"
        )
    return 0


def _out_dir(path: str, probe: str) -> Path:
    """--out-dir checked before any work: a directory (or nothing yet) where a file like `probe` can be written."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out-dir {out} is a file: give a directory for the images")
    _writable(out / probe, "--out-dir")
    return out


@contextlib.contextmanager
def _about(path: Path):
    """A ValueError of the block names the file it is about first (an argument it names still spelled as its
    flag by _message)."""
    try:
        yield
    except ArgumentValueError as e:
        raise ArgumentValueError(e.argument, e.spelled, f"{path}: {e.before}", e.after) from None
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def cmd_decompress(args) -> int:
    out = _out_dir(args.out_dir, "image_000.png")
    path = Path(args.file)
    if not path.is_file():
        raise FileNotFoundError(f"no compressed file at {path}")
    data = path.read_bytes()
    with _about(path):
        n = codec.stream_info(data)["n"]  # checks the stream's structure before any decoding
    names = [out / f"image_{k:03d}.png" for k in range(n)]
    existing = [p for p in names if p.exists()]
    if existing and not args.force:
        raise ValueError(
            f"{existing[0]} exists ({len(existing)} of the {n} output files do): pass --force to "
            "overwrite them, or choose another --out-dir"
        )
    model = models.load_model(args.run_dir)
    # rank 0 writes the images as each segment is decoded, into a temporary folder whose files appear in --out-dir
    # together once the stream's checksum has passed (a damaged stream or an interruption leaves none)
    with write_folder(out) if distributed.is_main() else contextlib.nullcontext() as tmp:

        def write(rows: slice, images: torch.Tensor) -> None:
            if tmp is not None:
                for k, img in zip(range(rows.start, rows.stop), images):
                    save_image(img, model.data_image, tmp / names[k].name)

        # under torchrun: the processes decode the segments in rounds
        with _about(path):
            codec.decompress_segments(
                model, data, write, _cond(model, n, args.cls), progress=_progress(args), threads=args.threads
            )
    print(f"wrote {n} image(s) to {out}/image_000.png ...")
    return 0


# ----- probe ------------------------------------------------------------------------------------------------
def cmd_probe(args) -> int:
    model = models.load_model(args.run_dir)
    n = model.num_feature_layers
    if n == 0:
        raise NotImplementedError(f"model {model.name!r} has no features() for a linear probe; image_gpt has")
    layers = list(range(n)) if args.layer == "all" else args.layer
    if max(layers) >= n:
        raise ValueError(f"--layer: this model has layers 0 .. {n - 1}, got {','.join(map(str, args.layer))}")
    train_cfg = _train_section(args.run_dir)
    dataset = args.dataset or train_cfg.get("dataset")
    if dataset is None:
        raise ValueError(f"{args.run_dir} has no training config: pass --dataset NAME")
    data_dir = args.data_dir or train_cfg.get("data_dir")
    train_ds = load_dataset(dataset, "train", data_dir=data_dir)
    test_ds = load_dataset(dataset, "test", data_dir=data_dir)
    rows = linear_probe(
        model,
        train_ds,
        test_ds,
        layers,
        batch_size=args.batch_size,
        train_subset=args.train_subset,
        test_subset=args.test_subset,
        weight_decay=args.weight_decay,
        progress=_progress(args),
    )
    if args.json:
        print(json.dumps({"dataset": dataset, "run_dir": str(args.run_dir), "layers": rows}))
        return 0
    print(
        f"linear probe on {dataset}: logistic regression on features averaged over positions, trained on "
        f"{rows[0]['num_train']} training images, accuracy on {rows[0]['num_test']} test images "
        f"(layer {n - 1} = final norm)"
    )
    print(f"{'layer':>5}  {'train acc':>9}  {'test acc':>8}")
    best = max(rows, key=lambda r: r["test_accuracy"])
    for r in rows:
        mark = "  <- best" if r is best and len(rows) > 1 else ""
        print(f"{r['layer']:>5}  {100 * r['train_accuracy']:>8.2f}%  {100 * r['test_accuracy']:>7.2f}%{mark}")
    return 0


# ----- plot -------------------------------------------------------------------------------------------------
def cmd_plot(args) -> int:
    out = Path(args.out)
    _check_out_file(out, args.force)
    if out.suffix.lower() != ".png":
        raise ValueError(f"--out {out}: plot writes a PNG; name it .png")
    runs = plot_runs(args.run_dirs, out, x=args.x)
    tests = [f"{r.name} {r.test_bpd:.4f}" for r in runs if r.test_bpd is not None]
    print(f"wrote {out}: {len(runs)} run(s)" + (f"; test: {', '.join(tests)}" if tests else ""))
    return 0


# ----- export -----------------------------------------------------------------------------------------------
def cmd_export(args) -> int:
    out = _out_dir(args.out_dir, "image.png")
    ds = load_dataset(args.dataset, args.split, data_dir=args.data_dir)
    paths = export_images(ds, out, start=args.start, n=args.count, overwrite=args.force)
    shown = paths[0].name if len(paths) == 1 else f"{paths[0].name} .. {paths[-1].name}"
    labels = f"; labels in {out / 'labels.csv'}" if ds.labels is not None else ""
    print(f"wrote {len(paths)} {args.split} image(s) of {args.dataset} to {out}: {shown}{labels}")
    return 0


# ----- convert ----------------------------------------------------------------------------------------------
def cmd_convert(args) -> int:
    if args.source is None or args.checkpoint is None:  # `pixelar convert` alone: the sources
        print("checkpoint sources (pixelar convert SOURCE CHECKPOINT --out DIR):")
        for src in converters.sources():
            print(f"  {src.name}: {src.paper}; reads {src.reads}")
            print(f"    paper: {src.paper_bpd}; download: {src.download}")
            for opt, text in src.options.items():
                print(f"    --{opt.replace('_', '-')}: {text}")
        return 0
    if args.out is None:
        raise ValueError("--out DIR is required: the model directory to write")
    out = Path(args.out)
    _writable(out / "config.json", "--out")
    model = converters.convert_to_dir(
        args.source, args.checkpoint, out, overwrite=args.force, image=args.image, hps=args.hps
    )
    card = read_json(out / converters.CARD_NAME, "model card")
    print(f"wrote {out}: {model.name}, {card['num_parameters']:,} parameters, images {_spec_text(model.image)}")
    for note in card["conversion"]:
        print(f"  {note}")
    print(f"use it wherever a run directory goes: pixelar eval {out} --dataset NAME")
    return 0


def _spec_text(spec: ImageSpec) -> str:
    return f"{spec.channels},{spec.height},{spec.width},{spec.num_values}"


# ----- models -----------------------------------------------------------------------------------------------
def cmd_models(args) -> int:
    spec = args.image
    print(f"parameter counts for images {spec.channels}x{spec.height}x{spec.width}, {spec.num_values} values")
    print(f"{'model':<18}" + "".join(f"{s:>14}" for s in SIZES))
    for name in list_models():
        counts = []
        for size in SIZES:
            with torch.device("meta"):  # count without allocating the paper-size weights
                counts.append(create_model(name, spec, size).num_parameters())
        print(f"{name:<18}" + "".join(f"{c:>14,}" for c in counts))
    return 0


# ----- pretrained -------------------------------------------------------------------------------------------
CARD_FIELDS = (  # card.json key -> how `pixelar pretrained NAME` labels it, in this order
    ("model", "model"),
    ("size", "size"),
    ("dataset", "dataset"),
    ("num_parameters", "parameters"),
    ("test_bpd", "test bits/dim (whole test split)"),
    ("num_test_images", "test images"),
    ("test_bpd_first_500", "test bits/dim (first 500 test images)"),
    ("steps", "training steps"),
    ("train_time_s", "training time (s)"),
    ("machine", "machine"),
    ("command", "trained with"),
    ("sha256", "sha256 of model.safetensors"),
    ("good_for", "good for"),
)


def _card_value(key: str, v) -> str:
    if key == "num_parameters" or key == "num_test_images":
        return f"{v:,}"
    if key.startswith("test_bpd"):
        return f"{v:.4f}"
    if key == "machine":
        return f"{v['cpu']}, {v['threads']} threads"
    if key == "train_time_s":
        return f"{v:.0f} ({v / 60:.1f} min)"
    return str(v)


def cmd_pretrained(args) -> int:
    names = pretrained.names()
    if args.name is not None:
        card = pretrained.card(args.name)
        if args.json:
            print(json.dumps(card, indent=2))
            return 0
        print(f"{args.name}  ({pretrained.directory(args.name)})")
        for key, label in CARD_FIELDS:
            if key in card:
                print(f"  {label + ':':<40} {_card_value(key, card[key])}")
        print(f"\nuse it wherever a run directory goes: pixelar sample {args.name} --count 16 --out samples.png")
        return 0
    if args.json:
        print(json.dumps([pretrained.card(n) for n in names], indent=2))
        return 0
    if not names:
        print("no pretrained models are installed")
        return 0
    rows = [("name", "model", "dataset", "test bits/dim", "parameters", "good for")]
    for n in names:
        c = pretrained.card(n)
        bpd = ("<= " if c.get("bound") else "") + f"{c['test_bpd']:.4f}"
        model = f"{c['model']} ({c['size']})"
        rows.append((n, model, c["dataset"], bpd, f"{c['num_parameters']:,}", c["good_for"]))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[5])
    print("\npixelar pretrained NAME: its model card; any command that takes a run directory takes the name")
    return 0


# torchrun's parser reads its options from the whole command line, ours included, abbreviations allowed, and
# refuses an ambiguous prefix of them: --n (--nnodes, --nproc-per-node, ...) and --start (--start-method). Each
# such option has a spelling torchrun lets through (--count, --offset); tests/test_cli.py checks every option.
COUNT_HELP = " (--n also works, but not under torchrun, which takes --n for a prefix of its own options)"
RUN_DIR_HELP = "a run directory (or saved model), or a pretrained model's name (see `pixelar pretrained`)"
CONVERT_HELP = (
    "convert images the model cannot take exactly (colour <-> grey, transparency, other colour spaces, "
    "16-bit samples to their high byte) instead of refusing them; each conversion is reported"
)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="pixelar", description="Autoregressive image models with exact bits/dim.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser(
        "train", help="train a model (default: small PixelCNN++ on Fashion-MNIST, about 3 min on 2 CPU cores)"
    )
    t.add_argument("--model", help="registered model name (see `pixelar models`)")
    t.add_argument("--size", choices=["tiny", "small", "paper"])
    t.add_argument(
        "--dataset",
        help="fashion_mnist, mnist, *_binary, *_dynamic, cifar10, imagenet32, imagenet64 (the npz release), "
        "imagenet32_oord, imagenet64_oord (van den Oord et al.'s, of the classic bits/dim tables), celeba[R], "
        "celeba_hq[R], npz:PATH, folder:PATH (folder+convert:PATH converts what the strict image reader refuses)",
    )
    t.add_argument(
        "--data-dir", help="where dataset files are (else $PIXELAR_DATA, the user cache, /usr/share/datasets)"
    )
    t.add_argument("--steps", type=positive_int, help="number of training steps")
    t.add_argument(
        "--minutes",
        type=positive_float,
        help="train for this wall-clock budget instead of --steps: the number of steps is chosen from the speed "
        "of the first steps and written to config.json (evaluation and samples come after the budget)",
    )
    t.add_argument("--batch-size", type=positive_int, help="images per step, all processes together (the global batch)")
    t.add_argument(
        "--grad-accum",
        type=positive_int,
        metavar="K",
        help="split each step's batch into K micro-batches per process (the same step in less memory)",
    )
    t.add_argument("--lr", type=positive_float)
    t.add_argument("--lr-decay", type=decay_factor, help="per-step learning-rate decay factor")
    t.add_argument("--warmup-steps", type=nonnegative_int, help="linear learning-rate warm-up steps")
    t.add_argument("--precision", choices=["fp32", "bf16"])
    t.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the model (fuses elementwise work; compiling takes minutes on a CPU, so it "
        "pays off for long runs; falls back to eager mode where unavailable)",
    )
    t.add_argument("--channels-last", action="store_true", help="channels_last memory layout")
    t.add_argument(
        "--shard",
        action="store_true",
        help="under torchrun: shard the model, gradients, Adam state and EMA over the processes (FSDP) for "
        "models that do not fit one device; a run may be resumed with or without it",
    )
    t.add_argument("--seed", type=seed)
    t.add_argument("--checkpoint-every", type=positive_int)
    t.add_argument("--log-every", type=positive_int, help="steps per line of metrics.jsonl (default 10)")
    t.add_argument("--sample-n", type=nonnegative_int, help="samples drawn into samples.png at the end")
    t.add_argument("--train-subset", type=positive_int, help="use only the first N training images (quick experiments)")
    t.add_argument(
        "--test-subset", type=positive_int, help="evaluate on the first N test images only (quick experiments)"
    )
    t.add_argument("--class-conditional", action="store_true", help="condition the model on the dataset's labels")
    t.add_argument("--grad-clip", type=positive_float, help="clip the gradient norm (of the bits/dim loss) to this")
    t.add_argument(
        "--skip-threshold",
        type=positive_float,
        help="skip steps whose gradient norm (before clipping) is at least this (VDVAE's guard); not a divergence",
    )
    t.add_argument("--ema-decay", type=_float_type(lambda v: 0 <= v < 1, "a number in [0, 1)"), help="EMA decay")
    t.add_argument(
        "--eval-num-samples",
        type=positive_int,
        metavar="K",
        help="latent-variable models with a stochastic posterior (vdvae): importance samples per test image in the "
        "final evaluation (default: ELBO)",
    )
    t.add_argument(
        "--augment",
        metavar="TYPES",
        help="plain data augmentation baseline (unconditioned): comma-separated transformation types from "
        "rot90, transpose, colour, jigsaw, reverse, randperm; each image draws one index per type",
    )
    t.add_argument(
        "--distaug",
        metavar="TYPES",
        help="Distribution Augmentation: as --augment, but the model is conditioned on the indices and "
        "test bits/dim use the identity (Jun et al. 2020)",
    )
    t.add_argument(
        "--set",
        action="append",
        type=_key_value,
        metavar="KEY=VALUE",
        help="model option, e.g. --set dropout=0.5 --set output.nr_mix=10",
    )
    t.add_argument(
        "--recipe",
        metavar="NAME",
        help="a paper's CIFAR-10 setup (see `pixelar recipes`); flags given with it override its settings",
    )
    t.add_argument("--run-dir", help="output directory (default runs/MODEL-DATASET-TIME)")
    t.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue an interrupted run exactly where it stopped, with its own settings (only --steps "
        "may change; other flags must agree with the run's)",
    )
    t.add_argument(
        "--tensorboard",
        action="store_true",
        help="also write the metrics as TensorBoard events to RUN_DIR/tensorboard (pip install 'pixelar[tensorboard]')",
    )
    _add_job_options(t, probes=True)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="exact test bits/dim of a trained run")
    e.add_argument("run_dir", help=RUN_DIR_HELP)
    e.add_argument("--split", default="test", choices=["test", "val", "train"])
    e.add_argument("--dataset", help="default: the dataset the run was trained on")
    e.add_argument("--data-dir")
    e.add_argument("--batch-size", type=positive_int, default=EVAL_BATCH_SIZE)
    e.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.add_argument("--subset", type=positive_int, help="score only the first N images of the split (quick checks)")
    e.add_argument(
        "--num-samples",
        type=positive_int,
        metavar="K",
        help="latent-variable models (vdvae): also the K-sample importance-weighted bound (tighter than the ELBO)",
    )
    e.add_argument(
        "--per-augmentation",
        nargs="?",
        const="",
        metavar="TYPES",
        help="bits/dim for each transformation type and index, identity first (DistAug models: their "
        "own types; other models: the run's --augment types or the TYPES given)",
    )
    _add_job_options(e, probes=True)
    e.set_defaults(func=cmd_eval)

    for name, helptext in (
        ("sample", "draw samples into a PNG grid"),
        ("complete", "keep part of an image, sample the rest"),
    ):
        s = sub.add_parser(name, help=helptext)
        s.add_argument("run_dir", help=RUN_DIR_HELP)
        if name == "complete":
            s.add_argument("--image", required=True, help="PNG/JPEG of the model's size")
            s.add_argument("--keep", required=True, help="top-half, left-half, or a mask image (white = keep)")
            s.add_argument(
                "--count", "--n", type=positive_int, metavar="N", default=4, help="number of completions" + COUNT_HELP
            )
            s.add_argument(
                "--score",
                action="store_true",
                help="also print the hidden region's conditional bits/dim given the kept pixels (lmconv)",
            )
            s.add_argument("--convert", action="store_true", help=CONVERT_HELP)
        else:
            s.add_argument(
                "--count", "--n", type=positive_int, metavar="N", default=64, help="number of samples" + COUNT_HELP
            )
            s.add_argument("--nrow", type=positive_int, default=8, help="images per row of the grid")
        s.add_argument("--out", required=True, help="the PNG file to write")
        s.add_argument("--force", action="store_true", help="overwrite --out if it exists")
        s.add_argument(
            "--temperature",
            type=nonnegative_float,
            default=1.0,
            help="1 samples the model, lower sharpens, 0 takes the most likely value of every step",
        )
        s.add_argument("--seed", type=seed, default=0)
        s.add_argument(
            "--batch-size",
            type=positive_int,
            default=CHUNK_IMAGES,
            help=f"images drawn together (default {CHUNK_IMAGES}); with --seed it fixes the images, on any number "
            "of processes",
        )
        s.add_argument("--class", dest="cls", type=nonnegative_int, help="class label for class-conditional models")
        s.add_argument(
            "--method",
            default="auto",
            choices=["auto", "cached", "naive"],
            help="auto (default: cached where the model has it, else naive), cached (fast) or naive (reference)",
        )
        _add_job_options(s, chooses_threads=True)
        s.set_defaults(func=cmd_sample if name == "sample" else cmd_complete)

    pr = sub.add_parser("probe", help="linear probe: class accuracy of logistic regression on a layer's features")
    pr.add_argument("run_dir", help=RUN_DIR_HELP)
    pr.add_argument(
        "--layer",
        required=True,
        type=_layers,
        help="layer number (0 .. n_layer; middle layers work best), several as 2,3,4, or 'all' for a table",
    )
    pr.add_argument("--dataset", help="default: the dataset the run was trained on (must have labels)")
    pr.add_argument("--data-dir")
    pr.add_argument("--train-subset", type=positive_int, help="fit on the first N training images only")
    pr.add_argument("--test-subset", type=positive_int, help="score on the first N test images only")
    pr.add_argument(
        "--weight-decay", type=nonnegative_float, default=1e-3, help="L2 penalty of the logistic regression"
    )
    pr.add_argument("--batch-size", type=positive_int, default=EVAL_BATCH_SIZE)
    pr.add_argument("--json", action="store_true", help="print one JSON object")
    _add_job_options(pr)
    pr.set_defaults(func=cmd_probe)

    sc = sub.add_parser("score", help="exact bits/dim of each given image under a trained model")
    sc.add_argument("run_dir", help=RUN_DIR_HELP)
    sc.add_argument("images", nargs="+", help="PNG/JPEG files of the model's size")
    sc.add_argument("--class", dest="cls", type=nonnegative_int, help="class label for class-conditional models")
    sc.add_argument("--json", action="store_true", help="print one JSON list")
    sc.add_argument("--convert", action="store_true", help=CONVERT_HELP)
    sc.add_argument(
        "--num-samples",
        type=positive_int,
        metavar="K",
        help="latent-variable models with a stochastic posterior (vdvae): the K-sample importance-weighted bound "
        "(default: the ELBO)",
    )
    _add_job_options(sc)
    sc.set_defaults(func=cmd_score)
    z = sub.add_parser("compress", help="compress images losslessly with a trained model's probabilities")
    z.add_argument("run_dir", help=RUN_DIR_HELP)
    z.add_argument("images", nargs="+", help="PNG/JPEG files of the model's size")
    z.add_argument("--out", required=True, help="the compressed file")
    z.add_argument("--class", dest="cls", type=nonnegative_int, help="class label for class-conditional models")
    z.add_argument(
        "--convert",
        action="store_true",
        help="convert images the model cannot code exactly (colour <-> grey, transparency, other colour "
        "spaces; never more than 8 bits): decompress then returns the converted images",
    )
    z.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    _add_job_options(z, codes=True)
    z.set_defaults(func=cmd_compress)
    u = sub.add_parser("decompress", help="restore images compressed with the same model")
    u.add_argument("run_dir", help=RUN_DIR_HELP)
    u.add_argument("file")
    u.add_argument("--out-dir", required=True, help="where image_000.png, image_001.png, ... go")
    u.add_argument("--class", dest="cls", type=nonnegative_int, help="the class label given to compress")
    u.add_argument("--force", action="store_true", help="overwrite image files that exist in --out-dir")
    _add_job_options(u, codes=True)
    u.set_defaults(func=cmd_decompress)

    rc = sub.add_parser("recipes", help="list the papers' CIFAR-10 training recipes, or show one in full")
    rc.add_argument("name", nargs="?", help="a recipe to show with its settings, cost and torchrun command line")
    rc.set_defaults(func=cmd_recipes)

    pl = sub.add_parser("plot", help="train and test bits/dim of runs against steps or time, as a PNG")
    pl.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="training run directories (one line each)")
    pl.add_argument("--out", default="curves.png", help="the PNG file to write (default curves.png)")
    pl.add_argument("--x", default="step", choices=["step", "time"], help="step (default) or training time")
    pl.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    pl.set_defaults(func=cmd_plot)

    x = sub.add_parser("export", help="write a dataset's images as PNG files (to try score, complete, compress)")
    x.add_argument(
        "dataset",
        help="fashion_mnist, mnist, *_binary, *_dynamic, cifar10, imagenet32[_oord], imagenet64[_oord], celeba[R], "
        "celeba_hq[R], npz:PATH, folder:PATH, folder+convert:PATH",
    )
    x.add_argument("--split", default="test", choices=["test", "train", "val"], help="default test")
    x.add_argument(
        "--count", "--n", type=positive_int, metavar="N", default=8, help="number of images (default 8)" + COUNT_HELP
    )
    x.add_argument(
        "--offset",
        "--start",
        dest="start",
        type=nonnegative_int,
        default=0,
        metavar="I",
        help="index of the first image in the split (--start also works, but not under torchrun, whose "
        "--start-method takes it)",
    )
    x.add_argument("--out-dir", required=True, help="where DATASET-SPLIT-INDEX.png and labels.csv go")
    x.add_argument("--data-dir", help="where dataset files are (as for train)")
    x.add_argument("--force", action="store_true", help="overwrite image files that exist in --out-dir")
    x.set_defaults(func=cmd_export)

    cv = sub.add_parser(
        "convert", help="a published checkpoint of a paper's authors as a pixelar model directory (no SOURCE: list)"
    )
    cv.add_argument("source", nargs="?", help="the checkpoint's format, e.g. pclucas14-pixelcnn_pp (none: list them)")
    cv.add_argument("checkpoint", nargs="?", help="the published file (or model directory, for hf-imagegpt)")
    cv.add_argument("--out", help="the model directory to write (config.json, model.safetensors, card.json)")
    cv.add_argument(
        "--image",
        type=_image_spec,
        help="C,H,W,NUM_VALUES where the checkpoint does not fix the image size (default: its dataset's)",
    )
    cv.add_argument(
        "--hps",
        help="the hyperparameters the checkpoint was trained with. openai-vdvae: cifar10, imagenet32 or imagenet64 "
        "(openai/vdvae's hps.py sets) or FILE.json of its hyperparameter names (width, zdim, enc_blocks, ...); "
        "openai-distaug: a hyperparams.py set (c10_15m, c10-150m-rot-tr, ...; default: the one eval.sh gives a "
        "published file's name) or FILE.json of its names (n_head, attention_layers, ...)",
    )
    cv.add_argument("--force", action="store_true", help="replace --out if it exists")
    cv.set_defaults(func=cmd_convert)

    m = sub.add_parser("models", help="list every model and size with its parameter count")
    m.add_argument("--image", type=_image_spec, default="3,32,32,256", help="C,H,W,NUM_VALUES (default 3,32,32,256)")
    m.set_defaults(func=cmd_models)

    pt = sub.add_parser("pretrained", help="list the pretrained models shipped with pixelar, or show one's card")
    pt.add_argument("name", nargs="?", help="a pretrained model whose model card to show")
    pt.add_argument("--json", action="store_true", help="print the card (or all cards, as a list) as JSON")
    pt.set_defaults(func=cmd_pretrained)
    return p


# the library arguments that its errors name (pixelar.errors.NamesArgument), as the command line spells them
FLAGS = {
    "convert": "--convert",
    "keep": "--keep",
    "data_dir": "--data-dir DIR",
    "resume": "--resume RUN_DIR",
    "tensorboard": "--tensorboard",
    "overwrite": "--force",
    "shard": "--shard",
    "compile": "--compile",
    "threads": "--threads N",
    "num_samples": "--num-samples",
    "hps": "--hps NAME",
    "cond": "--class K",
}


def _message(e: BaseException) -> str:
    """str(e), a library argument it names spelled as its flag ("pass convert=True" -> "pass --convert")."""
    if isinstance(e, NamesArgument) and e.argument in FLAGS:
        return e.naming(FLAGS[e.argument])
    return str(e)


def _short(message: str, given=()) -> str:
    """message with each user-given string longer than SHORT_LIMIT characters cut as errors.shown cuts it: the
    strings of the command line `given` (spaces and all), then any other run of that many non-space characters
    (a path made from one, as pathlib normalised it)."""
    for text in sorted({t for t in given if len(t) > SHORT_LIMIT}, key=len, reverse=True):
        message = message.replace(text, shown(text, quote=False))
    return re.sub(rf"\S{{{SHORT_LIMIT + 1},}}", lambda m: shown(m.group(), quote=False), message)


class _Parser(argparse.ArgumentParser):
    """argparse, its errors (an invalid choice, an unrecognized argument) echoing long strings cut (_short)."""

    given: tuple[str, ...] = ()

    def parse_known_args(self, args=None, namespace=None):
        self.given = tuple(sys.argv[1:] if args is None else args)  # a subcommand's parser: its own arguments
        return super().parse_known_args(args, namespace)

    def error(self, message: str):
        super().error(_short(message, self.given))


# the exit status of a command whose stdout was closed before it finished printing (`pixelar score ... | head
# -1`): 128 + SIGPIPE, what the shell reports for a program that a closed pipe ends
BROKEN_PIPE = 141


def main(argv: list[str] | None = None) -> int:
    given = sys.argv[1:] if argv is None else list(argv)
    try:
        try:
            args = build_parser().parse_args(given)
            if distributed.launched():  # torchrun: join the other processes; rank 0 alone prints results
                distributed.init()
                return _as_one_of_several(args, given)
            return _run(args, given)
        finally:
            sys.stdout.flush()  # a closed pipe is found here, not as a traceback when Python exits
    except BrokenPipeError:
        # the reader has gone (head, less quit early): end quietly, as a program that SIGPIPE ends does, with
        # stdout pointed at /dev/null so that Python's own flush at exit finds no closed pipe either
        _stdout_to_devnull()
        return BROKEN_PIPE


def _stdout_to_devnull() -> None:
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a file (a test's capture): nothing is flushed at exit
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


# the commands whose work torchrun's processes share (the others run on rank 0 alone)
SHARED_COMMANDS = ("train", "eval", "sample", "complete", "score", "compress", "decompress")


def _as_one_of_several(args, given: list[str]) -> int:
    """Run the command as one process of a torchrun job: the others' output is silenced (their errors still
    show, marked with their rank), and the group is left at the end."""
    rank, code = distributed.rank(), 1
    try:
        if rank == 0:
            code = _run(args, given)
        elif args.command not in SHARED_COMMANDS:  # the others run on rank 0 alone
            code = 0
        else:
            with contextlib.redirect_stdout(io.StringIO()):
                code = _run(args, given, prefix=f"[rank {rank}] ")
        return code
    finally:
        distributed.finish(wait=code == 0)


def _run(args, given=(), prefix: str = "") -> int:
    """Run the command; an error becomes one line on stderr (a long string of `given`, the command line, cut)
    and an exit code: 2 for bad input, 1 for a failure, 130 for Ctrl-C."""
    try:
        with num_threads(getattr(args, "threads", None)):  # --threads N for the whole command, restored after
            return args.func(args)
    except (ValueError, FileNotFoundError, NotImplementedError) as e:
        print(f"{prefix}pixelar {args.command}: error: {_short(_message(e), given)}", file=sys.stderr)
        return 2
    except (RuntimeError, DiskFullError) as e:  # TrainingDiverged, RunDirBusy, a full disk: the message says
        # what happened and what was kept
        hint = f" (pixelar train --resume {e.run_dir})" if isinstance(e, DiskFullError) and e.run_dir else ""
        print(f"{prefix}pixelar {args.command}: error: {_short(f'{e}{hint}', given)}", file=sys.stderr)
        return 1
    except OSError as e:
        if e.errno != errno.ENAMETOOLONG:
            raise
        # a path given that no file system takes (a name over its limit, typically 255 bytes): bad input
        what = _short(shown(e.filename or "", quote=False), given)
        print(f"{prefix}pixelar {args.command}: error: file name too long for the file system: {what}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # train's TrainingInterrupted says what was kept, and the run to resume if any
        run_dir = getattr(e, "run_dir", None)
        hint = f" (continue with: pixelar train --resume {run_dir})" if run_dir is not None else ""
        print(f"{prefix}pixelar {args.command}: {_short((str(e) or 'interrupted') + hint, given)}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
