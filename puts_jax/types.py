"""Dimension legend and the pytree containers that cross module boundaries.

No computation lives here. Every public docstring in puts_jax writes shapes with these letters:

====  =====================================================================
 B    requests in a batch (padded to a bucket size where compiled)
 N    candidates per request (padded; ``mask`` marks the real ones)
 K    ranker outcomes (heads) per candidate: p_click, p_save, ...
 A    actions: utility-weight vectors in the action set ``W: f32[A, K]``
 J    reward objectives (request-level rewards)
 L    scalarization coefficients (lambdas) in a sweep
 D    dense context features
 C    categorical context ids
 R    bootstrap resamples
====  =====================================================================

Containers are ``typing.NamedTuple`` so they are pytrees without importing flax; an optional field
set to ``None`` is an empty subtree.
"""

from __future__ import annotations

from typing import Any, NamedTuple

Array = Any  # jax.Array or np.ndarray; shapes are documented per field.


class RequestBatch(NamedTuple):
    """Requests to score.

    Fields:
      context: f32[B, D] dense request context.
      preds:   f32[B, N, K] ranker predictions per candidate (padded rows are ignored).
      mask:    bool[B, N] True for real candidates.
      valid:   bool[B] True for real requests (False for bucket padding).
      context_ids: optional i32[B, C] categorical context ids.
    """

    context: Array
    preds: Array
    mask: Array
    valid: Array
    context_ids: Array | None = None


class LoggedBatch(NamedTuple):
    """Exploration-log rows (one row a request) as arrays.

    Fields:
      context:    f32[B, D] dense context.
      action:     i32[B] logged action index into the action set.
      propensity: f32[B] logging probability of the logged decision, in (0, 1].
      rewards:    f32[B, J] observed request-level rewards.
      consistent: bool[B, A] actions whose decision equals the logged one (one-hot of ``action``
                  for weight-vector logs; slot- or slate-level matching otherwise).
      valid:      bool[B] True for real rows (False for padding of the last chunk).
      context_ids: optional i32[B, C].
    """

    context: Array
    action: Array
    propensity: Array
    rewards: Array
    consistent: Array
    valid: Array
    context_ids: Array | None = None


class ServeOutput(NamedTuple):
    """Result of the fused serve pass.

    Fields:
      action:       i32[B] chosen action a*_b (argmax of Q @ lam, ties to the lowest index,
                    non-finite Q rows -> the fallback action).
      topk_index:   i32[B, k] candidate positions of the top k, best first; -1 where fewer than
                    k real, finite candidates exist.
      topk_score:   f32[B, k] utility scores W[a*] . preds of those candidates (-inf at -1 slots).
      n_nonfinite:  i32[B] real candidates whose predictions were NaN/inf (reported, not ranked).
      q_fallback:   bool[B] True where Q was non-finite and the fallback action was used.
    """

    action: Array
    topk_index: Array
    topk_score: Array
    n_nonfinite: Array
    q_fallback: Array
