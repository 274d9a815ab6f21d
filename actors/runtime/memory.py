"""Keep the heap small after a peak, and give what is freed back to the OS.

glibc keeps freed heap memory for reuse: after a 1,000-container list or 200 stats streams the
process would stay near its peak RSS. Two things bring it back (bench/run.py, the peak row):

* :func:`tune_allocator`, once at start-up before any thread: one malloc arena instead of one
  per thread (the GIL serialises allocation anyway; each thread's arena kept its own leftovers,
  about 10 MB after the peak), and fixed thresholds: a buffer under 4 MiB comes from the heap,
  and up to 8 MiB free at the heap's top stays mapped between requests. A fixed 128 KiB mmap
  threshold mapped every buffer of a big reply afresh, page by page: 5 ms of a 1,000-container
  list (each of its ~800 KiB copies faulted in 200 new pages), where a heap buffer is reused.
  What the heap keeps after a peak goes back at the next trim (below), so the fixed values
  cost the peak row nothing (bench/run.py). A variable the user set (``MALLOC_ARENA_MAX``,
  ``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``) wins.
* ``malloc_trim(0)`` returns the free pages; it costs about a millisecond, so the DockerGateway
  calls :func:`release_memory` at each reachability probe (every 30 s).

Elsewhere (musl, macOS) neither exists and both do nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable, Mapping

#: mallopt(3) parameters
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
#: what tune_allocator sets, and the environment variable that overrides each
TUNING = (
    (M_ARENA_MAX, 1, "MALLOC_ARENA_MAX"),
    (M_MMAP_THRESHOLD, 4 * 1024 * 1024, "MALLOC_MMAP_THRESHOLD_"),
    (M_TRIM_THRESHOLD, 8 * 1024 * 1024, "MALLOC_TRIM_THRESHOLD_"),
)


def _load_libc() -> ctypes.CDLL | None:
    path = ctypes.util.find_library("c")  # runs ldconfig: once, for every function below
    try:
        return ctypes.CDLL(path) if path else ctypes.CDLL(None)
    except OSError:
        return None


_LIBC = _load_libc()


def _libc_function(name: str, *argtypes: type) -> Callable[..., int] | None:
    try:
        function = getattr(_LIBC, name)
    except AttributeError:  # not glibc, or no libc found (_LIBC None)
        return None
    function.argtypes = list(argtypes)
    function.restype = ctypes.c_int
    return function  # type: ignore[no-any-return]


_TRIM = _libc_function("malloc_trim", ctypes.c_size_t)
_MALLOPT = _libc_function("mallopt", ctypes.c_int, ctypes.c_int)


def tune_allocator(environ: Mapping[str, str]) -> bool:
    """Set glibc's arena count and mmap threshold (see above); call before any thread starts.
    True if anything was set (False without ``mallopt``, or when the user set both)."""
    if _MALLOPT is None:
        return False
    applied = False
    for param, value, variable in TUNING:
        if variable not in environ:
            applied = bool(_MALLOPT(param, value)) or applied
    return applied


def release_memory() -> bool:
    """Return free heap pages to the OS; True if any were (False without ``malloc_trim``)."""
    return bool(_TRIM(0)) if _TRIM is not None else False
