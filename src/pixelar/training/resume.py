"""Exact resume: the training data stream positioned by (epoch, batch), the seeds of the run's other random
streams, the generator states a checkpoint keeps, and `restore`, which loads a checkpoint into a fresh run's
objects. What a checkpoint holds and how it is written: training/checkpoint.py; when: training/loop.py."""

from __future__ import annotations

import numpy as np
import torch

from .. import distributed
from ..config import TrainConfig
from ..data import ImageDataset, iterate_batches
from . import sharding
from .checkpoint import Checkpoint, RunDir
from .ema import EMA


class Batches:
    """An endless stream of training batches, positioned by (epoch, batch index within the epoch).

    Epoch e's order and dynamic binarization come from a torch.Generator seeded from (seed, e), so any epoch
    can be rebuilt from its start; resuming at batch b draws batches 0..b-1 again (indexing only, no model)
    to bring the generator to the exact state it had. Full batches only (drop_last), so every step sees
    batch_size images.
    """

    def __init__(self, ds: ImageDataset, batch_size: int, seed: int, epoch: int = 0, batch: int = 0):
        if len(ds) < batch_size:
            raise ValueError(
                f"the training split of {ds.name!r} has {len(ds)} images, fewer than batch_size="
                f"{batch_size}: use a smaller batch size or more training images"
            )
        self.ds, self.batch_size, self.seed = ds, batch_size, seed
        self._start(epoch)
        for _ in range(batch):
            if next(self._it, None) is None:
                raise ValueError(
                    f"checkpoint position (epoch {epoch}, batch {batch}) is past the end of an epoch "
                    f"of {len(ds) // batch_size} batches: the training data changed"
                )
        self.batch = batch

    def _start(self, epoch: int) -> None:
        seed = int(np.random.SeedSequence([self.seed, epoch]).generate_state(1, np.uint64)[0])
        self.epoch, self.batch = epoch, 0
        self.generator = torch.Generator().manual_seed(seed)
        self._it = iterate_batches(self.ds, self.batch_size, shuffle=True, generator=self.generator, drop_last=True)

    def state_dict(self) -> dict:
        """The stream's position, as a checkpoint's progress keeps it (its generator state goes to rng.data)."""
        return {"epoch": self.epoch, "batch": self.batch}

    def copy(self) -> Batches:
        """A stream at the same position, drawing the same batches, that leaves this one where it is."""
        return Batches(self.ds, self.batch_size, self.seed, self.epoch, self.batch)

    def next(self):
        """The next (x int64 (B, C, H, W), y int64 (B,) or None), starting a new epoch when one ends."""
        item = next(self._it, None)
        if item is None:
            self._start(self.epoch + 1)
            item = next(self._it)
        self.batch += 1
        return item


def augment_seed(seed: int) -> int:
    """The seed of the augmentation-index generator: derived from the run's seed, apart from the data's."""
    return int(np.random.SeedSequence([seed, 0xA06]).generate_state(1, np.uint64)[0])


def rank_seed(seed: int, rank: int, step: int) -> int:
    """The seed of process `rank`'s own random stream (dropout, order draws) from `step` on: rank 0 keeps the
    stream of a single process, the others start their own (at step 0, or when a resume finds none saved)."""
    return int(np.random.SeedSequence([seed, 0xD1, rank, step]).generate_state(1, np.uint64)[0])


def rng_states(batches: Batches, aug_gen: torch.Generator | None) -> dict[str, torch.Tensor]:
    """The generator states to checkpoint: the data's and augmentation's (the same in every process), the torch
    (and CUDA) streams of rank 0 as "torch" ("cuda.<i>"), those of rank r > 0 as "rank<r>.torch" ("rank<r>.cuda").
    Every process must call it (the states are gathered)."""
    rng = {"torch": torch.get_rng_state(), "data": batches.generator.get_state()}
    if aug_gen is not None:
        rng["augment"] = aug_gen.get_state()
    if torch.cuda.is_available() and not distributed.active():
        rng.update({f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    if distributed.active():
        streams = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            streams["cuda"] = torch.cuda.get_rng_state()
        for name, state in streams.items():
            for r, s in enumerate(distributed.gather_tensors(state)):
                rng[name if r == 0 and name == "torch" else f"rank{r}.{name}"] = s
    return rng


def restore(
    run: RunDir,
    ckpt: Checkpoint,
    model,
    optimizer,
    ema: EMA,
    train_ds: ImageDataset,
    cfg: TrainConfig,
    aug_gen: torch.Generator | None = None,
    sharded: torch.nn.Module | None = None,
):
    """Load the checkpoint's state into the fresh objects; return the data stream at the saved position."""
    where = run.tensors_path
    try:
        if sharded is not None:  # the full tensors, each process keeping its shards
            sharding.load_full_states(sharded, optimizer, ema, ckpt.model, ckpt.ema, ckpt.optimizer)
        else:
            model.load_state_dict(ckpt.model)
            ema.load_state_dict(ckpt.ema)
            # hyperparameters come from the config; only the per-parameter state is restored
            optimizer.load_state_dict({"state": ckpt.optimizer, "param_groups": optimizer.state_dict()["param_groups"]})
    except (RuntimeError, ValueError, KeyError) as e:
        raise ValueError(f"training state {where} does not match the model in {run.config_path}: {e}") from None
    batches = Batches(train_ds, cfg.batch_size, cfg.seed, ckpt.progress["epoch"], ckpt.progress["batch"])
    if not torch.equal(batches.generator.get_state(), ckpt.rng["data"]):
        raise ValueError(
            f"the training data differ from those of the checkpoint {where}: replaying epoch "
            f"{batches.epoch} to batch {batches.batch} does not reproduce the saved data generator "
            f"state (was dataset {cfg.dataset!r} or its files changed?)"
        )
    rank = distributed.rank()
    if rank == 0:
        torch.set_rng_state(ckpt.rng["torch"])
    elif f"rank{rank}.torch" in ckpt.rng:  # this process's own stream, saved by a run with as many processes
        torch.set_rng_state(ckpt.rng[f"rank{rank}.torch"])
    else:  # more processes than the checkpoint's run had: a new stream (docs/training.md)
        torch.manual_seed(rank_seed(cfg.seed, rank, ckpt.progress["step"]))
    if aug_gen is not None:
        if "augment" not in ckpt.rng:
            raise ValueError(
                f"training state {where} has no augmentation generator state ('rng.augment'), but the "
                "run augments its images: it was not written by this run's configuration"
            )
        aug_gen.set_state(ckpt.rng["augment"])
    if torch.cuda.is_available():
        if distributed.active():
            key = "rank0.cuda" if rank == 0 else f"rank{rank}.cuda"
            if key in ckpt.rng:
                torch.cuda.set_rng_state(ckpt.rng[key])
            elif rank == 0 and "cuda.0" in ckpt.rng:  # a single-process run's checkpoint
                torch.cuda.set_rng_state(ckpt.rng["cuda.0"])
            else:
                torch.cuda.manual_seed(rank_seed(cfg.seed, rank, ckpt.progress["step"]))
        else:
            for i in range(torch.cuda.device_count()):
                if f"cuda.{i}" in ckpt.rng:
                    torch.cuda.set_rng_state(ckpt.rng[f"cuda.{i}"], i)
    return batches
