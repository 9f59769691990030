"""train(): the training loop of pixelar, with exact resume, divergence handling and the final evaluation.

One step = one batch: the model's objective (log_prob for the exact models, the ELBO for latent-variable
ones) under optional bf16 autocast (fp32 master weights), loss = its mean negative in bits/dim, backward,
gradient clipping, Adam with the scheduled learning rate, EMA update. A step whose loss or gradient norm is not
finite is skipped (no optimizer or EMA update; it still counts as a step, so the schedule and the data move on);
max_bad_steps skipped steps in a row raise TrainingDiverged. With skip_threshold, a step whose gradient norm
reaches it is skipped the same way, without counting towards divergence.

Exact resume: everything random or stateful is in the checkpoint (raw and EMA weights, Adam state, torch
CPU/CUDA RNG for dropout, the data generator, the augmentation-index generator, epoch and batch position,
the bad-step counter), and the learning rate depends only on the step. An interrupted run resumed therefore
ends with bitwise the same weights as an uninterrupted one (on CPU; CUDA kernels may not be deterministic).
The loop knows no model family: it uses create_model / create_distaug_model / model_from_config, objective,
likelihood, config, sample and state dicts only.

Code layout: train() holds the run directory's lock and calls _setup (everything before the first step, into
a _Run), then per step _step (the step above), _choose_steps (while a time budget measures the speed: see
budget.py), _report (progress bar, metrics line) and _checkpoint, and finally _finish (EMA weights, test
evaluation, samples). The data stream, the seeds and the restoring of a checkpoint are in resume.py, the
metrics window and log in metrics.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .. import distributed, image_files, pretrained  # image_files.save_grid: looked up at each call (tests replace it)
from ..augment import Augmenter, parse_transforms
from ..config import TrainConfig
from ..data import ImageDataset, first_images, load_dataset
from ..errors import ArgumentValueError
from ..evaluation import TOKEN_NOTE, describe, evaluate
from ..io import DISK_FULL_ERRNOS, DiskFullError, disk_full
from ..models import compiled_objective, create_model
from ..models.distaug import create_distaug_model
from ..models.persistence import model_from_config
from ..sampling import sample_seeded
from ..threads import (
    STEP_WORK_THRESHOLD,
    candidate_counts,
    check_threads,
    describe_probe,
    num_threads,
    probe,
    step_work,
)
from . import sharding
from .budget import StepBudget
from .checkpoint import CURVES_NAME, METRICS_NAME, SAMPLES_NAME, TENSORBOARD_DIR, Checkpoint, RunDir
from .curves import plot_runs
from .ema import EMA
from .metrics import MetricsLog, Window, tensorboard_writer
from .optim import learning_rate, make_optimizer, set_lr
from .resume import Batches, augment_seed, rank_seed, restore, rng_states

# the clock of the training time (elapsed_s, the time budget); a module attribute so that tests can replace it
clock = time.perf_counter


class TrainingDiverged(RuntimeError):
    """max_bad_steps consecutive steps had a non-finite loss or gradient; the last good checkpoint is kept."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (a KeyboardInterrupt) stopped train(); the message says what was kept. run_dir is the run to
    resume, or None where no checkpoint was written yet (nothing to resume: the run starts again)."""

    def __init__(self, message: str, run_dir: Path | None = None):
        super().__init__(message)
        self.run_dir = run_dir


def train(
    cfg: TrainConfig,
    run_dir,
    resume: bool = False,
    progress: bool | str = True,
    log=print,
    on_step=None,
    max_steps: int | None = None,
    shard: bool = False,
    threads: int | None = None,
) -> dict:
    """Train a model as `cfg` says, checkpointing into `run_dir`; returns {"test_bpd", "steps", "run_dir",
    "threads"}.

    Args:
        cfg: the settings. Ignored when resume is True: the run's own settings are read from
            run_dir/config.json (its "train" section), so a resumed run cannot drift from the original.
        run_dir: the run directory (see pixelar.training.checkpoint for its files). A new run refuses a
            directory that already holds a checkpoint.
        resume: continue the run in run_dir exactly where its last checkpoint left it.
        progress: True: a tqdm bar with live train bits/dim and images/s, then bars of the test evaluation and
            the samples (rank 0 only); False: no bars, a log line every log_every steps instead of the bar;
            "log": as False, and plain lines of the evaluation's and samples' progress (pixelar.progress), so
            a log file hears from a long final evaluation too.
        log: called with one string per message (start, skipped steps, checkpoints, the final result).
        on_step: called as on_step(step) after every step (after that step's checkpoint, if any).
        max_steps: when given, replaces the number of steps: of cfg for a new run, of the saved run when
            resuming (any value >= the checkpoint's step; a larger one extends the run, and because nothing
            depends on max_steps the result is bitwise that of a run started with the larger value). The new
            value is written to config.json. Not with cfg.minutes for a new run (the budget chooses it).
        shard: under torchrun, shard the model, its gradients, Adam state and EMA over the processes (FSDP2,
            see pixelar.training.sharding) instead of keeping a copy in each; how the run is computed, not
            part of its settings: a run may be resumed with or without it.
        threads: CPU threads for the steps (and the final evaluation). None: a resumed run takes its
            checkpoint's count; a new run on a CPU in one process measures a few forward and backward passes
            at each candidate count (pixelar.threads.probe: torch's count, half of it, 1) and takes the fastest,
            or 1 for steps too small to gain from threads. The count is logged and checkpointed. The weights
            depend on it in their last bits: a run is bitwise reproducible, and a resume bitwise equal to an
            uninterrupted run, at the same count.

    While it runs it holds run_dir's lock (see RunDir.lock), and first deletes the temporary files that
    killed runs left there.

    Under torchrun (`torchrun --nproc_per_node=N -m pixelar train ...`, or this function in every process)
    the processes share each step: cfg.batch_size is the global batch, each process takes its contiguous
    share of it, gradients are averaged (DistributedDataParallel), and rank 0 alone writes the run's files
    and reports. See docs/training.md for what is equal across numbers of processes and what is not.

    Raises:
        TrainingDiverged: max_bad_steps consecutive non-finite steps (nothing is written after the last good
            checkpoint).
        RunDirBusy: another process is training in run_dir (nothing is read or written).
        DiskFullError: a write failed for lack of space or quota; the last checkpoint is kept.
        ValueError: run_dir holds a checkpoint and resume is False, or is a pretrained model's bare name; bad
            settings or data; a corrupt or damaged run file.
        FileNotFoundError: a missing run file (the message names it).
        TrainingInterrupted: Ctrl-C (a KeyboardInterrupt); its run_dir is the run to resume, None before the
            first checkpoint.
    """
    distributed.init()  # under torchrun: join its processes (nothing happens in one process)
    if not resume:
        pretrained.refuse_name(run_dir)  # before RunDir(): "./NAME" is a path, "NAME" a pretrained model's name
    rundir = RunDir(run_dir)
    main = distributed.is_main()  # rank 0 writes the run's files and reports; the others compute
    if not main:
        progress, log = False, _quiet
    bars = progress is True  # else log lines take the bar's place ("log": and the later jobs' progress lines)
    emit = tqdm.write if bars and log is print else log  # keep the bar intact while it is shown
    try:
        with contextlib.ExitStack() as held:
            with distributed.together("locking the run directory"):
                if main:
                    held.enter_context(rundir.lock())
                    removed = rundir.remove_temp_files()
                    if removed:
                        emit(f"removed {removed} temporary file(s) left in {rundir.path} by an interrupted run")
            with _disk_full_hint(rundir):
                with distributed.together("setting up the run"):
                    run = _setup(cfg, rundir, resume, max_steps, emit, shard)
                held.callback(run.metrics.close)
                held.enter_context(num_threads(_choose_threads(run, threads)))
                with tqdm(
                    total=None if run.budget is not None else run.cfg.max_steps,
                    initial=run.step,
                    disable=not bars,
                    unit="step",
                    dynamic_ncols=True,
                ) as bar:
                    while run.budget is not None or run.step < run.cfg.max_steps:
                        lr = _step(run)
                        if run.budget is not None:
                            _choose_steps(run, bar)
                        _report(run, lr, bar, bars)
                        _checkpoint(run, bars)
                        if on_step is not None:
                            on_step(run.step)
                run.train_s = run.elapsed()
                return _finish(run, log, progress)
    except KeyboardInterrupt:  # Ctrl-C; the lock is released by now
        raise _interrupted(rundir) from None


def _interrupted(rundir: RunDir) -> TrainingInterrupted:
    """What a Ctrl-C left: the run to resume, or (before the first checkpoint) nothing to resume."""
    if rundir.has_checkpoint():
        return TrainingInterrupted(f"interrupted: {_kept(rundir)}", rundir.path)
    return TrainingInterrupted(
        f"interrupted before the first checkpoint: none was saved in {rundir.path}, so there is nothing to "
        "resume; start the run again"
    )


def _quiet(message: str) -> None:
    """The log of the processes other than rank 0."""


# DDP's switch for not broadcasting buffers at every forward: its name changed in torch 2.13
_NO_BUFFER_SYNC = (
    {"forward_sync_buffers": False}
    if "forward_sync_buffers" in inspect.signature(torch.nn.parallel.DistributedDataParallel).parameters
    else {"broadcast_buffers": False}
)


class _Objective(torch.nn.Module):
    """model.objective as the forward of a module, so that DistributedDataParallel sees each call it must
    synchronise (the model's own forward gives parameters, not the likelihood)."""

    def __init__(self, model: torch.nn.Module, objective: Callable):
        super().__init__()
        self.model, self.objective = model, objective

    def forward(self, x, cond=None, **kw):
        return self.objective(x, cond, **kw)


@contextlib.contextmanager
def _disk_full_hint(rundir: RunDir):
    """Turn a write that failed for lack of space or quota into a DiskFullError saying what was kept and how
    to go on."""
    try:
        yield
    except OSError as e:
        if e.errno not in DISK_FULL_ERRNOS:
            raise
        err = e if isinstance(e, DiskFullError) else disk_full(e.filename or rundir.path, e)
        full = DiskFullError(e.errno, f"{err}; {_kept(rundir)}: free space, then resume the run", err.filename)
        full.run_dir = rundir.path
        raise full from None


def _kept(rundir: RunDir) -> str:
    last = rundir.checkpoint_step  # None before this session saved or loaded one (maybe while loading it)
    if last is not None:
        return f"the last good checkpoint in {rundir.path} (step {last}) is kept"
    if rundir.has_checkpoint():
        return f"the last checkpoint in {rundir.path} is kept"
    return f"no checkpoint had been written to {rundir.path} yet"


@dataclasses.dataclass
class _Run:
    """One training session, as _setup builds it: what the steps use, and the state they move on (step, bad,
    window; the rest of the state lives in the model, optimizer, EMA and generators)."""

    cfg: TrainConfig  # the run's own settings when resuming
    dir: RunDir
    emit: Callable[[str], None]
    device: torch.device
    model: torch.nn.Module  # an ImageModel
    optimizer: torch.optim.Optimizer
    ema: EMA
    augmenter: Augmenter | None
    aug_gen: torch.Generator | None  # the augmentation indices' generator (checkpointed as rng.augment)
    batches: Batches
    test_ds: ImageDataset
    metrics: MetricsLog
    window: Window
    objective: Callable  # model.objective, or its compiled version; under torchrun through DistributedDataParallel
    ddp: torch.nn.parallel.DistributedDataParallel | None  # None in one process
    share: slice  # this process's images of each global batch
    loss_scale: float  # 1 / grad_accum: the micro-batches' mean losses add up to the share's mean
    autocast: contextlib.AbstractContextManager
    dims_ln2: float  # sub-pixels (tokens for tokenized models) per image * ln 2: nats per image -> bits/dim
    max_norm: float  # gradient clipping (inf: norm measured, gradients unchanged)
    step: int  # steps done
    bad: int  # non-finite steps in a row
    elapsed_before: float  # training seconds of the sessions before this one (resumed runs)
    budget: StepBudget | None  # a time budget still measuring the speed of the steps (None: max_steps is fixed)
    session_start: float = dataclasses.field(default_factory=lambda: clock())
    train_s: float | None = None  # the training time at the end of the last step
    sharded: torch.nn.Module | None = None  # with shard=True: the FSDP root (an _Objective over the model)
    threads: int | None = None  # the CPU thread count of the steps (None: torch's, left alone: GPU, torchrun)
    saved_threads: int | None = None  # the count the checkpoint's run used (None: not recorded, or a new run)

    def elapsed(self) -> float:
        return self.elapsed_before + clock() - self.session_start


def _setup(cfg: TrainConfig, rundir: RunDir, resume: bool, max_steps: int | None, emit, shard: bool = False) -> _Run:
    """Everything before the first step (train() holding the lock): the settings, data, model, optimizer, EMA,
    augmentation, the checkpoint's state when resuming, the metrics log; emits the start line."""
    cfg, ckpt, model_config = _settings(cfg, rundir, resume, max_steps)
    world, main = distributed.world_size(), distributed.is_main()
    parts = world * cfg.grad_accum
    if cfg.batch_size % parts:
        raise ValueError(
            f"batch_size={cfg.batch_size} cannot be shared by {world} process(es) x grad_accum={cfg.grad_accum} "
            f"micro-batch(es) of equal size: choose a multiple of {parts}"
        )
    if cfg.device != "auto":
        device = torch.device(cfg.device)
    else:
        device = (
            distributed.device()
            if distributed.active()
            else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        )
    train_ds, test_ds = _datasets(cfg)
    torch.manual_seed(cfg.seed)  # weight init (a resumed run overwrites weights and RNG states below)
    model = _model(cfg, rundir, model_config, train_ds, test_ds, emit)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    root = sharding.setup(model, device, cfg, _Objective(model, model.objective)) if shard else None
    optimizer = make_optimizer(model.parameters(), cfg.lr, cfg.betas, cfg.eps)  # the shards, where sharded
    ema = EMA(model, cfg.ema_decay)
    # augmentation: indices drawn per image from their own generator (checkpointed as rng.augment);
    # plain augmentation transforms the batch, DistAug passes the indices to the model, which transforms
    augmenter = (
        Augmenter(parse_transforms(train_ds.spec, cfg.augment))
        if cfg.augment
        else model.augmenter
        if cfg.distaug
        else None
    )
    aug_gen = torch.Generator().manual_seed(augment_seed(cfg.seed)) if augmenter is not None else None

    if ckpt is None:
        batches = Batches(train_ds, cfg.batch_size, cfg.seed)
        step, bad, elapsed_before = 0, 0, 0.0
        if main:
            rundir.write_config(model.config(), cfg.to_dict())
        if distributed.rank():  # the other processes' dropout and order draws: streams of their own
            torch.manual_seed(rank_seed(cfg.seed, distributed.rank(), 0))
    else:
        batches = restore(rundir, ckpt, model, optimizer, ema, train_ds, cfg, aug_gen, root)
        step, bad, elapsed_before = ckpt.progress["step"], ckpt.progress["bad_steps"], ckpt.progress["elapsed_s"]
        if main:
            rundir.write_weights(ckpt.ema)  # heals a crash between a checkpoint and its model.safetensors
            if max_steps is not None:
                rundir.write_config(model.config(), cfg.to_dict())
    # a time budget whose number of steps is not chosen yet (a new run, or one interrupted while measuring)
    budget = StepBudget(cfg.minutes) if cfg.minutes is not None and cfg.budget is None else None
    metrics = MetricsLog(
        rundir.path / METRICS_NAME,
        keep_through=step if ckpt is not None else None,
        enabled=main,
        tensorboard=rundir.path / TENSORBOARD_DIR if cfg.tensorboard and main else None,
    )
    # a resumed run continues the metrics window of its checkpoint, so its lines equal an uninterrupted run's
    window = Window.from_state_dict(ckpt.progress["window"] if ckpt is not None else None)

    emit(
        f"{'resuming at step ' + str(step) + ': ' if ckpt is not None else ''}{cfg.model} ({cfg.size}, "
        f"{model.num_parameters():,} parameters) on {cfg.dataset} ({len(train_ds)} training images, "
        f"{train_ds.spec.channels}x{train_ds.spec.height}x{train_ds.spec.width}), {device}, {cfg.precision}, "
        + (
            f"a budget of {cfg.minutes:g} min (the number of steps is chosen from the speed of the first steps)"
            if budget is not None
            else f"{cfg.max_steps} steps"
        )
        + f" -> {rundir.path}"
        + (
            f"; augmentation {','.join(augmenter.names)} ({'DistAug, conditioned' if cfg.distaug else 'plain'})"
            if augmenter is not None
            else ""
        )
        + (
            "; a latent-variable model: train bits/dim are of its ELBO, an upper bound of -log2 p(x) per dim"
            if model.likelihood == "bound"
            else ""
        )
    )
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16) if cfg.precision == "bf16" else contextlib.nullcontext()
    )
    objective = compiled_objective(model, log=emit) if cfg.compile else model.objective
    if cfg.compile and objective.compiled:
        emit("compile: compiling the model with torch.compile (the first steps take minutes on a CPU)")
    ddp = None
    if root is not None:
        objective = root
        emit(f"{world} processes, model sharded over them (FSDP): {cfg.batch_size // world} images per process")
    elif world > 1:  # gradients averaged over the processes during backward; parameters start equal (rank 0's)
        ddp = torch.nn.parallel.DistributedDataParallel(
            _Objective(model, objective),
            device_ids=[device.index] if device.type == "cuda" else None,
            **_NO_BUFFER_SYNC,  # buffers are derived from the settings: the same in every process
        )
        objective = ddp
        emit(f"{world} processes: {cfg.batch_size // world} images of each step's {cfg.batch_size} per process")
    model.train()
    return _Run(
        cfg=cfg,
        dir=rundir,
        emit=emit,
        device=device,
        model=model,
        optimizer=optimizer,
        ema=ema,
        augmenter=augmenter,
        aug_gen=aug_gen,
        batches=batches,
        test_ds=test_ds,
        metrics=metrics,
        window=window,
        objective=objective,
        ddp=ddp,
        sharded=root,
        share=distributed.share(cfg.batch_size),
        loss_scale=1.0 / cfg.grad_accum,
        autocast=autocast,
        dims_ln2=model.image.dims * math.log(2),  # per token for tokenized models
        max_norm=cfg.grad_clip if cfg.grad_clip is not None else math.inf,
        step=step,
        bad=bad,
        elapsed_before=elapsed_before,
        budget=budget,
        saved_threads=ckpt.progress.get("threads") if ckpt is not None else None,
    )


def _settings(cfg: TrainConfig, rundir: RunDir, resume: bool, max_steps: int | None):
    """The run's validated settings, its checkpoint and model config when resuming (else None, None)."""
    if resume:
        model_config, train_section = rundir.read_config()
        try:
            cfg = TrainConfig.from_dict(train_section)
        except (TypeError, ValueError) as e:
            raise ValueError(f"run config {rundir.config_path}: bad 'train' section ({e})") from None
        ckpt = rundir.load()  # fail on a corrupt checkpoint before the (slow) data loading
        if max_steps is not None:
            if max_steps < ckpt.progress["step"]:
                raise ValueError(f"max_steps={max_steps} is below the checkpoint's step {ckpt.progress['step']}")
            cfg = dataclasses.replace(cfg, max_steps=max_steps)
            if cfg.minutes is not None and cfg.budget is None:  # still measuring: the count given wins
                cfg = dataclasses.replace(cfg, budget={"minutes": cfg.minutes, "max_steps": max_steps, "given": True})
    else:
        if max_steps is not None:
            if cfg.minutes is not None:
                raise ValueError(
                    f"max_steps={max_steps} and minutes={cfg.minutes} both given: a time budget chooses the "
                    "number of steps itself; give one of them"
                )
            cfg = dataclasses.replace(cfg, max_steps=max_steps)
        if cfg.minutes is not None:
            cfg = dataclasses.replace(cfg, budget=None)  # chosen by this run
        if rundir.has_checkpoint():
            raise ArgumentValueError(
                "resume",
                "resume=True",
                f"{rundir.path} already holds a training checkpoint; resume it (",
                ") or choose a new run directory",
            )
        ckpt = model_config = None
    cfg.validate()
    if cfg.tensorboard:
        tensorboard_writer()  # refused now, not after the data are loaded
    return cfg, ckpt, model_config


def _datasets(cfg: TrainConfig) -> tuple[ImageDataset, ImageDataset]:
    """The training images (the first cfg.train_subset) and the test images, checked to be of one kind."""
    train_ds = first_images(load_dataset(cfg.dataset, "train", data_dir=cfg.data_dir), cfg.train_subset)
    test_ds = load_dataset(cfg.dataset, "test", data_dir=cfg.data_dir)
    # the final evaluation's data are checked now, not after the last step
    if test_ds.spec != train_ds.spec:

        def shape(s):
            return f"{s.channels}x{s.height}x{s.width} with {s.num_values} values"

        raise ValueError(
            f"dataset {cfg.dataset!r}: its test images are {shape(test_ds.spec)} but its training images "
            f"{shape(train_ds.spec)}; both splits must have images of one size and kind"
        )
    return train_ds, test_ds


def _model(cfg: TrainConfig, rundir: RunDir, model_config, train_ds: ImageDataset, test_ds: ImageDataset, emit):
    """The model: rebuilt from the run's config when resuming (model_config), else created as cfg says (and
    its tokenizer fitted); checked against the data."""
    if model_config is not None:
        model = model_from_config(model_config, str(rundir.config_path))
    else:
        overrides = dict(cfg.model_overrides)
        if cfg.class_conditional:
            if train_ds.num_classes is None:
                raise ValueError(f"class_conditional needs a labelled dataset; {cfg.dataset!r} has no labels")
            overrides["num_classes"] = train_ds.num_classes
        if cfg.distaug:  # the registered model, wrapped: conditioned on the transformation indices
            model = create_distaug_model(cfg.model, train_ds.spec, cfg.size, cfg.distaug, **overrides)
        else:
            model = create_model(cfg.model, train_ds.spec, cfg.size, **overrides)
    if model.data_image != train_ds.spec:
        raise ValueError(f"dataset {cfg.dataset!r} has images {train_ds.spec} but the model expects {model.data_image}")
    if model.tokenizer is not None and model_config is None:
        # e.g. Image GPT's palette: fitted once on the training pixels before the first step, then saved with
        # the weights (a resumed run restores it from the checkpoint)
        model.tokenizer.fit(train_ds.images, seed=cfg.seed)
        emit(f"tokenizer: {model.tokenizer} fitted on the {len(train_ds)} training images")
    if model.num_classes and (train_ds.labels is None or test_ds.labels is None):
        split = "training" if train_ds.labels is None else "test"
        raise ValueError(
            f"the model is class-conditional but the {split} images of dataset {cfg.dataset!r} have no labels"
        )
    return model


def _step(run: _Run) -> float:
    """One training step (see the module docstring); returns its learning rate. Raises TrainingDiverged after
    max_bad_steps non-finite steps in a row.

    This process's share of the batch goes through grad_accum micro-batches (gradients added up, averaged over
    the processes by DDP in the last one's backward). Whether the step counts is decided on numbers every
    process has: the batch's loss summed over the processes, and the norm of the averaged gradients; so all
    processes skip the same steps. A non-finite loss still runs its backward (its gradients are then
    discarded): the processes must all take part in the averaging."""
    cfg, model = run.cfg, run.model
    x, cond, kw = _inputs(run)
    lr = learning_rate(run.step, cfg.lr, cfg.warmup_steps, cfg.lr_decay)
    set_lr(run.optimizer, lr)
    run.optimizer.zero_grad(set_to_none=True)
    nats = _forward_backward(run, x, cond, kw)
    bpd = (distributed.all_sum(nats) / (cfg.batch_size * run.dims_ln2)).item()  # the whole batch's
    reason, grad_norm = None, None
    if not math.isfinite(bpd):
        reason = "non-finite loss"
    else:
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), run.max_norm)
        if run.sharded is not None:
            grad_norm = sharding.full(grad_norm)  # the norm over every shard
        if not torch.isfinite(grad_norm):
            reason = "non-finite gradient norm"
    run.step += 1
    step = run.step
    if reason is None and cfg.skip_threshold is not None and grad_norm.item() >= cfg.skip_threshold:
        # a finite but huge gradient (VDVAE's skip): no update, and no sign of divergence
        why = f"gradient norm {grad_norm.item():.4g} >= skip_threshold {cfg.skip_threshold:g}"
        run.window.images += cfg.batch_size
        run.emit(f"step {step}: {why}; step skipped")
        run.metrics.write({"step": step, "skipped": True, "reason": why, "bad_steps": run.bad, "lr": lr})
    elif reason is None:
        run.optimizer.step()
        run.ema.update(model, step)
        run.bad = 0
        run.window.add(bpd, grad_norm.item(), cfg.batch_size)
    else:
        run.bad += 1
        run.window.images += cfg.batch_size
        run.emit(f"step {step}: {reason} (loss {bpd}); step skipped, {run.bad} bad step(s) in a row")
        run.metrics.write({"step": step, "skipped": True, "reason": reason, "bad_steps": run.bad, "lr": lr})
        if run.bad >= cfg.max_bad_steps:
            raise TrainingDiverged(
                f"training diverged: {run.bad} consecutive steps (up to step {step}, lr {lr:.3g}) had a non-finite "
                f"loss or gradient ({reason}); {_kept(run.dir)}. Try a lower lr, warmup_steps, or grad_clip, or "
                "bf16 -> fp32 precision"
            )
    return lr


def _forward_backward(run: _Run, x, cond, kw) -> torch.Tensor:
    """The objective's forward and backward over this process's share of the batch, in grad_accum micro-batches
    (gradients added up into .grad, averaged over the processes by DDP in the last one's backward).
    -> -log p of the share's images, summed (float64 nats)."""
    m = x.shape[0] // run.cfg.grad_accum
    nats = torch.zeros((), dtype=torch.float64)
    for k in range(run.cfg.grad_accum):
        part = slice(k * m, (k + 1) * m)
        last = k == run.cfg.grad_accum - 1
        with contextlib.nullcontext() if last or run.ddp is None else run.ddp.no_sync():
            with run.autocast:
                lp = run.objective(x[part], None if cond is None else cond[part], **{a: v[part] for a, v in kw.items()})
            loss = -lp.float().mean() / run.dims_ln2 * run.loss_scale  # bits/dim
            loss.backward()
        nats += -lp.detach().double().sum().cpu()
    return nats


def _choose_threads(run: _Run, threads: int | None) -> int | None:
    """The CPU thread count of the run's steps (see train()'s `threads`); logs it when chosen or taken over."""
    if threads is not None:
        run.threads = check_threads(threads)
        return run.threads
    if run.saved_threads is not None:
        run.threads = int(run.saved_threads)
        run.emit(f"threads: {run.threads}, the count the run used before its checkpoint (its steps stay bitwise equal)")
        return run.threads
    if run.device.type != "cpu" or distributed.active() or torch.get_num_threads() == 1:
        return None  # a GPU's kernels, torchrun's one thread per process, or a single thread: left alone
    if step_work(run.model, run.cfg.batch_size, incremental=False) < STEP_WORK_THRESHOLD:
        run.threads = 1  # steps this small lose more to waking threads than they gain
        return run.threads
    record = probe(lambda: _probe_step(run), candidate_counts())
    run.threads = record["threads"]
    run.emit(f"threads: {describe_probe(record)}, the fastest of a few forward and backward passes on each")
    return run.threads


def _probe_step(run: _Run) -> None:
    """One step's forward and backward on a batch of the run's data that leaves no trace: the data drawn from a
    copy of the run's stream, the augmentation generator and the torch RNG (dropout) restored, the gradients
    dropped; weights, optimizer and EMA untouched."""
    batches, aug_gen, rng, data_s = run.batches, run.aug_gen, torch.get_rng_state(), run.window.data_s
    run.batches = batches.copy()
    if aug_gen is not None:
        run.aug_gen = torch.Generator().set_state(aug_gen.get_state())
    try:
        x, cond, kw = _inputs(run)
        _forward_backward(run, x, cond, kw)
    finally:
        run.batches, run.aug_gen, run.window.data_s = batches, aug_gen, data_s
        torch.set_rng_state(rng)
        run.optimizer.zero_grad(set_to_none=True)


def _inputs(run: _Run):
    """This process's share of the next batch as model inputs: (x, cond, extra log_prob keyword arguments).
    The batch and its augmentation indices are drawn whole in every process, so that the images of a step
    and their transformations do not depend on the number of processes."""
    cfg, model = run.cfg, run.model
    t_data = time.perf_counter()
    x, y = run.batches.next()
    run.window.data_s += time.perf_counter() - t_data
    aug = run.augmenter.draw(x.shape[0], run.aug_gen) if run.augmenter is not None else None
    x = x[run.share].to(run.device)
    y = None if y is None else y[run.share]
    aug = None if aug is None else aug[run.share].to(run.device)
    if cfg.augment:
        x = run.augmenter.apply(x, aug)  # plain augmentation: the model sees T(x), unconditioned
    # data images -> model inputs after plain augmentation (which acts on the data images), before
    # DistAug (whose model transforms its own inputs); identity unless the model reads tokens (Image GPT)
    x = model.encode(x)
    if cfg.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    cond = y.to(run.device) if model.num_classes else None
    kw = {"aug": aug} if cfg.distaug else {}
    return x, cond, kw


def _choose_steps(run: _Run, bar) -> None:
    """While a time budget measures the speed of the steps: once it can, fix max_steps (rank 0's choice, for
    every process), write it to config.json and say so."""
    choice = run.budget.observe(run.step, run.elapsed()) if distributed.is_main() else None
    choice, record = distributed.broadcast_object((choice, run.budget.record))
    if choice is None:
        return
    run.budget = None
    run.cfg = dataclasses.replace(run.cfg, max_steps=choice, budget=record)
    if distributed.is_main():
        run.dir.write_config(run.model.config(), run.cfg.to_dict())
    bar.total = choice
    bar.refresh()
    cfg = run.cfg
    speed = (
        f"{record['seconds_per_step']:.3g} s per step measured up to step {run.step}"
        if record["seconds_per_step"] is not None
        else f"the budget was spent by step {run.step}"
    )
    end = learning_rate(choice - 1, 1.0, cfg.warmup_steps, cfg.lr_decay)  # the last step's lr / cfg.lr
    run.emit(
        f"time budget {cfg.minutes:g} min: {speed} -> {choice} steps (written to config.json); the learning rate "
        f"ends at {end:.1%} of lr"
        + (
            f" (lr_decay {cfg.lr_decay:g} per step: one closer to 1, e.g. {LONG_RUN_DECAY ** (1 / choice):.6f}, "
            f"keeps it learning)"
            if end < 0.05
            else ""
        )
    )


# what the default run's lr falls to by its last step (0.9995 ** 1600): the hint for budgets of many more steps
LONG_RUN_DECAY = 0.45


def _report(run: _Run, lr: float, bar, progress: bool) -> None:
    """After a step: the progress bar, and every log_every steps a metrics line (and, without a bar, a log
    line); the window then starts afresh."""
    cfg, window, tokenized = run.cfg, run.window, run.model.tokenizer is not None
    bar.update(1)
    if window.steps:
        key = "bits_per_token" if tokenized else "bpd"
        bar.set_postfix({key: f"{window.last_bpd:.3f}", "img_s": f"{window.rate():.0f}"}, refresh=False)
    if run.step % cfg.log_every == 0 and window.steps:
        line = {
            "step": run.step,
            "train_bpd": window.bpd_sum / window.steps,
            "lr": lr,
            "grad_norm": window.norm_sum / window.steps,
            "images_per_s": window.rate(),
            "data_fraction": window.data_fraction(),
            "elapsed_s": run.elapsed(),
        }
        run.metrics.write(line)
        if not progress:
            unit = "bits per token" if tokenized else "bits/dim"  # a palette is no bpd
            run.emit(
                f"step {run.step}/{cfg.max_steps if run.budget is None else '?'}: train "
                f"{line['train_bpd']:.4f} {unit}, {line['images_per_s']:.0f} images/s"
            )
        run.window = Window()


def _checkpoint(run: _Run, progress: bool) -> None:
    """A checkpoint every checkpoint_every steps and after the last."""
    last = run.budget is None and run.step == run.cfg.max_steps
    if run.step % run.cfg.checkpoint_every == 0 or last:
        with distributed.together("writing a checkpoint"):
            _save(run)
        if not progress:
            run.emit(f"checkpoint at step {run.step}")


def _finish(run: _Run, log, progress: bool | str) -> dict:
    """After the last step: the EMA weights into the model, the test evaluation (its metrics line and log
    message), samples; returns train()'s result."""
    cfg, model, step = run.cfg, run.model, run.step
    if run.sharded is not None:  # an unsharded model with the full EMA weights, on every process
        model = sharding.unsharded_copy(model, run.ema.state_dict(), run.device)
    else:
        run.ema.copy_to(model)  # evaluation and samples use the averaged weights
    # fp32 whatever the training precision: the reported number is the exact likelihood (or the bound)
    res = evaluate(
        model,
        run.test_ds,
        batch_size=cfg.eval_batch_size,
        precision="fp32",
        subset=cfg.test_subset,
        num_samples=cfg.eval_num_samples,
        progress=progress,  # a bar for the test images too: the default run's take a minute
        threads=run.threads,  # the run's count: its final figure does not depend on a probe's timing
    )
    final = {
        "step": step,
        "final": True,
        "test_bpd": res["bpd"],
        "test_nats_per_image": res["nats_per_image"],
        "num_test_images": res["num_images"],
        "elapsed_s": run.elapsed(),
        "train_s": run.train_s,  # the time of the steps alone (a time budget counts it)
        "threads": run.threads,  # the CPU thread count of the steps (None: torch's, on a GPU or under torchrun)
        **({"tokenized": True} if res.get("tokenized") else {}),  # test_bpd is then bits per token
        **({"budget_minutes": cfg.minutes} if cfg.minutes is not None else {}),
    }
    if res.get("bound"):  # test_bpd is then an upper bound: the tightest of these
        final.update(bound=True, test_bpd_elbo=res["bpd_elbo"])
        if "bpd_iw" in res:
            final.update(test_bpd_iw=res["bpd_iw"], num_samples=res["num_samples"])
    run.metrics.write(final)
    if res.get("bound"):
        log(f"test after {step} steps: {describe(res)}, EMA weights")
    elif res.get("tokenized"):
        log(
            f"test after {step} steps: {res['nats_per_token']:.4f} nats per token ({res['num_images']} images, EMA "
            f"weights); palette reconstruction RMSE {res['palette_rmse']:.2f}; {TOKEN_NOTE}"
        )
    else:
        log(f"test bits/dim after {step} steps: {res['bpd']:.4f} ({res['num_images']} images, EMA weights)")
    if cfg.minutes is not None:
        chosen = (cfg.budget or {}).get("max_steps", cfg.max_steps)
        if chosen == cfg.max_steps:
            of = f"of the {cfg.minutes:g} min budget"
        else:  # resumed with --steps: the count given replaced the budget's
            of = f"for {cfg.max_steps} steps (given on resume, in place of the {cfg.minutes:g} min budget's {chosen})"
        log(f"training took {run.train_s / 60:.2f} min {of} (evaluation and samples are not part of it)")
    if cfg.sample_n:
        with distributed.together("drawing the samples"):
            _write_samples(model, cfg, run.device, run.dir.path / SAMPLES_NAME, progress)
    if distributed.is_main():
        _write_curves(run.dir.path, log)
    out = {"test_bpd": res["bpd"], "steps": step, "run_dir": str(run.dir.path), "threads": run.threads}
    if res.get("bound"):
        out.update({k: v for k, v in final.items() if k in ("bound", "test_bpd_elbo", "test_bpd_iw", "num_samples")})
    if res.get("tokenized"):  # test_bpd is then bits per token
        out.update(tokenized=True, test_nats_per_token=res["nats_per_token"], palette_rmse=res["palette_rmse"])
    return out


def _write_curves(run_dir: Path, log) -> None:
    """curves.png of the run; a failure (matplotlib missing, a full disk, ...) is a warning, never the run's end."""
    try:
        plot_runs([run_dir], run_dir / CURVES_NAME)
    except Exception as e:  # the results are written: a plot must not fail the run
        log(f"warning: {CURVES_NAME} not written ({type(e).__name__}: {e})")


def _save(run: _Run) -> None:
    """Write a checkpoint, refusing (TrainingDiverged) if any weight or optimizer tensor is not finite."""
    model, ema, batches, step = run.model, run.ema, run.batches, run.step
    if run.sharded is not None:  # full CPU tensors on rank 0 ({} elsewhere), an unsharded run's layout
        weights, ema_state, opt_state = sharding.full_states(run.sharded, run.optimizer, ema.state_dict())
    else:
        weights, ema_state, opt_state = model.state_dict(), ema.state_dict(), run.optimizer.state_dict()["state"]
    tensors = {**{f"model.{k}": v for k, v in weights.items()}, **{f"ema.{k}": v for k, v in ema_state.items()}}
    tensors.update(
        {f"optim.{i}.{k}": v for i, s in opt_state.items() for k, v in s.items() if isinstance(v, torch.Tensor)}
    )
    bad_names = [k for k, v in tensors.items() if v.dtype.is_floating_point and not bool(torch.isfinite(v).all())]
    if bad_names:
        raise TrainingDiverged(
            f"non-finite values in {', '.join(bad_names[:5])} at step {step}; not writing a "
            f"checkpoint, the last good one in {run.dir.path} (step {run.dir.checkpoint_step}) is kept"
        )
    progress = {
        "step": step,
        **batches.state_dict(),
        "bad_steps": run.bad,
        "elapsed_s": run.elapsed(),
        "window": run.window.state_dict(),
        "threads": run.threads,
    }
    checkpoint = Checkpoint(progress, weights, ema_state, opt_state, rng_states(batches, run.aug_gen))
    if distributed.is_main():
        run.dir.save(checkpoint)


def _write_samples(model, cfg: TrainConfig, device: torch.device, path: Path, progress: bool | str = False) -> None:
    """cfg.sample_n samples (class-conditional: labels 0, 1, ..., K-1, 0, 1, ...) as an 8-wide PNG grid, drawn
    from cfg.seed in chunks (pixelar.sampling.sample_seeded): shared by the processes under torchrun, the same
    images on any number of them; rank 0 writes the file."""
    n = cfg.sample_n
    cond = torch.arange(n, device=device) % model.num_classes if model.num_classes else None
    method = model.sampling_method()  # the cached sampler where the model has one, else the naive reference
    x = sample_seeded(model, n, cfg.seed, cond=cond, method=method, progress=progress)
    images = model.decode(x)  # tokens -> colours
    if distributed.is_main():
        image_files.save_grid(images, model.data_image, path, nrow=8)
