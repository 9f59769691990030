"""Training-run helpers shared by the training and run-directory tests (their fixtures are in conftest.py)."""

from __future__ import annotations

from pixelar.training import train


def quiet(cfg, run_dir, **kw):
    """train() without a progress bar or log lines."""
    return train(cfg, run_dir, progress=False, log=lambda msg: None, **kw)


def stop_after(n):
    """An on_step hook that interrupts training after step n, as Ctrl-C would."""

    def hook(step):
        if step == n:
            raise KeyboardInterrupt

    return hook
