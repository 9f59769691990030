"""EMA (Polyak averaging) of a model's weights: the weights evaluation and sampling use.

After every optimizer step, avg = decay * avg + (1 - decay) * weight for every floating-point parameter;
buffers (and integer tensors) are copied as they are. The average starts at the model's weights when the
EMA is made. decay 0 makes the average equal the raw weights. Given the step number, the decay warms up as
min(decay, (1 + step) / (10 + step)), so that a short run's average is not dominated by the random initial
weights (with a plain 0.999 decay, 37% of the average would still be the initialisation after 1000 steps).
"""

from __future__ import annotations

import torch
import torch.nn as nn


class EMA:
    """Exponential moving average of `model`'s state dict (same keys, detached copies on the same device)."""

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        # parameter names: these are averaged; every other state-dict entry (buffers) is copied
        self._averaged = {name for name, p in model.named_parameters() if p.dtype.is_floating_point}
        self._state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module, step: int | None = None) -> None:
        """Fold in the model's current weights (call after each optimizer step; step counts from 1)."""
        decay = self.decay if step is None else min(self.decay, (1.0 + step) / (10.0 + step))
        avgs, news = [], []
        for k, v in model.state_dict().items():
            if k in self._averaged and decay > 0:
                avgs.append(self._state[k])
                news.append(v.detach())
            else:
                self._state[k].copy_(v)
        if avgs:  # one fused pass over all parameters: avg += (1 - decay) * (new - avg)
            torch._foreach_lerp_(avgs, news, 1.0 - decay)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite the model's weights and buffers with the average."""
        model.load_state_dict(self._state)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged state dict (the live tensors; clone before changing them)."""
        return self._state

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing, unexpected = self._state.keys() - state.keys(), state.keys() - self._state.keys()
        if missing or unexpected:
            raise ValueError(
                f"EMA state does not match the model: missing {sorted(missing)[:5]}, "
                f"unexpected {sorted(unexpected)[:5]}"
            )
        for k, v in state.items():
            if v.shape != self._state[k].shape:
                raise ValueError(f"EMA state {k!r} has shape {tuple(v.shape)}, the model {tuple(self._state[k].shape)}")
            self._state[k].copy_(v)
