"""The JAX programs the suites compare: the library's fused passes (``puts_jax.engine``), and
the slower ways to get the same answer (an unfused pipeline with host round trips, per-lambda
loops).

``puts_jax.engine`` is the product; when it is importable the suites time it. Until it lands (or
when its builders' signatures change) the suites fall back to ``local_serve`` / ``local_sweep``
below, the same composition of ``puts_jax.kernels`` and ``puts_jax.ope`` in one jit, and say so
in the results (``"fused_source"``).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from puts_jax import kernels, ope
from puts_jax.types import LoggedBatch, RequestBatch


def split(model) -> tuple[Any, Any]:
    """(graphdef, params) of an nnx module (STYLE 5: split once, keep the hot path functional)."""
    from flax import nnx

    return nnx.split(model)


def q_fn(graphdef) -> Callable[[Any, jax.Array], jax.Array]:
    """params, context -> Q f32[B, A, J]."""
    from flax import nnx

    def q(params, context):
        return nnx.merge(graphdef, params)(context)

    return q


# --------------------------------------------------------------------------------------------
# Serve
# --------------------------------------------------------------------------------------------

def local_serve(graphdef, W: np.ndarray, top_k: int, fallback: int = 0):
    """One jit: Q -> scalarize -> argmax -> gather W -> reweight -> masked top-k (the engine's
    contract, built from ``puts_jax.kernels``)."""
    W = jnp.asarray(W)
    q = q_fn(graphdef)

    @jax.jit
    def serve(params, lam, batch: RequestBatch):
        return kernels.serve_batch(q(params, batch.context), lam, W, batch.preds, batch.mask,
                                   top_k, fallback)

    return serve


def fused_serve(graphdef, W: np.ndarray, top_k: int, fallback: int = 0):
    """(serve, source): the engine's serve builder when it is importable, else ``local_serve``."""
    try:
        from puts_jax import engine
        from puts_jax.config import ScoringConfig

        cfg = ScoringConfig(top_k=top_k, fallback_action=fallback)
        return engine.build_serve(graphdef, jnp.asarray(W), cfg), "puts_jax.engine.build_serve"
    except (ImportError, AttributeError, TypeError):
        return local_serve(graphdef, W, top_k, fallback), "bench.variants.local_serve"


def xla_tail_serve(graphdef, W: np.ndarray, top_k: int, fallback: int = 0):
    """``engine.build_serve(method="xla")``: the library's pass with the pure-XLA tail (the
    blocked extraction top-k, ``lax.top_k`` for small batches) instead of the native one."""
    from puts_jax import engine
    from puts_jax.config import ScoringConfig

    cfg = ScoringConfig(top_k=top_k, fallback_action=fallback)
    return engine.build_serve(graphdef, jnp.asarray(W), cfg, method="xla")


def fold_serve(graphdef, W: np.ndarray, top_k: int, fallback: int = 0):
    """``engine.build_serve(fold_lambda=True)``: Q @ lam with lambda folded into the mixture
    head (f32[B, A, J] never formed; not the sweep's f32 arithmetic, see
    ``engine.scalarized_q``)."""
    from puts_jax import engine
    from puts_jax.config import ScoringConfig

    cfg = ScoringConfig(top_k=top_k, fallback_action=fallback)
    return engine.build_serve(graphdef, jnp.asarray(W), cfg, fold_lambda=True)


def unblocked_serve(graphdef, W: np.ndarray, top_k: int, fallback: int = 0):
    """``engine.build_serve(q_block_rows=0)``: the library's pass with the Q-network in one call
    instead of blocks of 256 rows (what the blocking buys, side by side)."""
    from puts_jax import engine
    from puts_jax.config import ScoringConfig

    cfg = ScoringConfig(top_k=top_k, fallback_action=fallback)
    return engine.build_serve(graphdef, jnp.asarray(W), cfg, q_block_rows=0)


def latency_serve(model, W: np.ndarray, top_k: int, example: RequestBatch, fallback: int = 0):
    """``engine.compile_latency_serve``: compiled ahead of time for ``example``'s shapes with
    the parameters built in as constants; ``fn(lam, batch)``."""
    from puts_jax import engine
    from puts_jax.config import ScoringConfig

    cfg = ScoringConfig(top_k=top_k, fallback_action=fallback)
    return engine.compile_latency_serve(model, np.asarray(W), cfg, example)


def unfused_serve(graphdef, W: np.ndarray, top_k: int, fallback: int = 0):
    """The same math as four separately jitted stages with a host round trip after each (what a
    pipeline of library calls does): Q; scalarize + select; gather + reweight; masked top-k."""
    Wj = jnp.asarray(W)
    stage_q = jax.jit(q_fn(graphdef))

    @jax.jit
    def stage_select(q, lam):
        s = jnp.einsum("baj,j->ba", q, lam)
        return jax.vmap(kernels.select_from_scores, (0, None))(s, fallback)

    @jax.jit
    def stage_reweight(preds, action):
        return jax.vmap(kernels.reweight)(preds, jnp.take(Wj, action, axis=0))

    @jax.jit
    def stage_top_k(scores, mask):
        bad = jnp.sum(mask & ~jnp.isfinite(scores), axis=1, dtype=jnp.int32)
        idx, val = jax.vmap(kernels.masked_top_k, (0, 0, None))(scores, mask, top_k)
        return idx, val, bad

    def serve(params, lam, batch: dict[str, np.ndarray]):
        q = np.asarray(stage_q(params, batch["context"]))
        action, fb = (np.asarray(x) for x in stage_select(q, lam))
        scores = np.asarray(stage_reweight(batch["preds"], action))
        idx, val, bad = (np.asarray(x) for x in stage_top_k(scores, batch["mask"]))
        return {"action": action, "topk_index": idx, "topk_score": val, "n_nonfinite": bad,
                "q_fallback": fb}

    return serve


# --------------------------------------------------------------------------------------------
# Sweep
# --------------------------------------------------------------------------------------------

def lambda_stats(q_BxAxJ, lam_J, logged: LoggedBatch, fallback: int = 0):
    """EstimatorStats (IPS, SNIPS, DM, DR sums) of the greedy policy for one lambda."""
    s = jnp.einsum("baj,j->ba", q_BxAxJ, lam_J)
    a, _ = jax.vmap(kernels.select_from_scores, (0, None))(s, fallback)
    pi = jnp.take_along_axis(logged.consistent, a[:, None], axis=1)[:, 0].astype(jnp.float32)
    q_pi = jnp.take_along_axis(q_BxAxJ, a[:, None, None], axis=1)[:, 0]
    q_log = jnp.take_along_axis(q_BxAxJ, logged.action[:, None, None], axis=1)[:, 0]
    return ope.chunk_stats(pi, logged.propensity, logged.rewards, logged.valid, q_pi, q_log)


def local_sweep(graphdef, lambda_chunk: int = 8, fallback: int = 0):
    """One jit: Q once, ``lax.map`` over chunks of ``lambda_chunk`` lambdas (vmapped inside),
    estimators in the same pass (the engine's design; ``lambda_chunk = L`` materializes
    f32[L, B, A] at once, the memory-unbounded way)."""
    q = q_fn(graphdef)

    @jax.jit
    def sweep(params, lams, logged: LoggedBatch):
        qv = q(params, logged.context)
        return lax.map(lambda lam: lambda_stats(qv, lam, logged, fallback), lams,
                       batch_size=lambda_chunk)

    return sweep


def fused_sweep(graphdef, lambda_chunk: int = 8, fallback: int = 0):
    """(sweep, source): ``puts_jax.engine.build_sweep`` (greedy, DR on) when importable, else
    ``local_sweep``."""
    try:
        from puts_jax import engine
        from puts_jax.config import SweepConfig

        fn = engine.build_sweep(graphdef, SweepConfig(lambda_chunk=lambda_chunk), "greedy",
                                fallback)
        return fn, "puts_jax.engine.build_sweep"
    except (ImportError, AttributeError, TypeError):
        return local_sweep(graphdef, lambda_chunk, fallback), "bench.variants.local_sweep"


def per_lambda_policy(graphdef, fallback: int = 0):
    """jit(params, lam, logged) -> stats: re-runs the Q-network for every lambda (call it L
    times: the loop a user writes around a serve-like policy)."""
    q = q_fn(graphdef)
    return jax.jit(lambda params, lam, logged: lambda_stats(q(params, logged.context), lam,
                                                            logged, fallback))


def per_lambda_reuse_q(graphdef, fallback: int = 0):
    """(q_jit, stats_jit): Q computed once, then one jitted call per lambda on the stored Q."""
    return (jax.jit(q_fn(graphdef)),
            jax.jit(functools.partial(lambda_stats, fallback=fallback)))


def numpy_sweep(q: np.ndarray, lams: np.ndarray, logged: dict[str, np.ndarray]) -> np.ndarray:
    """Per-lambda IPS / SNIPS / DR sums in numpy (Q given; vectorized over rows, a Python loop
    over lambdas). Returns f64[L, 6, J]: sum_w r, sum_w^2 r^2, sum_dr, sum_dr^2, sum_w, sum_w^2."""
    B = q.shape[0]
    rows = np.arange(B)
    r = logged["rewards"]
    prop = logged["propensity"]
    q_log = q[rows, logged["action"]]
    out = np.empty((lams.shape[0], 6, q.shape[2]))
    for i, lam in enumerate(lams):
        a = np.argmax(q @ lam, axis=1)
        pi = logged["consistent"][rows, a].astype(np.float32)
        w = pi / prop
        wr = w[:, None] * r
        dr = q[rows, a] + w[:, None] * (r - q_log)
        out[i] = [wr.sum(0), (wr * wr).sum(0), dr.sum(0), (dr * dr).sum(0),
                  np.full(q.shape[2], w.sum()), np.full(q.shape[2], (w * w).sum())]
    return out


def to_request_batch(arrs: dict[str, np.ndarray]) -> RequestBatch:
    return RequestBatch(arrs["context"], arrs["preds"], arrs["mask"], arrs["valid"])


def to_logged_batch(arrs: dict[str, np.ndarray]) -> LoggedBatch:
    return LoggedBatch(arrs["context"], arrs["action"], arrs["propensity"], arrs["rewards"],
                       arrs["consistent"], arrs["valid"])
