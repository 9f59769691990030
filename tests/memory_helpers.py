"""Memory measurements shared by the tests of memory that must not grow with the number of images."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc


def heap_in_use():
    """Bytes allocated by malloc and not yet freed (glibc's mallinfo2: arena + mmapped chunks), or None."""
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    if libc is None or not hasattr(libc, "mallinfo2"):
        return None

    class MallInfo2(ctypes.Structure):
        _fields_ = [
            (f, ctypes.c_size_t)
            for f in (
                "arena",
                "ordblks",
                "smblks",
                "hblks",
                "hblkhd",
                "usmblks",
                "fsmblks",
                "uordblks",
                "fordblks",
                "keepcost",
            )
        ]

    libc.mallinfo2.restype = MallInfo2

    def in_use():
        info = libc.mallinfo2()
        return info.uordblks + info.hblkhd

    return in_use


@contextlib.contextmanager
def no_cycle_collector():
    """Python's cycle collector off for the block: what a test then measures is what reference counting frees."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
