"""Returning freed heap memory to the OS (serving.md "Result retention").

The embedded process frees most of what a request allocates (uploads, tiles, results, encoder buffers),
but glibc malloc keeps freed chunks in its arenas (one per thread that allocated, up to 8 per core), so
the RSS of a long-running server creeps up although the live heap stays flat. `trim()` calls glibc's
`malloc_trim(0)`, which hands the free pages of every arena back to the kernel; the in-process queue's
sweep timer calls it (`RSD_HEAP_TRIM=false` turns that off). A no-op where libc is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform
from collections.abc import Callable
from functools import cache

log = logging.getLogger(__name__)


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None (musl, macOS, Windows: nothing to call)."""
    if platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        function = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_size_t]
    function.restype = ctypes.c_int
    return function  # type: ignore[no-any-return]


def trim() -> bool:
    """Release the free memory of malloc's arenas to the OS; True when glibc released some."""
    function = _malloc_trim()
    if function is None:
        return False
    try:
        return bool(function(0))
    except OSError as exc:  # never fail the caller (a timer) over an optimisation
        log.warning("malloc_trim failed: %s", exc)
        return False
