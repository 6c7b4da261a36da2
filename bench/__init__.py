"""Benchmarks of puts_jax (issue 3): ``python -m bench <serve|sweep|latency|train|all> [--quick]``.

Benchmarks are not tests (STYLE 14): they time compilation apart from the steady state, report
medians, p50/p99 and ratios measured side by side in one run, record the device and versions,
and write ``bench/results/<device-kind>/<suite>.json``. Nothing here imports grain (the GPU
machines lack it) and ``puts_jax`` never imports ``bench``.
"""

from __future__ import annotations

import os

# One XLA:CPU thread per process: every number is per core, and the two-core numbers come from
# one single-threaded process per core (FACTS: two threads or two virtual devices in one process
# do not scale and worsen p99).
SINGLE_THREAD_XLA = "--xla_cpu_multi_thread_eigen=false"


def single_thread_env() -> None:
    """Set single-threaded XLA:CPU, OpenBLAS and OpenMP before jax/numpy/torch are imported
    (values already in the environment win), and synchronous CPU dispatch: a program runs on
    the calling thread instead of being handed to a worker thread that the caller then waits
    for (``jax_cpu_enable_async_dispatch``; measured +20-40 us per call at B = 1 on the 2-core
    CPU, nothing at B = 8192, where every timed call blocks anyway). ``BENCH_ASYNC_DISPATCH=1``
    keeps JAX's default. Also ``hostmem.keep_scratch_resident()``, as the CLI and ``Scorer`` do:
    without it a program's scratch could page-fault on every call, depending on what the
    process allocated before (the Q-network stage took 12 or 18 ms from one run to the next)."""
    if "--xla_cpu_multi_thread_eigen" not in os.environ.get("XLA_FLAGS", ""):
        flags = os.environ.get("XLA_FLAGS", "")
        os.environ["XLA_FLAGS"] = (flags + " " + SINGLE_THREAD_XLA).strip()
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    from puts_jax import hostmem  # as the CLI and Scorer: scratch reused, not faulted per call

    hostmem.keep_scratch_resident()
    if os.environ.get("BENCH_ASYNC_DISPATCH", "0") != "1":
        import jax  # importing does not start the CPU backend; the flag is read when it starts

        jax.config.update("jax_cpu_enable_async_dispatch", False)
