"""Experimental serve variants, measured next to the engine so the kernels engineer can adopt
what wins. Same inputs, same outputs (``ServeOutput``), same semantics as
``puts_jax.kernels.serve_batch``; the suites check that they agree with it.

What differs from ``kernels.serve_batch`` (each measured in the serve suite):

* re-weighting as K unrolled multiply-adds over ``preds[:, :, k]`` instead of a vmapped
  ``einsum("nk,k->n")`` (a batched mat-vec with K = 6 that XLA:CPU runs about 2x slower);
* the masked top-k on the whole [B, N] block with one ``lax.top_k`` call (no vmap, one
  ``where`` for mask and finiteness);
* ``const_params``: the parameters closed over as compile-time constants (B = 1 latency: fewer
  arguments to marshal per call, and XLA can fold them into the matmuls; adopted as
  ``engine.compile_latency_serve``);
* ``tail``: a replacement for the re-weight + masked top-k (the native experiments that were
  here were adopted, improved, as the library's ``puts_jax.native`` serve tail).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from puts_jax.types import RequestBatch, ServeOutput


def _first_argmax_rows(s_BxA: jax.Array) -> tuple[jax.Array, jax.Array]:
    A = s_BxA.shape[1]
    m = jnp.max(s_BxA, axis=1, keepdims=True)
    idx = jnp.min(jnp.where(s_BxA == m, lax.broadcasted_iota(jnp.int32, s_BxA.shape, 1),
                            jnp.int32(A)), axis=1)
    return idx, jnp.all(jnp.isfinite(s_BxA), axis=1)


def serve_math_topk(preds_BxNxK, w_BxK, mask_BxN, k: int, top_k_fn=lax.top_k):
    """Re-weight every candidate with its request's weights (K unrolled multiply-adds) and keep
    the k best real, finite ones with one ``lax.top_k``: (idx i32[B, k] with -1 past the real
    ones, score f32[B, k], n_nonfinite i32[B])."""
    preds = preds_BxNxK.astype(jnp.float32)
    w = w_BxK.astype(jnp.float32)
    u = preds[:, :, 0] * w[:, 0:1]
    for j in range(1, preds.shape[2]):
        u = u + preds[:, :, j] * w[:, j:j + 1]
    fin = jnp.isfinite(u)
    bad = jnp.sum(mask_BxN & ~fin, axis=1, dtype=jnp.int32)
    u = jnp.where(mask_BxN & fin, u, -jnp.inf)
    N = u.shape[1]
    if k > N:
        u = jnp.concatenate([u, jnp.full((u.shape[0], k - N), -jnp.inf, jnp.float32)], axis=1)
    val, top = top_k_fn(u, k)
    return jnp.where(val > -jnp.inf, top, -1).astype(jnp.int32), val, bad


def serve_math(q_BxAxJ, lam_J, W_AxK, preds_BxNxK, mask_BxN, k: int, fallback: int = 0,
               tail=serve_math_topk):
    """scalarize -> first argmax (fallback on non-finite) -> gather W -> ``tail`` (re-weight ->
    masked top-k: ``serve_math_topk``, or the native ``bench.native.rerank``)."""
    s = jnp.einsum("baj,j->ba", q_BxAxJ.astype(jnp.float32), lam_J.astype(jnp.float32))
    idx, finite = _first_argmax_rows(s)
    action = jnp.where(finite, idx, jnp.int32(fallback))
    w = jnp.take(W_AxK.astype(jnp.float32), action, axis=0)  # f32[B, K]
    top, val, bad = tail(preds_BxNxK, w, mask_BxN, k)
    return ServeOutput(action, top, val, bad, ~finite)


def fast_serve(graphdef, W, top_k: int, fallback: int = 0, tail=serve_math_topk):
    """jit(params, lam, batch) -> ServeOutput with ``serve_math``."""
    from flax import nnx

    Wj = jnp.asarray(W)

    @jax.jit
    def serve(params, lam, batch: RequestBatch):
        q = nnx.merge(graphdef, params)(batch.context)
        return serve_math(q, lam, Wj, batch.preds, batch.mask, top_k, fallback, tail)

    return serve


def const_params(graphdef, params, W, top_k: int, fallback: int = 0):
    """jit(lam, batch) -> ServeOutput with the parameters baked in as constants."""
    from flax import nnx

    Wj = jnp.asarray(W)
    frozen = jax.tree.map(lambda x: jnp.asarray(x), params)

    @jax.jit
    def serve(lam, batch: RequestBatch):
        q = nnx.merge(graphdef, frozen)(batch.context)
        return serve_math(q, lam, Wj, batch.preds, batch.mask, top_k, fallback)

    return serve


# --------------------------------------------------------------------------------------------
# Sweep
# --------------------------------------------------------------------------------------------

def _greedy_terms(q_JxBxA, lam_J, consistent_BxA, fallback: int):
    """Greedy action's target probability f32[B] and qhat(x, pi) f32[B, J] for one lambda, the
    scalarization written elementwise (unrolled over J, contiguous f32[B, A] slices) instead of
    an einsum with a contraction of J = 2, and the select as max / where / min on whole rows."""
    J = q_JxBxA.shape[0]
    s = q_JxBxA[0] * lam_J[0]
    for j in range(1, J):
        s = s + q_JxBxA[j] * lam_J[j]
    idx, finite = _first_argmax_rows(s)
    a = jnp.where(finite, idx, jnp.int32(fallback))
    pi = jnp.take_along_axis(consistent_BxA, a[:, None], axis=1)[:, 0].astype(jnp.float32)
    qp = jnp.stack([jnp.take_along_axis(q_JxBxA[j], a[:, None], axis=1)[:, 0] for j in range(J)],
                   axis=1)
    return pi, qp


def fast_sweep(graphdef, lambda_chunk: int = 1, fallback: int = 0):
    """jit(params, lams f32[L, J], logged) -> EstimatorStats[L] (greedy target, DM/DR on), the
    engine's ``build_sweep`` contract with ``_greedy_terms`` in place of the einsum + vmapped
    select; Q transposed once to f32[J, B, A]. One lambda a step measured fastest (the f32[B, A]
    temporaries of a step stay in cache; 8 at a time do not)."""
    from flax import nnx

    from puts_jax import ope

    @jax.jit
    def sweep(params, lams, logged):
        q = nnx.merge(graphdef, params)(logged.context).astype(jnp.float32)
        qT = jnp.transpose(q, (2, 0, 1))
        act = logged.action.astype(jnp.int32)
        ql = jnp.take_along_axis(q, jnp.maximum(act, 0)[:, None, None], axis=1)[:, 0]
        ql = jnp.where((act >= 0)[:, None], ql, 0.0)

        def one(lam):
            pi, qp = _greedy_terms(qT, lam, logged.consistent, fallback)
            return ope.chunk_stats(pi, logged.propensity, logged.rewards, logged.valid, qp, ql)

        return lax.map(one, lams, batch_size=lambda_chunk)

    return sweep


def _lambda_sums(pi_BxL, qp_BxLxJ, ql_BxJ, logged):
    """EstimatorStats[L] summed over rows from [B, L] arrays: the library's
    ``ope.lambda_rows_stats`` (adopted from this file) and ``ope.sum_rows``."""
    from puts_jax import ope

    return ope.sum_rows(ope.lambda_rows_stats(pi_BxL, logged.propensity, logged.rewards,
                                              logged.valid, qp_BxLxJ, ql_BxJ))


def native_sweep(graphdef, fallback: int = 0):
    """The sweep contract with the all-lambda select done natively (``bench.native.
    sweep_select``: one pass over Q, lambdas in the vector lanes), then the estimator sums on
    [B, L] arrays (``_lambda_sums``), in the same jit."""
    from flax import nnx

    from bench import native

    @jax.jit
    def sweep(params, lams, logged):
        q = nnx.merge(graphdef, params)(logged.context).astype(jnp.float32)
        act = logged.action.astype(jnp.int32)
        ql = jnp.take_along_axis(q, jnp.maximum(act, 0)[:, None, None], axis=1)[:, 0]
        ql = jnp.where((act >= 0)[:, None], ql, 0.0)
        pi, qp = native.sweep_select(q, lams, logged.consistent, fallback)  # [B, L], [B, L, J]
        return _lambda_sums(pi, qp, ql, logged)

    return sweep
