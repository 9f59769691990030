"""TrainConfig: every setting of a training run, saved as the "train" section of a run's config.json."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

import torch

from .augment import TRANSFORM_TYPES
from .errors import shown
from .models import SIZES, list_models  # the registry only; no model family is named here
from .models.registry import check_hparams, merge_hparams, model_class, preset

PRECISIONS = ("fp32", "bf16")
MAX_SEED = 2**63 - 1  # seeds are signed 64-bit integers


@dataclass
class TrainConfig:
    """Settings of one training run (see pixelar.training.train).

    lr(step) = lr * min(1, (step + 1) / warmup_steps) * lr_decay ** step (no warm-up factor when
    warmup_steps is 0). grad_clip None turns clipping off; ema_decay 0 turns the weight average off
    (evaluation then uses the raw weights). train_subset / test_subset keep only the first N images
    of the split (quick experiments and tests). sample_n 0 skips samples.png. minutes: train for a wall-clock
    budget; the number of steps is chosen from the speed of the first steps and then fixed (max_steps is
    replaced; see pixelar.training.budget).
    """

    model: str = "pixelcnn_pp"
    size: str = "small"
    model_overrides: dict = field(default_factory=dict)
    dataset: str = "fashion_mnist"
    data_dir: str | None = None
    class_conditional: bool = False
    # Distribution Augmentation (pixelar.augment): transformation types, e.g. ["rot90", "transpose"]. Each image
    # draws one index per type, independently and uniformly. `augment`: plain augmentation (the model sees the
    # transformed images, unconditioned); `distaug`: the model is conditioned on the indices (models/distaug.py).
    augment: list = field(default_factory=list)
    distaug: list = field(default_factory=list)
    # Tuned for `pixelar train` (small PixelCNN++, 2 CPU cores, ~5 minutes): at an equal number of images
    # (6,400), smaller batches gave clearly better test bits/dim (batch 32: 3.48, 16: 3.37, 8: 3.19, 4: 3.09 on
    # 2,000 test images) at about the same wall time. Larger models and GPUs want --batch-size 16 or more.
    batch_size: int = 4
    # the batch of one step is split into grad_accum micro-batches (per process, under torchrun), whose
    # gradients add up to the whole batch's: the same step for batches that do not fit in memory at once
    grad_accum: int = 1
    max_steps: int = 1600
    # a wall-clock budget for the training steps instead of max_steps: the loop measures the speed of the first
    # steps, then fixes max_steps and records how in `budget` (training/budget.py); None: max_steps as given
    minutes: float | None = None
    budget: dict | None = None  # written by the loop once it has chosen max_steps (None while it measures)
    lr: float = 2e-3
    betas: tuple[float, float] = (0.95, 0.9995)
    eps: float = 1e-8
    lr_decay: float = 0.9995
    warmup_steps: int = 0
    grad_clip: float | None = 1.0
    # a step whose gradient norm (before clipping, of the bits/dim loss) is >= skip_threshold is skipped: no
    # update, logged, not counted as a divergence (VDVAE's guard against rare huge gradients); None: never
    skip_threshold: float | None = None
    ema_decay: float = 0.999
    precision: str = "fp32"
    compile: bool = False  # torch.compile the model's log_prob (falls back to eager, with a log line)
    channels_last: bool = False  # channels_last memory layout for weights and activations
    device: str = "auto"
    seed: int = 0
    checkpoint_every: int = 250
    log_every: int = 10
    eval_batch_size: int = 100  # evaluation.EVAL_BATCH_SIZE (a test keeps them equal): 1.4x faster than 500
    max_bad_steps: int = 5
    sample_n: int = 64
    tensorboard: bool = False  # also write the metrics as TensorBoard events to run_dir/tensorboard
    train_subset: int | None = None
    test_subset: int | None = None
    # latent-variable models (likelihood "bound"): importance samples per test image in the final evaluation
    # (None: the ELBO alone); refused for models with an exact likelihood
    eval_num_samples: int | None = None

    def to_dict(self) -> dict:
        """A JSON-able dict (betas as a list); from_dict(to_dict()) gives an equal config."""
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """Build from a dict such as config.json's "train" section; missing keys take their defaults."""
        if not isinstance(d, dict):
            raise ValueError(f"a training config must be a dict, got {type(d).__name__}")
        valid = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(valid))
        if unknown:
            raise ValueError(
                f"unknown training option(s) {', '.join(map(repr, unknown))}; valid options: {', '.join(valid)}"
            )
        d = dict(d)
        if isinstance(d.get("betas"), list):  # JSON has no tuples
            d["betas"] = tuple(d["betas"])
        return cls(**d)

    def validate(self) -> TrainConfig:
        """Raise ValueError naming the first bad setting; return self so calls can chain."""
        if self.model not in list_models():
            raise ValueError(f"model must be one of {', '.join(list_models())}, got {shown(self.model)}")
        if self.size not in SIZES:
            raise ValueError(f"size must be one of {', '.join(SIZES)}, got {shown(self.size)}")
        if not isinstance(self.model_overrides, dict):
            raise ValueError(f"model_overrides must be a dict, got {type(self.model_overrides).__name__}")
        # the model's options, checked now rather than after the data are loaded
        check_hparams(self.model, merge_hparams(preset(self.model, self.size), self.model_overrides, self.model))
        _check_str(self, "dataset")
        if self.data_dir is not None:
            _check_str(self, "data_dir")
        for name in ("augment", "distaug"):
            types = getattr(self, name)
            if not isinstance(types, list) or not all(isinstance(t, (str, dict)) for t in types):
                raise ValueError(f"{name} must be a list of transformation names, got {shown(types)}")
            bad = [t for t in types if (t if isinstance(t, str) else t.get("name")) not in TRANSFORM_TYPES]
            if bad:
                raise ValueError(f"{name}: unknown transformation(s) {shown(bad)}; valid: {', '.join(TRANSFORM_TYPES)}")
        if self.augment and self.distaug:
            raise ValueError(
                "choose augment (plain, unconditioned) or distaug (conditioned on the transformation), not both"
            )
        if not isinstance(self.class_conditional, bool):
            raise ValueError(f"class_conditional must be true or false, got {shown(self.class_conditional)}")
        for name in (
            "batch_size",
            "grad_accum",
            "max_steps",
            "checkpoint_every",
            "log_every",
            "eval_batch_size",
            "max_bad_steps",
        ):
            _check_int(self, name, low=1)
        for name in ("warmup_steps", "sample_n"):
            _check_int(self, name, low=0)
        for name in ("train_subset", "test_subset", "eval_num_samples"):
            if getattr(self, name) is not None:
                _check_int(self, name, low=1)
        _check_int(self, "seed", low=0, high=MAX_SEED)
        _check_float(self, "lr", lambda v: v > 0, "> 0")
        _check_float(self, "eps", lambda v: v > 0, "> 0")
        _check_float(self, "lr_decay", lambda v: 0 < v <= 1, "in (0, 1]")
        _check_float(self, "ema_decay", lambda v: 0 <= v < 1, "in [0, 1)")
        if self.minutes is not None:
            _check_float(self, "minutes", lambda v: v > 0, "> 0 (or None for a number of steps)")
        if self.budget is not None and (not isinstance(self.budget, dict) or self.minutes is None):
            raise ValueError(
                f"budget is the record of a time budget (a dict, with minutes set), got {shown(self.budget)}"
            )
        if self.grad_clip is not None:
            _check_float(self, "grad_clip", lambda v: v > 0, "> 0 (or None for no clipping)")
        if self.skip_threshold is not None:
            _check_float(self, "skip_threshold", lambda v: v > 0, "> 0 (or None for no skipping)")
        if self.eval_num_samples is not None and model_class(self.model).likelihood != "bound":
            raise ValueError(
                f"eval_num_samples applies to latent-variable models; the likelihood of {self.model!r} is exact "
                "(leave it unset)"
            )
        if self.eval_num_samples is not None and not model_class(self.model).stochastic_posterior:
            raise ValueError(
                f"eval_num_samples changes nothing for {self.model!r}: its posterior is deterministic, so every "
                "importance sample is the same and the bound is the ELBO (leave it unset)"
            )
        betas = self.betas
        if (
            not isinstance(betas, (tuple, list))
            or len(betas) != 2
            or not all(_is_number(b) and 0 <= b < 1 for b in betas)
        ):
            raise ValueError(f"betas must be two numbers in [0, 1), got {shown(betas)}")
        for flag in ("compile", "channels_last", "tensorboard"):
            if not isinstance(getattr(self, flag), bool):
                raise ValueError(f"{flag} must be true or false, got {shown(getattr(self, flag))}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {shown(self.precision)}")
        _check_str(self, "device")
        if self.device != "auto":
            try:
                torch.device(self.device)
            except RuntimeError:
                raise ValueError(
                    f"device must be 'auto' or a torch device such as 'cpu' or 'cuda:0', got {shown(self.device)}"
                ) from None
        return self


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_str(cfg, name: str) -> None:
    v = getattr(cfg, name)
    if not isinstance(v, str) or not v:
        raise ValueError(f"{name} must be a non-empty string, got {shown(v)}")


def _check_int(cfg, name: str, low: int, high: int | None = None) -> None:
    v = getattr(cfg, name)
    if not isinstance(v, int) or isinstance(v, bool) or v < low or (high is not None and v > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be an integer {bound}, got {shown(v)}")


def _check_float(cfg, name: str, ok, requirement: str) -> None:
    v = getattr(cfg, name)
    if not _is_number(v) or not ok(v):
        raise ValueError(f"{name} must be a number {requirement}, got {shown(v)}")
