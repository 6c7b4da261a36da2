"""Where the native serve tail's time goes: compute against reading the ranker predictions.

Builds ``tail_profile.cc`` (the library's ``puts_jax/csrc/rerank.cc`` row kernels without XLA)
twice with the library's compiler flags, once plain and once with ``-DPUTS_JAX_PHASE_CYCLES``
(time stamp counter ticks per phase), runs both on this process's cores and returns what they
print: the tail with its predictions in DRAM (``cold_ms``), the same compute on rows that stay in
L2 (``hot_ms``), a plain read of the predictions (``read_ms``), and the ticks per row of each
phase. ``overlap_ms = hot + read - cold`` is how much of the compute hides under the reads; the
serve suite records it next to its stage breakdown (issue 3: the profile behind the serve
roofline miss).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from typing import Any

from puts_jax import native

_SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tail_profile.cc")
PHASES = ("score", "bound", "compress", "insert")


def _build(phase_cycles: bool) -> str:
    """Path of the compiled profiler (cached in the temp folder by source digest and flags)."""
    cxx = shutil.which(os.environ.get("CXX", "g++"))
    if cxx is None:
        raise RuntimeError("no C++ compiler (set CXX or install g++)")
    flags = [f for f in native.FLAGS if f not in ("-shared", "-fPIC")]
    if phase_cycles:
        flags.append("-DPUTS_JAX_PHASE_CYCLES")
    digest = hashlib.sha256()
    for path in (_SRC, native._SRC):
        with open(path, "rb") as f:
            digest.update(f.read())
    digest.update(" ".join([cxx, *flags]).encode())
    folder = os.path.join(tempfile.gettempdir(), f"puts_bench_tail_{os.getuid()}")
    os.makedirs(folder, mode=0o700, exist_ok=True)
    exe = os.path.join(folder, f"tail_profile_{digest.hexdigest()[:16]}")
    if not os.path.exists(exe):
        tmp = f"{exe}.{os.getpid()}.tmp"
        out = subprocess.run([cxx, *flags, _SRC, "-o", tmp], capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"building {_SRC} failed:\n{out.stderr[-2000:]}")
        os.replace(tmp, exe)
    return exe


def run(B: int = 8192, N: int = 500, K: int = 6, k: int = 25, reps: int = 7,
        evict_bytes: int | None = None) -> dict[str, Any]:
    """Profile the native tail at f32[B, N, K] predictions, top-k ``k``, ``reps`` repetitions
    (medians and minima in ms). ``evict_bytes`` (default 4x the predictions, at least 512 MiB) is
    written between timed passes so the cold pass and the read start from DRAM.

    Returns the profiler's JSON plus ``overlap_ms`` and ``phase_share`` (each phase's fraction of
    the hot run's ticks). Raises RuntimeError when there is no compiler, the build fails, or the
    profiler exits non-zero (an AVX-512-less CPU runs the scalar path: phases are then zero)."""
    pred_bytes = B * N * K * 4
    evict = evict_bytes if evict_bytes is not None else max(4 * pred_bytes, 512 << 20)
    args = [str(x) for x in (B, N, K, k, reps, evict)]
    out: dict[str, Any] = {}
    for phase_cycles in (False, True):
        proc = subprocess.run([_build(phase_cycles), *args], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"tail_profile exited {proc.returncode}: {proc.stderr.strip()}")
        doc = json.loads(proc.stdout)
        if phase_cycles:
            out["phase_ticks_per_row"] = doc["phase_ticks_per_row"]
            if doc["checksum"] != out["checksum"]:
                raise RuntimeError("tail_profile: the instrumented build's top-k differs from the "
                                   f"plain build's ({doc['checksum']} != {out['checksum']})")
        else:
            out.update(doc)
    out.pop("sink", None)
    out["overlap_ms"] = out["hot_ms"] + out["read_ms"] - out["cold_ms"]
    out["read_GBps"] = pred_bytes / (out["read_ms"] * 1e-3) / 1e9
    ticks = out["phase_ticks_per_row"]
    total = sum(ticks.values())
    out["phase_share"] = {p: (ticks[p] / total if total > 0 else 0.0) for p in PHASES}
    return out


def describe(p: dict[str, Any]) -> str:
    """One line for the suite's notes."""
    share = ", ".join(f"{name} {100 * v:.0f}%" for name, v in p["phase_share"].items())
    return (f"native tail profile (B={p['B']}, one core): {p['cold_ms']:.2f} ms from DRAM = "
            f"compute {p['hot_ms']:.2f} ms (rows in L2; {share}) + read {p['read_ms']:.2f} ms "
            f"(plain sum of the {p['bytes_read'] / 1e6:.0f} MB of predictions, "
            f"{p['read_GBps']:.1f} GB/s) - {p['overlap_ms']:.2f} ms overlapped")


if __name__ == "__main__":
    prof = run()
    print(json.dumps(prof, indent=1))
    print(describe(prof))
