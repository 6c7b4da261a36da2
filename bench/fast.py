"""Experimental serve variants, measured next to the engine so the kernels engineer can adopt
what wins. Same inputs, same outputs (``ServeOutput``), same semantics as
``puts_jax.kernels.serve_batch``; the suites check that they agree with it.

What differs from ``kernels.serve_batch`` (each measured in the serve suite):

* re-weighting as K unrolled multiply-adds over ``preds[:, :, k]`` instead of a vmapped
  ``einsum("nk,k->n")`` (a batched mat-vec with K = 6 that XLA:CPU runs about 2x slower);
* the masked top-k on the whole [B, N] block with one ``lax.top_k`` call (no vmap, one
  ``where`` for mask and finiteness);
* ``const_params``: the parameters closed over as compile-time constants (B = 1 latency: fewer
  arguments to marshal per call, and XLA can fold them into the matmuls).
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


def serve_math(q_BxAxJ, lam_J, W_AxK, preds_BxNxK, mask_BxN, k: int, fallback: int = 0):
    """scalarize -> first argmax (fallback on non-finite) -> gather W -> unrolled re-weight ->
    one masked ``lax.top_k`` over the batch."""
    s = jnp.einsum("baj,j->ba", q_BxAxJ.astype(jnp.float32), lam_J.astype(jnp.float32))
    idx, finite = _first_argmax_rows(s)
    action = jnp.where(finite, idx, jnp.int32(fallback))
    w = jnp.take(W_AxK.astype(jnp.float32), action, axis=0)  # f32[B, K]
    preds = preds_BxNxK.astype(jnp.float32)
    u = preds[:, :, 0] * w[:, 0:1]
    for j in range(1, preds.shape[2]):
        u = u + preds[:, :, j] * w[:, j:j + 1]
    fin = jnp.isfinite(u)
    bad = jnp.sum(mask_BxN & ~fin, axis=1, dtype=jnp.int32)
    u = jnp.where(mask_BxN & fin, u, -jnp.inf)
    N = u.shape[1]
    if k > N:
        u = jnp.concatenate([u, jnp.full((u.shape[0], k - N), -jnp.inf, jnp.float32)], axis=1)
    val, top = lax.top_k(u, k)
    top = jnp.where(val > -jnp.inf, top, -1).astype(jnp.int32)
    return ServeOutput(action, top, val, bad, ~finite)


def fast_serve(graphdef, W, top_k: int, fallback: int = 0):
    """jit(params, lam, batch) -> ServeOutput with ``serve_math``."""
    from flax import nnx

    Wj = jnp.asarray(W)

    @jax.jit
    def serve(params, lam, batch: RequestBatch):
        q = nnx.merge(graphdef, params)(batch.context)
        return serve_math(q, lam, Wj, batch.preds, batch.mask, top_k, fallback)

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
