"""A wall-clock budget for training: the number of steps, chosen once from the measured speed of the first steps.

A run given `minutes` does not stop when a clock says so: that would make its last step depend on the machine's
load and a resumed run differ from an uninterrupted one. Instead it measures the speed of its first steps (the
measurement window), then fixes max_steps = the steps that fill the rest of the budget at that speed, and records
the choice in config.json. From then on it is an ordinary run of max_steps steps: deterministic, and resumed
exactly. The learning rate depends on the step alone (training/optim.py), so the choice changes no step's update.

The budget counts the training steps and their checkpoints (the elapsed_s of the checkpoint: a resumed run goes on
from the time already spent), not the loading before nor the evaluation and samples after the last step.
"""

from __future__ import annotations

# The window: at least MIN_STEPS timed steps and WINDOW_FRACTION of the budget (at most WINDOW_MAX_S seconds).
# The first step of a session is not timed: it pays for allocations, and for compiling under torch.compile.
MIN_STEPS = 3
WINDOW_FRACTION = 0.05
WINDOW_MAX_S = 30.0


class StepBudget:
    """Watches the steps of a session until it can choose the run's number of steps.

    observe(step, elapsed) is called after every step with the steps done and the training seconds spent
    (sessions before this one included); it returns None while measuring, then the chosen max_steps (at least
    `step`: a budget already spent stops the run at once).
    """

    def __init__(self, minutes: float):
        self.seconds = 60.0 * minutes
        self.window_s = min(WINDOW_FRACTION * self.seconds, WINDOW_MAX_S)
        self.first: tuple[int, float] | None = None  # (step, elapsed) after the session's first step
        self.record: dict | None = None  # what the choice was made from, once made

    def observe(self, step: int, elapsed: float) -> int | None:
        if elapsed >= self.seconds:  # spent (a first step slower than the budget, or a slow resume)
            return self._choose(step, elapsed, step, None)
        if self.first is None:
            self.first = (step, elapsed)
            return None
        steps, seconds = step - self.first[0], elapsed - self.first[1]
        if steps < MIN_STEPS or seconds < self.window_s:
            return None
        per_step = seconds / steps
        return self._choose(step, elapsed, step + int((self.seconds - elapsed) / per_step), per_step)

    def _choose(self, step: int, elapsed: float, max_steps: int, per_step: float | None) -> int:
        self.record = {
            "minutes": self.seconds / 60.0,
            "measured_at_step": step,
            "measured_elapsed_s": elapsed,
            "seconds_per_step": per_step,  # None: the budget was spent before a speed could be measured
            "max_steps": max_steps,
        }
        return max_steps
