"""Whether torch.compile is tracing the calling code: value-dependent checks (min/max of an input, then a
Python branch) must be skipped then. Lives below every package so that nn/, augment/ and models/ can ask."""

from __future__ import annotations

import torch


def is_tracing() -> bool:
    """True while torch.compile traces the calling code."""
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and hasattr(compiler, "is_compiling") and compiler.is_compiling())
