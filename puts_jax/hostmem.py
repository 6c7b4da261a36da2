"""Keep XLA:CPU's scratch memory resident between calls of a compiled program.

XLA:CPU allocates a program's scratch (the Q-network's activations, the serve pass's Q and
scores) with ``malloc`` on every call and frees it after. glibc serves blocks above its mmap
threshold (128 KiB at start, raised only by some patterns of frees) with a fresh ``mmap`` and
unmaps them on ``free``, so every call then pays one page fault per 4 KiB page it touches.
Measured on the 2-core CPU (one core, B = 8192, the benchmark's Q-network, ~17 MB of scratch):
4,128 minor faults a call and 18-20 ms a call, against 0 faults and 12.2 ms with the
thresholds below; whether a process is in the slow state depends on what it allocated
before, so the same pass could take either time.

``keep_scratch_resident`` raises glibc's mmap threshold (blocks up to ``max_block_bytes`` come
from the heap and are reused) and its trim threshold (the heap keeps up to ``4 *
max_block_bytes`` of freed memory instead of returning it): the cost is that much freed memory
held by the process. The CLI, the ``Scorer`` and the benchmarks call it; library users who
serve from their own loop can too. It changes nothing when the environment already sets
``MALLOC_MMAP_THRESHOLD_`` or ``MALLOC_TRIM_THRESHOLD_`` (the user's choice wins), and off glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

SCRATCH_BYTES = 256 << 20  # blocks up to this size are reused, not unmapped (bytes)
_M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
_M_MMAP_THRESHOLD = -3
_applied: int | None = None  # the max_block_bytes last applied in this process


def keep_scratch_resident(max_block_bytes: int = SCRATCH_BYTES) -> bool:
    """Make glibc keep freed blocks up to ``max_block_bytes`` (bytes) for reuse; see the module
    docstring for why and what it costs.

    Returns:
      True when the thresholds are set (now or by an earlier call with the same size); False
      when the environment sets glibc's own ``MALLOC_*_THRESHOLD_`` variables, or the C library
      is not glibc (nothing changed).
    Raises:
      ValueError: ``max_block_bytes`` outside [1 MiB, 1 GiB].
    """
    global _applied
    if not (1 << 20) <= int(max_block_bytes) <= (1 << 30):
        raise ValueError(f"max_block_bytes: {max_block_bytes} outside [1 MiB, 1 GiB]")
    if _applied == int(max_block_bytes):
        return True
    if any(v in os.environ for v in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")):
        return False
    mallopt = _glibc_mallopt()
    if mallopt is None:
        return False
    ok = mallopt(_M_MMAP_THRESHOLD, int(max_block_bytes)) == 1
    ok = ok and mallopt(_M_TRIM_THRESHOLD, min(4 * int(max_block_bytes), 2**31 - 1)) == 1
    if ok:
        _applied = int(max_block_bytes)
    return ok


def _glibc_mallopt():
    """glibc's ``int mallopt(int, int)``, or None off glibc."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        if not hasattr(libc, "gnu_get_libc_version"):
            return None
        fn = libc.mallopt
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return fn
