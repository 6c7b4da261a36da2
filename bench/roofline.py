"""The machine's roofline, measured in the same run, and the counted cost of each kernel.

A kernel's roofline time is ``max(bytes / bandwidth, flops / matmul_rate)``: the least time the
memory system or the matmul units need for the bytes it must move and the FLOPs it must do. Its
fraction of roofline is that bound divided by the measured time (1.0 = at the roofline).

Bytes and FLOPs are counted by hand from the shapes (``*_cost`` below), never taken from XLA:
bytes are the compulsory traffic (every input read once, every output written once, parameters
once per call), FLOPs count multiply-adds as 2 and elementwise ops as 1; selection (argmax,
top-k) counts no FLOPs, only the bytes it reads. XLA's own ``cost_analysis`` is recorded next to
ours by the suites as a cross-check.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any


@dataclasses.dataclass(frozen=True)
class Cost:
    """Compulsory bytes moved and FLOPs done by one call of a kernel."""

    bytes: float
    flops: float

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(self.bytes + other.bytes, self.flops + other.flops)

    def scale(self, f: float) -> "Cost":
        return Cost(self.bytes * f, self.flops * f)


@dataclasses.dataclass(frozen=True)
class Roofline:
    """Peak memory bandwidth (bytes/s) and f32 matmul rate (FLOP/s) of one core or device."""

    bandwidth: float
    matmul_rate: float

    def bound_s(self, cost: Cost) -> float:
        """Least time for ``cost``: max(bytes / bandwidth, flops / matmul rate)."""
        return max(cost.bytes / self.bandwidth, cost.flops / self.matmul_rate)

    def bound_by(self, cost: Cost) -> str:
        mem = cost.bytes / self.bandwidth >= cost.flops / self.matmul_rate
        return "memory" if mem else "compute"

    def fraction(self, measured_s: float, cost: Cost) -> float:
        """bound / measured: 1.0 means the kernel runs at the roofline."""
        return self.bound_s(cost) / measured_s if measured_s > 0 else float("nan")

    def describe(self, measured_s: float, cost: Cost) -> dict[str, Any]:
        return {"bytes": cost.bytes, "flops": cost.flops,
                "roofline_s": self.bound_s(cost), "bound_by": self.bound_by(cost),
                "fraction_of_roofline": self.fraction(measured_s, cost)}


# --------------------------------------------------------------------------------------------
# Measurement (jax; one core or device, whatever the process is allowed)
# --------------------------------------------------------------------------------------------

def _best(fn, arg, reps: int) -> float:
    import jax

    jax.block_until_ready(fn(arg))
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(arg))
        best = min(best, time.perf_counter() - t0)
    return best


def measure_bandwidth(n_bytes: int = 128 << 20, reps: int = 10) -> dict[str, float]:
    """Streaming bandwidth (bytes/s): the best of a read-only sum and a donated in-place
    scale-and-add (read + write, no page faults on the output; FACTS: fresh outputs fault)."""
    import jax
    import jax.numpy as jnp

    n = n_bytes // 4
    x = jnp.arange(n, dtype=jnp.float32)
    read = jax.jit(lambda a: jnp.sum(a))
    t_read = _best(read, x, reps)
    triad = jax.jit(lambda a: a * 1.0001 + 1.0, donate_argnums=0)
    y = jnp.arange(n, dtype=jnp.float32)
    best = float("inf")
    for _ in range(reps + 1):
        t0 = time.perf_counter()
        y = triad(y)
        y.block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return {"read_Bps": n_bytes / t_read, "copy_Bps": 2 * n_bytes / best,
            "bandwidth_Bps": max(n_bytes / t_read, 2 * n_bytes / best)}


def measure_matmul(size: int | None = None, reps: int = 5) -> dict[str, float]:
    """f32 matmul rate (FLOP/s) of a square ``size`` matmul at the default precision (what the
    kernels use); 1024 on CPU, 8192 on an accelerator."""
    import jax
    import jax.numpy as jnp

    if size is None:
        size = 1024 if jax.devices()[0].platform == "cpu" else 8192
    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
    mm = jax.jit(lambda m: m @ m)
    t = _best(mm, a, reps)
    return {"matmul_size": size, "matmul_flops_per_s": 2.0 * size**3 / t}


def last_level_cache_bytes() -> int | None:
    """The CPU's largest cache in bytes (Linux sysfs, else ``os.sysconf``), or None."""
    import glob
    import os

    sizes = []
    for f in glob.glob("/sys/devices/system/cpu/cpu0/cache/index*/size"):
        try:
            txt = open(f).read().strip().upper()
            mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(txt[-1:], 1)
            sizes.append(int(txt.rstrip("KMG")) * mult)
        except (OSError, ValueError):
            continue
    if not sizes and hasattr(os, "sysconf"):
        try:
            sizes.append(int(os.sysconf("SC_LEVEL3_CACHE_SIZE")))
        except (ValueError, OSError):
            pass
    return max(sizes) if sizes and max(sizes) > 0 else None


def stream_bytes() -> int:
    """Array size for the bandwidth measurement: at least 4x the last-level cache (the STREAM
    benchmark's rule, so the memory system, not a cache, is measured), at least 256 MiB, at most
    1/8 of physical memory; 1 GiB on an accelerator. The 2-core CPU's L3 reports 480 MiB: a
    64 MiB array measured 42-52 GB/s there (cache), 128 MiB and more 20-24 GB/s (copy)."""
    import os

    import jax

    if jax.devices()[0].platform != "cpu":
        return 1 << 30
    n = max(256 << 20, 4 * (last_level_cache_bytes() or 0))
    try:
        n = min(n, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 8)
    except (ValueError, OSError, AttributeError):
        pass
    return max(64 << 20, n) // 4096 * 4096


def measure(quick: bool = False) -> tuple[Roofline, dict[str, float]]:
    """Measure both peaks now (same process, same moment as the kernels) and return them."""
    n = stream_bytes()
    bw = measure_bandwidth(n_bytes=n, reps=4 if quick else 10)
    mm = measure_matmul(reps=8 if quick else 20)  # best of many: a peak, even on a busy machine
    info = {**bw, **mm, "stream_bytes": n, "last_level_cache_bytes": last_level_cache_bytes()}
    return Roofline(bw["bandwidth_Bps"], mm["matmul_flops_per_s"]), info


# --------------------------------------------------------------------------------------------
# Counted costs
# --------------------------------------------------------------------------------------------

def mlp_cost(rows: int, widths: list[int]) -> Cost:
    """Dense layers widths[0] -> widths[1] -> ...: 2 FLOPs a multiply-add plus bias and ReLU;
    bytes are the weights (read once) only (activations stay in cache or count elsewhere)."""
    flops = 0.0
    params = 0
    for a, b in zip(widths[:-1], widths[1:]):
        flops += rows * (2.0 * a * b + 2.0 * b)
        params += a * b + b
    return Cost(bytes=4.0 * params, flops=flops)


def qnet_cost(B: int, D: int, hidden: tuple[int, ...], A: int, J: int, head: str = "mixture",
              n_components: int = 8) -> Cost:
    """QNetwork forward for B contexts: reads context f32[B, D], writes Q f32[B, A, J]."""
    H = hidden[-1]
    c = mlp_cost(B, [D, *hidden])
    if head == "mixture":
        R = n_components
        c = c + mlp_cost(B, [H, R])
        # softmax (~4 ops a logit), link of V (R*A*J, once), mixture einsum 2*R*A*J per row
        c = c + Cost(bytes=4.0 * R * A * J, flops=B * (4.0 * R + 2.0 * R * A * J) + 4.0 * R * A * J)
    else:
        c = c + mlp_cost(B, [H, A * J]) + Cost(0.0, 4.0 * B * A * J)
    return c + Cost(bytes=4.0 * B * D, flops=0.0)


def serve_cost(B: int, N: int, K: int, D: int, hidden: tuple[int, ...], A: int, J: int,
               top_k: int, head: str = "mixture", n_components: int = 8) -> Cost:
    """The fused serve pass: Q (from HBM/DRAM: context, params) -> scalarize (2*A*J) -> argmax ->
    gather W[a*] -> reweight preds (2*N*K a row, mask and finiteness N) -> top-k (no FLOPs).
    Bytes: context, preds f32[B, N, K], mask bool[B, N], valid, W; outputs action i32[B],
    topk index+score 8*k a row, n_nonfinite i32[B], q_fallback bool[B]."""
    q = qnet_cost(B, D, hidden, A, J, head, n_components)
    select = Cost(bytes=4.0 * A * K, flops=B * 2.0 * A * J)
    reweight = Cost(bytes=B * (4.0 * N * K + N + 1), flops=B * (2.0 * N * K + 2.0 * N))
    outputs = Cost(bytes=B * (4.0 + 8.0 * top_k + 4.0 + 1.0), flops=0.0)
    return q + select + reweight + outputs


def sweep_cost(B: int, L: int, D: int, hidden: tuple[int, ...], A: int, J: int,
               head: str = "mixture", n_components: int = 8) -> Cost:
    """The fused sweep: Q once, then per lambda scalarize (2*A*J a row), argmax, and the
    estimator terms (about 8*J FLOPs a row: weight, IPS/SNIPS/DR sums and squares).
    Bytes: context, action, propensity, rewards f32[B, J], consistent bool[B, A], valid; the
    per-lambda statistics written are negligible."""
    q = qnet_cost(B, D, hidden, A, J, head, n_components)
    logged = Cost(bytes=B * (4.0 + 4.0 + 4.0 * J + A + 1), flops=0.0)
    per_lam = Cost(bytes=0.0, flops=L * B * (2.0 * A * J + 8.0 * J + 2.0 * A))
    return q + logged + per_lam
