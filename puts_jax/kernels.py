"""Serving kernels: select an action, re-weight candidates, masked top-k (pure jax arrays).

Per-example functions are written for ONE request and check ranks at the top (rlax style,
``rlax/_src/value_learning.py``); callers batch them with ``jax.vmap``. ``serve_batch`` and
``sweep_actions`` are the batched, fused forms that ``puts_jax.engine`` compiles into one program.

The target policy of PRL-PUTS (arXiv 2605.16344) for a scalarization lam: f32[J] picks
``a* = argmax_a Q[a] @ lam`` (ties to the lowest index; a non-finite scalarized row falls back to a
fixed action) and re-scores every candidate with the chosen utility weights, ``s[n] = W[a*] .
preds[n]``, keeping the k best real, finite candidates.

No flax, grain or orbax here: these functions test against ``puts_jax.reference`` without a model.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from puts_jax.types import ServeOutput

_UNROLL_MAX_K = 16  # re-weighting unrolls the K-dot up to this many ranker heads


def _check_rank(name: str, x: jax.Array, ndim: int) -> None:
    if jnp.ndim(x) != ndim:
        raise ValueError(f"{name}: expected rank {ndim}, got shape {jnp.shape(x)}")


def first_argmax(s_A: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Index of the largest entry of ``s: f32[A]`` (ties to the lowest index) and whether every
    entry is finite. Written as max / where / min: on CPU about 4x faster than ``jnp.argmax``
    (FACTS.md). With a non-finite entry the index is meaningless; callers use the flag."""
    _check_rank("s_A", s_A, 1)
    n = s_A.shape[0]
    m = jnp.max(s_A)
    idx = jnp.min(jnp.where(s_A == m, lax.iota(jnp.int32, n), jnp.int32(n)))
    return idx, jnp.all(jnp.isfinite(s_A))


def select_from_scores(s_A: jax.Array, fallback) -> tuple[jax.Array, jax.Array]:
    """Greedy action on scalarized scores ``s: f32[A]`` -> (i32 action, bool used_fallback).

    Any non-finite score (NaN/inf Q, or 0 * inf from a zero lambda weight) selects ``fallback``.
    """
    if isinstance(fallback, int) and not 0 <= fallback < s_A.shape[0]:
        raise ValueError(f"fallback: action {fallback} outside [0, {s_A.shape[0]})")
    idx, finite = first_argmax(s_A)
    return jnp.where(finite, idx, jnp.asarray(fallback, jnp.int32)), ~finite


def scalarize(q_AxJ: jax.Array, lam_J: jax.Array) -> jax.Array:
    """``q: f[A, J]``, ``lam: f[J]`` -> f32[A] = q @ lam, accumulated in f32 (PITFALLS P2)."""
    _check_rank("q_AxJ", q_AxJ, 2)
    _check_rank("lam_J", lam_J, 1)
    return jnp.einsum("aj,j->a", q_AxJ.astype(jnp.float32), lam_J.astype(jnp.float32))


def select_action(q_AxJ: jax.Array, lam_J: jax.Array, fallback) -> jax.Array:
    """Target-policy action for one request: i32 ``argmax_a q[a] @ lam`` (PRL-PUTS), ties to the
    lowest index; a non-finite scalarized row gives ``fallback``.

    Args: q f[A, J] Q-values; lam f[J] scalarization; fallback int or i32[] action.
    """
    return select_from_scores(scalarize(q_AxJ, lam_J), fallback)[0]


def reweight(preds_NxK: jax.Array, w_K: jax.Array) -> jax.Array:
    """Utility of each candidate under weights w: ``f32[N] = preds[n] . w`` (f32 accumulation).

    For small K (ranker heads) the dot is unrolled into K multiply-adds over ``preds[:, k]``:
    vmapped, XLA:CPU runs that about 4x faster than the batched mat-vec an einsum lowers to.
    """
    _check_rank("preds_NxK", preds_NxK, 2)
    _check_rank("w_K", w_K, 1)
    p, w = preds_NxK.astype(jnp.float32), w_K.astype(jnp.float32)
    if p.shape[1] > _UNROLL_MAX_K:
        return jnp.einsum("nk,k->n", p, w)
    u = p[:, 0] * w[0]
    for j in range(1, p.shape[1]):
        u = u + p[:, j] * w[j]
    return u


def masked_top_k(scores_N: jax.Array, mask_N: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """The k best real, finite candidates of one request, best first.

    Args:
      scores_N: f[N] candidate scores.
      mask_N: bool[N] True for real candidates (padding is never returned).
      k: static number of slots (may exceed N).
    Returns:
      (idx i32[k], score f32[k]); ties go to the lowest index; slots beyond the number of real,
      finite candidates hold idx -1 and score -inf. NaN/inf scores are never ranked.
    """
    _check_rank("scores_N", scores_N, 1)
    _check_rank("mask_N", mask_N, 1)
    s = scores_N.astype(jnp.float32)
    ok = mask_N & jnp.isfinite(s)
    s = jnp.where(ok, s, -jnp.inf)
    n = s.shape[0]
    if k > n:
        s = jnp.concatenate([s, jnp.full((k - n,), -jnp.inf, jnp.float32)])
    val, idx = lax.top_k(s, k)  # stable: equal values keep the lower index first
    # A real candidate's finite score is > -inf; -inf slots are padding or fewer than k real.
    real = val > -jnp.inf
    return jnp.where(real, idx, -1).astype(jnp.int32), val


def serve_batch(q_BxAxJ: jax.Array, lam_J: jax.Array, W_AxK: jax.Array, preds_BxNxK: jax.Array,
                mask_BxN: jax.Array, k: int, fallback) -> ServeOutput:
    """The fused serve pass after the Q-network: scalarize -> select -> gather W -> re-weight all
    candidates -> masked top-k, for a batch.

    Args:
      q_BxAxJ: f[B, A, J] Q-values; lam_J: f32[J] (traced); W_AxK: f32[A, K] action set.
      preds_BxNxK: f[B, N, K] ranker predictions; mask_BxN: bool[B, N] real candidates.
      k: static top-k size; fallback: action for rows with non-finite Q.
    Returns:
      ServeOutput (see puts_jax.types); ``n_nonfinite`` counts real candidates whose score
      W[a*] . preds was NaN/inf (any NaN/inf prediction makes the score non-finite).
    """
    _check_rank("q_BxAxJ", q_BxAxJ, 3)
    _check_rank("preds_BxNxK", preds_BxNxK, 3)
    s_BxA = jnp.einsum("baj,j->ba", q_BxAxJ.astype(jnp.float32), lam_J.astype(jnp.float32))
    action, q_fallback = jax.vmap(select_from_scores, (0, None))(s_BxA, fallback)
    w_BxK = jnp.take(W_AxK.astype(jnp.float32), action, axis=0)
    scores = jax.vmap(reweight)(preds_BxNxK, w_BxK)
    bad = mask_BxN & ~jnp.isfinite(scores)
    idx, val = jax.vmap(masked_top_k, (0, 0, None))(scores, mask_BxN, k)
    return ServeOutput(action, idx, val, jnp.sum(bad, axis=1, dtype=jnp.int32), q_fallback)


def sweep_actions(q_BxAxJ: jax.Array, lams_LxJ: jax.Array, fallback=0) -> jax.Array:
    """Greedy actions for every lambda: i32[L, B]. Materializes f32[L, B, A]; for large L x B use
    ``puts_jax.engine.build_sweep``, which maps over lambda chunks instead."""
    _check_rank("q_BxAxJ", q_BxAxJ, 3)
    _check_rank("lams_LxJ", lams_LxJ, 2)
    per_lam = jax.vmap(select_action, (0, None, None))  # over B
    return jax.vmap(per_lam, (None, 0, None))(q_BxAxJ, lams_LxJ, fallback)
