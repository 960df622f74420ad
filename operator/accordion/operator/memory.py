"""Keep the operator's resident memory close to what it uses (glibc malloc tuning).

A pass of the control loop at a thousand services allocates and frees tens of megabytes (the
planner's models, manifests, parsed objects). With glibc, memory freed by Python stays in the
process (per-thread malloc arenas: the API calls run in worker threads) unless it is handed
back. `limit_arenas` caps the number of arenas (what `MALLOC_ARENA_MAX` does) and `trim`
returns free heap memory to the system after a pass (`malloc_trim`). Both are no-ops where the
C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_ARENA_MAX = -8
"""mallopt parameter number of M_ARENA_MAX in glibc's malloc.h."""


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None


_LIBC = _libc()


def limit_arenas(arenas: int = 2) -> bool:
    """Cap glibc's malloc arenas (call early, before threads start). True if applied."""
    if _LIBC is None:
        return False
    return bool(_LIBC.mallopt(M_ARENA_MAX, arenas))


def trim() -> bool:
    """Hand free heap memory back to the system. True if some was released."""
    if _LIBC is None:
        return False
    return bool(_LIBC.malloc_trim(0))
