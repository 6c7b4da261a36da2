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
      action:     i32[B] logged action index into the action set; -1 where the logged decision
                  matches no action (slot-level logs: only ``consistent`` matters there).
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
                    k real, finite candidates exist (``engine.Scorer`` returns
                    min(k, candidate bucket) columns: a larger k cannot add any).
      topk_score:   f32[B, k] utility scores W[a*] . preds of those candidates (-inf at -1 slots).
      n_nonfinite:  i32[B] real candidates whose predictions were NaN/inf (reported, not ranked).
      q_fallback:   bool[B] True where Q was non-finite and the fallback action was used.
    """

    action: Array
    topk_index: Array
    topk_score: Array
    n_nonfinite: Array
    q_fallback: Array


class EstimatorStats(NamedTuple):
    """Mergeable sufficient statistics of the off-policy estimators (puts_jax.ope).

    One set per target policy; a leading policy axis P (lambdas of a sweep, fixed baselines) is
    added by vmap/lax.map. Sums over rows: accumulated in f32 (counts in i32) on device per chunk,
    merged in float64 on the host (``ope.merge_stats``), so they stream exactly over chunks.
    With importance weight w = pi / propensity and rewards r: f[J]:

      n:           i32[] real rows (valid).
      matched:     i32[] rows with pi > 0 (support of the target policy in the log).
      sum_w:       f32[] sum w.
      sum_w2:      f32[] sum w^2.
      sum_wr:      f32[J] sum w r.
      sum_w2r:     f32[J] sum w^2 r.
      sum_w2r2:    f32[J] sum w^2 r^2.
      sum_match_r: f32[J] sum 1[pi > 0] r (matched successes for exact intervals).
      sum_dm:      optional f32[J] sum qhat(x, pi) (direct method, Dudik et al. 2011).
      sum_dr:      optional f32[J] sum of doubly robust terms qhat(x, pi) + w (r - qhat(x, a)).
      sum_dr2:     optional f32[J] sum of their squares.
    """

    n: Array
    matched: Array
    sum_w: Array
    sum_w2: Array
    sum_wr: Array
    sum_w2r: Array
    sum_w2r2: Array
    sum_match_r: Array
    sum_dm: Array | None = None
    sum_dr: Array | None = None
    sum_dr2: Array | None = None


class BootstrapStats(NamedTuple):
    """Per-resample sums of the Poisson bootstrap (``puts_jax.bootstrap``): R resamples, each row b
    counted m[r, b] ~ Poisson(1) times, for P policies and J objectives. Like EstimatorStats they
    are plain sums, so they stream over chunks (f32 per chunk on device, merged in float64 on the
    host by ``bootstrap.merge``); every estimate is recomputed per resample from them, the SNIPS
    denominator included.

      n:      f32[R] sum m (real rows, with multiplicity).
      sum_w:  f32[R, P] sum m w.
      sum_wr: f32[R, P, J] sum m w r.
      sum_dr: optional f32[R, P, J] sum m (doubly robust term).
    Optional second moments (each resample's own standard errors, for the bootstrap-t band):
      sum_w2: f32[R, P] sum m w^2; sum_w2r, sum_w2r2: f32[R, P, J] sum m w^2 r, sum m w^2 r^2;
      sum_dr2: f32[R, P, J] sum m (doubly robust term)^2.
    """

    n: Array
    sum_w: Array
    sum_wr: Array
    sum_dr: Array | None = None
    sum_w2: Array | None = None
    sum_w2r: Array | None = None
    sum_w2r2: Array | None = None
    sum_dr2: Array | None = None
