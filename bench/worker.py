"""A single-threaded serve worker pinned to one core (the serve suite starts one per core).

Protocol on stdin/stdout: build and compile, print ``ready``; wait for a ``go`` line; call the
fused serve pass back to back for ``--seconds``; print one JSON line with calls, elapsed seconds
and requests/s. Run as ``python -m bench.worker --core 0 --B 8192 --seconds 5``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from bench import single_thread_env


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--core", type=int, required=True)
    ap.add_argument("--B", type=int, default=8192)
    ap.add_argument("--seconds", type=float, default=5.0)
    a = ap.parse_args(argv)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {a.core})
    single_thread_env()

    import jax
    import jax.numpy as jnp

    from bench import harness, variants, workload

    s = workload.Shapes()
    graphdef, params = variants.split(workload.make_model(s))
    serve, _ = variants.fused_serve(graphdef, workload.action_weights(s), s.top_k)
    batch = jax.device_put(variants.to_request_batch(workload.request_arrays(s, a.B, seed=a.core)))
    lam = jnp.asarray([0.5, 0.5], jnp.float32)
    fn = harness.aot_compile(serve, params, lam, batch).fn
    harness.block(fn(params, lam, batch))
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return
    calls, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < a.seconds:
        harness.block(fn(params, lam, batch))
        calls += 1
    dt = time.perf_counter() - t0
    print(json.dumps({"core": a.core, "calls": calls, "elapsed_s": dt,
                      "requests_per_s": calls * a.B / dt}), flush=True)


if __name__ == "__main__":
    main()
