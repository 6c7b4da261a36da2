"""Timing harness: compile apart from steady state, warm-up, blocking, interleaved variants.

Benchmarks are not tests (STYLE 14): nothing here asserts a time. The rules every suite follows:

* Compilation is measured apart, through ``jitted.lower(*args).compile()``; the steady state times
  the compiled executable only, so compile time never leaks into a p50 or p99.
* Every timed call ends with ``jax.block_until_ready`` on its outputs (JAX dispatch is async).
* Competing variants run interleaved in one process (round-robin, rotating the order each round),
  so machine noise (other tenants, frequency changes) hits them alike and their ratios hold.
* Samples are per call; summaries are the median, p50 and p99 (linear interpolation, numpy's
  default), mean and min.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any


# --------------------------------------------------------------------------------------------
# Percentile arithmetic (pure Python, so the tests check it without jax)
# --------------------------------------------------------------------------------------------

def percentile(samples: Sequence[float], q: float) -> float:
    """The q-th percentile (q in [0, 100]) with linear interpolation between closest ranks.

    Matches ``numpy.percentile(samples, q)`` (method "linear"): rank h = (n - 1) * q / 100,
    value = x[floor h] + (h - floor h) * (x[floor h + 1] - x[floor h]).
    """
    if not samples:
        raise ValueError("percentile: no samples")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile: q must be in [0, 100], got {q}")
    xs = sorted(float(s) for s in samples)
    h = (len(xs) - 1) * q / 100.0
    lo = math.floor(h)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (h - lo) * (xs[hi] - xs[lo])


@dataclasses.dataclass(frozen=True)
class Summary:
    """Per-call wall times of one variant, in seconds."""

    n: int
    median: float
    p50: float
    p99: float
    mean: float
    min: float

    @classmethod
    def of(cls, samples: Sequence[float]) -> "Summary":
        med = percentile(samples, 50.0)
        return cls(n=len(samples), median=med, p50=med, p99=percentile(samples, 99.0),
                   mean=sum(samples) / len(samples), min=min(samples))

    def as_dict(self, scale: float = 1e6, unit: str = "us") -> dict[str, float]:
        """Rounded fields in ``unit`` (microseconds by default) plus the sample count."""
        d = {f"{k}_{unit}": round(getattr(self, k) * scale, 3)
             for k in ("median", "p50", "p99", "mean", "min")}
        d["n"] = self.n
        return d


def ratio(numer: float, denom: float) -> float:
    """numer / denom, or nan when the denominator is zero or missing."""
    if not denom or denom != denom:
        return float("nan")
    return numer / denom


# --------------------------------------------------------------------------------------------
# Compilation and steady-state timing
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Compiled:
    """An ahead-of-time compiled executable and what it cost to get it."""

    fn: Callable[..., Any]
    lower_s: float
    compile_s: float
    temp_bytes: int | None  # XLA's scratch allocation (memory_analysis), where reported
    cost: dict[str, float] | None  # XLA's own flop / byte estimate, where reported


def aot_compile(jitted: Any, *args: Any, **kwargs: Any) -> Compiled:
    """``jitted.lower(*args).compile()`` with lowering and compilation timed apart.

    A callable without ``.lower`` (a Python wrapper around a jit) cannot be compiled ahead of
    time: its first call is timed as ``compile_s`` (trace + compile + one run) and the wrapper is
    returned as is."""
    if not hasattr(jitted, "lower"):
        t0 = time.perf_counter()
        block(jitted(*args, **kwargs))
        return Compiled(fn=jitted, lower_s=0.0, compile_s=time.perf_counter() - t0,
                        temp_bytes=None, cost=None)
    t0 = time.perf_counter()
    lowered = jitted.lower(*args, **kwargs)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    temp = None
    try:
        mem = compiled.memory_analysis()
        temp = int(mem.temp_size_in_bytes) if mem is not None else None
    except Exception:  # noqa: BLE001 - not every backend reports it
        pass
    cost = None
    try:
        c = compiled.cost_analysis()
        if isinstance(c, list):
            c = c[0] if c else None
        if c:
            cost = {k: float(c[k]) for k in ("flops", "bytes accessed") if k in c}
    except Exception:  # noqa: BLE001
        pass
    return Compiled(fn=compiled, lower_s=t1 - t0, compile_s=t2 - t1, temp_bytes=temp, cost=cost)


def block(out: Any) -> Any:
    """Wait for every jax array in ``out`` (a pytree) to be ready; numpy and torch leaves (eager,
    already computed) pass through."""
    import jax

    for leaf in jax.tree.leaves(out):
        if isinstance(leaf, jax.Array):
            leaf.block_until_ready()
    return out


def time_calls(fn: Callable[[], Any], reps: int, sync: Callable[[Any], Any] = block) -> list[float]:
    """Per-call wall times (seconds) of ``reps`` calls of ``fn()``, each synchronized."""
    out = []
    clock = time.perf_counter
    for _ in range(reps):
        t0 = clock()
        sync(fn())
        out.append(clock() - t0)
    return out


def interleave(variants: dict[str, Callable[[], Any]], *, rounds: int, reps: int,
               warmup: int = 2, sync: Callable[[Any], Any] = block,
               budget_s: float | None = None) -> dict[str, list[float]]:
    """Time competing variants round-robin in one process.

    Each variant is warmed up ``warmup`` times, then every round runs each variant ``reps`` times
    back to back, the order rotated each round so none always follows the same neighbour. Returns
    per-call samples (seconds) per variant. ``budget_s`` stops after the round that exhausts it
    (at least one round always runs). Python's cyclic garbage collector is run between rounds
    and disabled inside them (as ``timeit`` does, and as a serving loop with ``gc.freeze`` would
    be), so a collection pause is not charged to whichever variant happened to trigger it.
    """
    import gc

    names = list(variants)
    for name in names:
        for _ in range(warmup):
            sync(variants[name]())
    samples: dict[str, list[float]] = {n: [] for n in names}
    start = time.perf_counter()
    was_enabled = gc.isenabled()
    try:
        for r in range(rounds):
            k = r % len(names)
            gc.collect()
            gc.disable()
            for name in names[k:] + names[:k]:
                samples[name].extend(time_calls(variants[name], reps, sync))
            if was_enabled:
                gc.enable()
            if budget_s is not None and time.perf_counter() - start > budget_s:
                break
    finally:
        if was_enabled:
            gc.enable()
    return samples


def reps_for(seconds_per_call: float, target_s: float, lo: int = 3, hi: int = 2000) -> int:
    """How many calls fit in ``target_s`` at ``seconds_per_call``, clamped to [lo, hi]."""
    if seconds_per_call <= 0:
        return hi
    return max(lo, min(hi, int(target_s / seconds_per_call)))


def probe(fn: Callable[[], Any], sync: Callable[[Any], Any] = block, n: int = 3) -> float:
    """A rough per-call time (min of n after one warm-up call) to size repetitions."""
    sync(fn())
    return min(time_calls(fn, n, sync))


# --------------------------------------------------------------------------------------------
# Device, machine and versions
# --------------------------------------------------------------------------------------------

def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(mod: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(mod)
    except Exception:  # noqa: BLE001 - not installed
        return None


def _git_commit() -> str | None:
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here,
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except Exception:  # noqa: BLE001
        return None


def slug(text: str) -> str:
    """Lower-case, alphanumerics and single dashes: 'NVIDIA H200' -> 'nvidia-h200'."""
    out, dash = [], False
    for ch in text.lower():
        if ch.isalnum():
            out.append(ch)
            dash = False
        elif not dash and out:
            out.append("-")
            dash = True
    return "".join(out).strip("-") or "unknown"


def device_kind() -> str:
    """Results folder name: the accelerator kind ('nvidia-h200'), or 'cpu-<N>core' on CPU."""
    import jax

    dev = jax.devices()[0]
    if dev.platform == "cpu":
        n = len(cores())
        return f"cpu-{n}core"
    return slug(dev.device_kind)


def device_info() -> dict[str, Any]:
    """Device, machine, thread settings and package versions, for every results file."""
    import jax

    devs = jax.devices()
    return {
        "device_kind": device_kind(),
        "platform": devs[0].platform,
        "devices": [str(d) for d in devs],
        "device_name": devs[0].device_kind,
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "load_avg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": sys.version.split()[0],
        "versions": {m: _version(m) for m in ("jax", "jaxlib", "flax", "optax", "numpy", "torch",
                                               "puts_jax")},
        "env": {k: os.environ.get(k) for k in ("XLA_FLAGS", "OPENBLAS_NUM_THREADS",
                                               "OMP_NUM_THREADS", "JAX_PLATFORMS",
                                               "BENCH_ASYNC_DISPATCH")},
        "cpu_async_dispatch": bool(jax.config.read("jax_cpu_enable_async_dispatch")),
        "git_commit": _git_commit(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def to_json(obj: Any) -> str:
    """JSON with nan/inf written as null (strict JSON readers reject NaN)."""

    def clean(x: Any) -> Any:
        if isinstance(x, float):
            return x if math.isfinite(x) else None
        if isinstance(x, dict):
            return {str(k): clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        if dataclasses.is_dataclass(x) and not isinstance(x, type):
            return clean(dataclasses.asdict(x))
        if hasattr(x, "item") and callable(x.item):  # numpy scalars
            return clean(x.item())
        return x

    return json.dumps(clean(obj), indent=1, allow_nan=False)


_UNPINNED: set[int] | None = None  # this process's cores before pin_process first ran


def cores() -> set[int]:
    """The cores this process may use, as before any ``pin_process`` (the suites that pin
    themselves to one core still start one worker per core of this set)."""
    if _UNPINNED is not None:
        return set(_UNPINNED)
    if hasattr(os, "sched_getaffinity"):
        return set(os.sched_getaffinity(0))
    return set(range(os.cpu_count() or 1))


def pin_process(cores: set[int]) -> None:
    """Pin every thread of this process to ``cores`` (``os.sched_setaffinity(0, ...)`` pins only
    the calling thread on Linux; XLA's worker threads, started at import, kept both cores and
    ran next to the latency suite's agent on its core). New threads inherit the mask."""
    global _UNPINNED
    if _UNPINNED is None:
        _UNPINNED = set(os.sched_getaffinity(0))
    os.sched_setaffinity(0, cores)
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        return
    for tid in tids:
        try:
            os.sched_setaffinity(tid, cores)
        except OSError:  # a thread that ended meanwhile
            pass
