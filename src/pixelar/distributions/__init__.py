"""Output distributions: parameters <-> per-sub-pixel log-probabilities <-> samples. No backbones here."""

from __future__ import annotations

from ..types import ImageSpec
from .base import OutputDistribution
from .bernoulli import Bernoulli
from .categorical import Categorical
from .logistic_mixture import DiscretizedLogisticMixture

OUTPUTS = ("categorical", "logistic_mixture", "bernoulli")


def make_distribution(image: ImageSpec, kind: str, joint: bool, **kwargs) -> OutputDistribution:
    """Build an output distribution by name.

    Args:
        kind: one of OUTPUTS.
        joint: whether the backbone's parameters for a pixel see only earlier pixels (True) or come in
            per-channel groups that may see earlier channels of the same pixel (False). The logistic mixture
            is always joint; a categorical gets within-pixel coupling when joint; a Bernoulli needs groups.
        kwargs: the distribution's own hyperparameters (e.g. nr_mix for the logistic mixture).
    """
    if kind == "categorical":
        _no_extra(kind, kwargs)
        return Categorical(image, joint=joint)
    if kind == "bernoulli":
        _no_extra(kind, kwargs)
        if joint and image.channels > 1:
            raise ValueError("the bernoulli output needs a backbone with per-channel groups for colour images")
        return Bernoulli(image)
    if kind == "logistic_mixture":
        unknown = set(kwargs) - {"nr_mix"}
        if unknown:
            raise ValueError(f"unknown option(s) {sorted(unknown)} for output 'logistic_mixture'; valid: ['nr_mix']")
        return DiscretizedLogisticMixture(image, **kwargs)
    raise ValueError(f"unknown output distribution {kind!r}; valid: {list(OUTPUTS)}")


def _no_extra(kind, kwargs):
    if kwargs:
        raise ValueError(f"output {kind!r} takes no options, got {sorted(kwargs)}")


__all__ = [
    "OutputDistribution",
    "Categorical",
    "Bernoulli",
    "DiscretizedLogisticMixture",
    "make_distribution",
    "OUTPUTS",
]
