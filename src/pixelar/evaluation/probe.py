"""Linear probe (Chen et al. 2020, "Generative Pretraining from Pixels", section 3.4): how linearly separable
the classes are in a generative model's features.

Features of a layer are average-pooled over positions (the model's `features`, e.g. image_gpt: the
normalised input of a block); a multinomial logistic regression is fitted on the training split's features
(standardised with the training mean and standard deviation, L2 weight decay, full-batch L-BFGS in float64,
deterministic) and its accuracy reported on the test split. The paper finds the best features in the middle
layers, not at the end, since the last layers specialise in predicting the next pixel.

This module knows no model family: it asks the model for `features(x, cond, layers)` and
`num_feature_layers`, and for `encode` (data images -> model inputs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data import ImageDataset, first_images, iterate_batches
from ..inference import inference
from ..progress import tracking
from .bpd import EVAL_BATCH_SIZE


def _check_model(model) -> None:
    if model.num_feature_layers == 0:
        raise NotImplementedError(f"model {model.name!r} has no features() for a linear probe; image_gpt has")


def extract_features(
    model,
    dataset: ImageDataset,
    layers: list[int],
    batch_size: int = EVAL_BATCH_SIZE,
    subset: int | None = None,
    progress=None,
) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
    """Average-pooled features of every image: ({layer: float64 (N, d)}, labels int64 (N,)). progress: report
    the images done (pixelar.progress)."""
    _check_model(model)
    if dataset.labels is None:
        raise ValueError(f"dataset {dataset.name!r} has no labels; a linear probe needs class labels")
    if dataset.spec != model.data_image:
        raise ValueError(f"dataset {dataset.name!r} has images {dataset.spec} but the model expects {model.data_image}")
    ds = first_images(dataset, subset)
    if len(ds) == 0:
        raise ValueError(f"dataset {dataset.name!r} ({dataset.split}) has no images")
    device = next(model.parameters()).device
    feats: dict[int, list[torch.Tensor]] = {k: [] for k in layers}
    labels = []
    with inference(model), tracking(progress, len(ds), f"features ({dataset.split})", "img") as bar:
        for x, y in iterate_batches(ds, batch_size, shuffle=False, generator=torch.Generator().manual_seed(0)):
            cond = y.to(device) if model.num_classes else None
            out = model.features(model.encode(x.to(device)), cond, layers)  # {layer: (B, d)}
            for k in layers:
                feats[k].append(out[k].double().cpu())
            labels.append(y)
            bar.advance(len(x))
    return {k: torch.cat(v) for k, v in feats.items()}, torch.cat(labels)


def fit_logistic(
    x: torch.Tensor, y: torch.Tensor, num_classes: int, weight_decay: float = 1e-3, max_iter: int = 200
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression on features x (N, d) (standardised), labels y (N,): weights (d, K),
    bias (K,) minimising mean cross-entropy + weight_decay / 2 * |W|^2 (float64, L-BFGS, zero start)."""
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    x = x.double()
    w = torch.zeros(x.shape[1], num_classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w, b],
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=1e-9,
        tolerance_change=1e-12,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ w + b, y) + 0.5 * weight_decay * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach(), b.detach()


def probe_layer(train_x, train_y, test_x, test_y, num_classes: int, weight_decay: float = 1e-3) -> dict:
    """Standardise with the training statistics, fit, score: {"train_accuracy", "test_accuracy"} in [0, 1]."""
    mean, std = train_x.mean(0), train_x.std(0).clamp(min=1e-8)
    a, b = (train_x - mean) / std, (test_x - mean) / std
    w, bias = fit_logistic(a, train_y, num_classes, weight_decay)
    acc = lambda f, y: float(((f @ w + bias).argmax(1) == y).double().mean())  # noqa: E731
    return {"train_accuracy": acc(a, train_y), "test_accuracy": acc(b, test_y)}


def linear_probe(
    model,
    train: ImageDataset,
    test: ImageDataset,
    layers: list[int] | None = None,
    batch_size: int = EVAL_BATCH_SIZE,
    train_subset: int | None = None,
    test_subset: int | None = None,
    weight_decay: float = 1e-3,
    progress=None,
) -> list[dict]:
    """Probe accuracy per layer: [{"layer", "train_accuracy", "test_accuracy", "num_train", "num_test"}].

    layers None: every layer the model offers (0 .. num_feature_layers - 1).
    progress (pixelar.progress): reported in three phases, each counting from 0 to its own total, with the
    phase as a keyword: phase="train features" and "test features" (images), then phase="fit" (layers).
    """
    _check_model(model)
    if layers is None:
        layers = list(range(model.num_feature_layers))
    if train.num_classes is None or train.labels is None or test.labels is None:
        raise ValueError(f"dataset {train.name!r} has no labels; a linear probe needs class labels")
    tr, ytr = extract_features(model, train, layers, batch_size, train_subset, _phase(progress, "train features"))
    te, yte = extract_features(model, test, layers, batch_size, test_subset, _phase(progress, "test features"))
    rows = []
    with tracking(_phase(progress, "fit"), len(layers), "fitting probes", "layer") as bar:
        for k in layers:
            res = probe_layer(tr[k], ytr, te[k], yte, train.num_classes, weight_decay)
            rows.append({"layer": k, **res, "num_train": len(ytr), "num_test": len(yte)})
            bar.advance(layer=k)
    return rows


def _phase(progress, phase: str):
    """A callable progress told which phase it hears from; True, False and None as they are."""
    if callable(progress):
        return lambda done, total, **stats: progress(done, total, phase=phase, **stats)
    return progress


__all__ = ["extract_features", "fit_logistic", "linear_probe", "probe_layer"]
