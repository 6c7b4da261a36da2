"""hostmem.keep_scratch_resident: after it, a scratch-sized block comes from glibc's heap (kept
mapped and reused from call to call) instead of a mapping of its own that ``free`` unmaps; checked
against /proc/self/maps in a fresh process each, so this process's own allocations do not decide
the outcome. (Counting page faults per call was not stable on this VM: 0 to 729 with the
thresholds, 2,576 to 4,456 without, as the kernel reclaims idle pages.)"""

import os
import subprocess
import sys

import pytest

from puts_jax import hostmem

# Where glibc puts a 17 MB block (the benchmark Q-network's scratch at B = 8192): in the heap,
# reused from call to call, or in a fresh mapping of its own that ``free`` unmaps (so the next
# call faults every page in again: 4,456 minor faults a call measured for that Q-network).
SCRIPT = r"""
import ctypes, ctypes.util, sys
from puts_jax import hostmem
if sys.argv[1] == "keep":
    assert hostmem.keep_scratch_resident()
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
ptr = libc.malloc(17 << 20)
heap = [line.split()[0].split("-") for line in open("/proc/self/maps") if "[heap]" in line]
print(int(any(int(lo, 16) <= ptr < int(hi, 16) for lo, hi in heap)))
libc.free(ptr)
"""


def _in_heap(mode: str) -> bool:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True,
                         env={k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")},
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip().splitlines()[-1] == "1"


def test_scratch_sized_blocks_come_from_the_heap_and_are_reused():
    if hostmem._glibc_mallopt() is None:
        pytest.skip("not glibc: keep_scratch_resident changes nothing here")
    assert not _in_heap("default")  # its own mapping, unmapped on free: faulted in every call
    assert _in_heap("keep")  # the heap: freed blocks stay mapped and are handed out again


def test_the_environment_and_bad_sizes(monkeypatch):
    monkeypatch.setattr(hostmem, "_applied", None)
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert hostmem.keep_scratch_resident() is False  # the user's glibc setting wins
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
    monkeypatch.setattr(hostmem, "_glibc_mallopt", lambda: None)
    assert hostmem.keep_scratch_resident() is False  # not glibc: nothing to set
    for bad in (0, 1 << 19, (1 << 30) + 1):
        with pytest.raises(ValueError, match=r"^max_block_bytes: \d+ outside \[1 MiB, 1 GiB\]"):
            hostmem.keep_scratch_resident(bad)
