"""A pickle loader that can rebuild numpy arrays and nothing else.

Unpickling can call any importable function named in the data (the classic
``os.system`` exploit), so a downloaded pickle is only read with this loader:
``find_class`` resolves a short allow-list of numpy/codecs names and refuses
everything else before anything is called.
"""

from __future__ import annotations

import codecs
import importlib
import io
import pickle
from typing import Any

from pixelar.data.errors import UnsafePickleError

# (module, name) pairs a numpy-array pickle may reference. numpy 2 renamed
# numpy.core to numpy._core; old pickles (CIFAR-10 was written by Python 2)
# still say numpy.core, so both spellings resolve to whichever exists.
_ALLOWED_NUMPY = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),  # protocol-5 pickles of arrays
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}
# Python-2-compatible pickles (protocol <= 2) store bytes as codecs.encode(str, "latin1").
_ALLOWED_OTHER = {
    ("_codecs", "encode"): codecs.encode,
    ("codecs", "encode"): codecs.encode,
}


def _resolve_numpy(module: str, name: str) -> Any:
    # Try the current module path first so numpy 2 does not warn about numpy.core.
    submodule = module.removeprefix("numpy.core").removeprefix("numpy._core")
    if submodule == module:  # plain "numpy"
        candidates = [module]
    else:
        candidates = ["numpy._core" + submodule, "numpy.core" + submodule]
    for candidate in candidates:
        try:
            return getattr(importlib.import_module(candidate), name)
        except (ImportError, AttributeError):
            continue
    raise UnsafePickleError(f"allowed global {module}.{name} is not available in this numpy")


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler whose ``find_class`` only returns the numpy-array helpers listed above."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_OTHER:
            return _ALLOWED_OTHER[module, name]
        if (module, name) in _ALLOWED_NUMPY:
            return _resolve_numpy(module, name)
        raise UnsafePickleError(
            f"refusing to load global {module}.{name}: only numpy arrays may be unpickled "
            "(the file is corrupt or malicious)"
        )


def safe_loads(data: bytes, encoding: str = "bytes") -> Any:
    """Unpickle ``data`` with :class:`RestrictedUnpickler`.

    ``encoding="bytes"`` keeps Python-2 ``str`` objects as bytes, which is how the
    CIFAR-10 pickles must be read (their dict keys become ``b"data"`` etc.).

    Raises:
        UnsafePickleError: the pickle references a global that is not allowed.
        pickle.UnpicklingError, EOFError, ...: the data are not a valid pickle.
    """
    return RestrictedUnpickler(io.BytesIO(data), encoding=encoding).load()
