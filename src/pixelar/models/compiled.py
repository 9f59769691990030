"""A torch.compile'd log_prob for any ARImageModel, with a clear fallback to eager mode.

torch.compile (Inductor) fuses the elementwise work around the convolutions (concat_elu, gates, pads, the
mixture likelihood) into a few generated kernels. Compilation needs a working backend (on CPU a C++
compiler) and costs time once per process and input shape (minutes for a PixelCNN++ on 2 CPU cores, less on
later runs thanks to Inductor's on-disk cache), so it pays off only for long runs. Where compilation is not
available, `compiled_log_prob` says so in one log line and returns the eager computation: results are the
same either way, only speed differs.

The input checks of log_prob read tensor values (`int(x.min())`), which would break the compiled graph; the
wrapper runs them eagerly first, and ARImageModel skips them while Dynamo traces (see `pixelar.tracing.is_tracing`).
"""

from __future__ import annotations

import torch

_AVAILABLE: tuple[bool, str] | None = None  # (works, reason) of the one-off probe, per process


def compile_available() -> tuple[bool, str]:
    """(True, "") when torch.compile can compile a small function with its backward here, else (False, why).

    The probe runs once per process (a few seconds the first time).
    """
    global _AVAILABLE
    if _AVAILABLE is None:
        try:

            def probe(t):
                return torch.nn.functional.elu(torch.cat([t, -t])).sum()

            t = torch.randn(8, requires_grad=True)
            torch.compile(probe, dynamic=False)(t).backward()
            ok = t.grad is not None and bool(torch.isfinite(t.grad).all())
            _AVAILABLE = (ok, "" if ok else "the probe's gradient was wrong")
        except Exception as e:  # any backend/compiler failure means: no compile here
            first = (str(e).strip().splitlines() or [""])[0][:200]
            _AVAILABLE = (False, f"{type(e).__name__}: {first}")
    return _AVAILABLE


class CompiledLogProb:
    """Callable like model.log_prob(x, cond, reduce) with the model's computation compiled.

    Falls back to the model's eager log_prob (logging one line) when compilation is unavailable, or when
    the first compiled call fails; later failures are real errors and propagate.
    """

    def __init__(self, model, log=print, mode: str | None = None):
        self.model = model
        self.log = log
        ok, why = compile_available()
        self.compiled = ok
        self._eager = self._method()
        self._fn = torch.compile(self._eager, dynamic=False, mode=mode) if ok else self._eager
        self._first = True
        if not ok:
            log(
                f"compile: torch.compile is not available here ({why}); running in eager mode (same results, no fusion)"
            )

    def _method(self):
        return self.model.log_prob

    def _args(self, reduce: bool) -> tuple:
        return (reduce,)

    def __call__(self, x: torch.Tensor, cond: torch.Tensor | None = None, reduce: bool = True, **kw) -> torch.Tensor:
        """kw: further arguments of the model's log_prob (e.g. DistAugModel's aug), passed through."""
        extra = self._args(reduce)
        if not self.compiled:  # eager log_prob checks its inputs itself
            return self._eager(x, cond, *extra, **kw)
        x = self.model.check_input(x)  # eager: value checks cannot run inside the compiled graph
        cond = self.model.check_cond(cond, x.shape[0])
        if not self._first:
            return self._fn(x, cond, *extra, **kw)
        try:
            out = self._fn(x, cond, *extra, **kw)
        except Exception as e:
            first = (str(e).strip().splitlines() or [""])[0][:200]
            self.log(
                f"compile: compiling {type(self.model).__name__} failed ({type(e).__name__}: {first}); "
                "running in eager mode (same results, no fusion)"
            )
            self.compiled, self._fn = False, self._eager
            return self._eager(x, cond, *extra, **kw)
        self._first = False
        return out


class CompiledObjective(CompiledLogProb):
    """Callable like model.objective(x, cond, **kw) (what training maximises), compiled the same way."""

    def _method(self):
        return self.model.objective

    def _args(self, reduce: bool) -> tuple:
        return ()


def compiled_log_prob(model, log=print, mode: str | None = None) -> CompiledLogProb:
    """model.log_prob compiled with torch.compile, or the eager one (with a log line) where that fails."""
    return CompiledLogProb(model, log=log, mode=mode)


def compiled_objective(model, log=print, mode: str | None = None) -> CompiledObjective:
    """model.objective compiled with torch.compile, or the eager one (with a log line) where that fails."""
    return CompiledObjective(model, log=log, mode=mode)
