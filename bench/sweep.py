"""Sweep suite: the Pareto sweep over L = 101 lambdas with the estimators (IPS, SNIPS, DM, DR).

Variants, on the same logged chunk:
  fused             ``engine.build_sweep``: Q once, then blocks of rows with every lambda at
                    once (``kernels.sweep_select``: a running argmax over actions, lambdas in
                    the vector lanes) and the estimator sums on [rows, L] arrays (one call).
  fused_exp         ``bench.fast.fast_sweep``: the same contract, elementwise scalarization and
                    one lambda a step (a candidate for the engine).
  fused_native      ``bench.fast.native_sweep``: the all-lambda greedy select as one native
                    XLA FFI pass over Q (lambdas in the vector lanes), sums on [B, L] arrays.
  materialized      the same with one chunk of all L lambdas (f32[L, B, A] temporaries): shows
                    what bounding the memory costs or saves (``temp_bytes``).
  loop_policy       L calls of the one-lambda program, re-running the Q-network every time.
  loop_reuse_q      Q computed once, then L jitted one-lambda estimator calls on it.
  numpy             Q in numpy once, then a Python loop over lambdas (vectorized over rows).
Target (issue 3, 2-core CPU): L = 101, B = 8192: fused >= 15x loop_policy and >= 2x numpy,
memory bounded.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bench import baselines, fast, harness, native, roofline, variants, workload
from bench.report import Report

BATCHES = (1024, 8192)


def _stat_array(stats: Any) -> np.ndarray:
    """sum_wr, sum_w2r2, sum_dr, sum_dr2 (f64[L, 4, J]) of an EstimatorStats with an L axis."""
    return np.stack([np.asarray(stats.sum_wr, np.float64), np.asarray(stats.sum_w2r2, np.float64),
                     np.asarray(stats.sum_dr, np.float64), np.asarray(stats.sum_dr2, np.float64)],
                    axis=1)


def _maxdiff(ref: np.ndarray, other: np.ndarray) -> float:
    """Largest relative difference of the estimator sums."""
    return float(np.max(np.abs(ref - other) / np.maximum(np.abs(ref), 1.0)))


def run_case(rep: Report, s: workload.Shapes, B: int, ctx: dict[str, Any], quick: bool,
             roof: roofline.Roofline) -> None:
    arr = workload.logged_arrays(s, B)
    logged = jax.device_put(variants.to_logged_batch(arr))
    params, lams, lams_np = ctx["params"], ctx["lams"], ctx["lams_np"]
    lam_rows = [lams[i:i + 1] for i in range(lams.shape[0])]
    lam_vecs = [lams[i] for i in range(lams.shape[0])]
    comp = {"fused": harness.aot_compile(ctx["fused"], params, lams, logged),
            **({"fused_native": harness.aot_compile(ctx["fused_native"], params, lams, logged)}
               if ctx.get("fused_native") is not None else {}),
            "fused_exp": harness.aot_compile(ctx["fused_exp"], params, lams, logged),
            "materialized": harness.aot_compile(ctx["materialized"], params, lams, logged),
            "loop_policy": harness.aot_compile(ctx["fused"], params, lam_rows[0], logged)}
    q_c = harness.aot_compile(ctx["q"], params, logged.context)
    st_c = harness.aot_compile(ctx["stats"], q_c.fn(params, logged.context), lam_vecs[0], logged)
    one = comp["loop_policy"].fn

    def loop_reuse_q():
        q = q_c.fn(params, logged.context)
        return [st_c.fn(q, lam, logged) for lam in lam_vecs]

    def numpy_sweep():
        q = baselines.numpy_q(ctx["np_params"], arr["context"])
        return variants.numpy_sweep(q, lams_np, arr)

    calls = {"fused": lambda: comp["fused"].fn(params, lams, logged),
             "fused_exp": lambda: comp["fused_exp"].fn(params, lams, logged),
             "materialized": lambda: comp["materialized"].fn(params, lams, logged),
             "loop_policy": lambda: [one(params, lam, logged) for lam in lam_rows],
             "loop_reuse_q": loop_reuse_q, "numpy": numpy_sweep}
    if "fused_native" in comp:
        calls["fused_native"] = lambda: comp["fused_native"].fn(params, lams, logged)
    ref = _stat_array(harness.block(calls["fused"]()))
    diffs = {"fused_exp": _maxdiff(ref, _stat_array(calls["fused_exp"]())),
             **({"fused_native": _maxdiff(ref, _stat_array(calls["fused_native"]()))}
                if "fused_native" in calls else {}),
             "materialized": _maxdiff(ref, _stat_array(calls["materialized"]())),
             "loop_policy": _maxdiff(ref, np.concatenate(
                 [_stat_array(x) for x in calls["loop_policy"]()])),
             "loop_reuse_q": _maxdiff(ref, np.stack(
                 [_stat_array(jax.tree.map(lambda a: a[None], x))[0] for x in loop_reuse_q()])),
             "numpy": _maxdiff(ref, numpy_sweep()[:, :4])}
    rounds = 2 if quick else 5
    per_call = max(harness.probe(f, n=1) for f in calls.values())
    samples = harness.interleave(calls, rounds=rounds, warmup=1,
                                 reps=harness.reps_for(per_call, 0.5 if quick else 2.0, lo=1))
    cost = roofline.sweep_cost(B, s.L, s.D, s.hidden, s.A, s.J, s.head, s.n_components)
    med = {}
    for name, xs in samples.items():
        summ = harness.Summary.of(xs)
        med[name] = summ.median
        c = comp.get(name)
        row = rep.add(f"L={s.L} B={B}", name, summ, B=B, L=s.L, per_s=B * s.L / summ.median,
                      compile_s=None if c is None else round(c.compile_s, 3),
                      maxdiff=diffs.get(name), temp_bytes=None if c is None else c.temp_bytes)
        if name in ("fused", "fused_exp", "fused_native", "materialized"):
            row.update(roof.describe(summ.median, cost))
    big = B == 8192
    rep.ratio(f"L={s.L} B={B} fused vs loop_policy (x faster)",
              med["loop_policy"] / med["fused"], 15.0 if big else None)
    rep.ratio(f"L={s.L} B={B} fused vs numpy (x faster)", med["numpy"] / med["fused"],
              2.0 if big else None)
    for exp in ("fused_exp", "fused_native"):
        if exp in med:
            rep.ratio(f"L={s.L} B={B} {exp} vs loop_policy (x faster)",
                      med["loop_policy"] / med[exp], 15.0 if big else None)
            rep.ratio(f"L={s.L} B={B} {exp} vs numpy (x faster)", med["numpy"] / med[exp],
                      2.0 if big else None)
    rep.ratio(f"L={s.L} B={B} fused vs loop_reuse_q (x faster)", med["loop_reuse_q"] / med["fused"])
    rep.ratio(f"L={s.L} B={B} fused vs materialized (x faster)", med["materialized"] / med["fused"])
    tf, tm = comp["fused"].temp_bytes, comp["materialized"].temp_bytes
    if tf and tm:
        rep.ratio(f"L={s.L} B={B} fused temp memory / materialized", tf / tm, 1.0,
                  higher_is_better=False)
    elif tm:
        rep.note(f"B={B}: the engine's sweep is a Python wrapper (no .lower), so its scratch "
                 f"memory is not reported; materialized needs {tm / 2**20:.1f} MiB")


def run(quick: bool = False, batches: tuple[int, ...] = BATCHES) -> Report:
    s = workload.Shapes()
    rep = Report("sweep", quick, s.as_dict())
    roof, info = roofline.measure(quick)
    rep.extra["roofline"] = info
    model = workload.make_model(s)
    graphdef, params = variants.split(model)
    fused, source = variants.fused_sweep(graphdef, lambda_chunk=8)
    rep.meta["fused_source"] = source
    if not native.available():
        rep.note(f"native sweep experiment skipped: {native.error() or 'not on CPU / no g++'}")
    from puts_jax.scalarization import lambda_grid

    lams_np = lambda_grid(s.J, s.L)
    ctx = {"params": params, "fused": fused, "lams_np": lams_np, "lams": jnp.asarray(lams_np),
           "materialized": variants.local_sweep(graphdef, lambda_chunk=s.L),
           "fused_exp": fast.fast_sweep(graphdef, lambda_chunk=1),
           "fused_native": fast.native_sweep(graphdef) if native.available() else None,
           "np_params": workload.numpy_params(model)}
    ctx["q"], ctx["stats"] = variants.per_lambda_reuse_q(graphdef)
    for B in batches:
        t0 = time.perf_counter()
        run_case(rep, s, B, ctx, quick, roof)
        print(f"  sweep B={B} done in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    return rep
