"""Give the heap freed after a peak back to the OS.

glibc keeps freed heap memory for reuse: after a 1,000-container list or 200 stats streams the
process would stay at its peak RSS. ``malloc_trim(0)`` returns the free pages; it costs about a
millisecond, so the DockerGateway calls :func:`release_memory` at each reachability probe (every
30 s). Elsewhere (musl, macOS) there is no ``malloc_trim`` and this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable


def _find_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else ctypes.CDLL(None)
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_TRIM = _find_trim()


def release_memory() -> bool:
    """Return free heap pages to the OS; True if any were (False without ``malloc_trim``)."""
    return bool(_TRIM(0)) if _TRIM is not None else False
