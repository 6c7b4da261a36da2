"""Slate-level matching (DESIGN.md section 4): actions that produce the same top-k slate for a
request are the same decision.

An action a (a utility-weight vector ``W[a]``) is only a means to a slate: the request sees the
candidates ranked by ``s_n = W[a] . preds[n]``, cut to the top k. When the log carries the ranker
predictions, every action whose slate equals the logged action's slate is *consistent* with the
logged decision, and the decision's logging probability is the sum of the logging probabilities of
those actions:

    consistent[b, a] = 1[slate_b(a) == slate_b(logged_b)]
    propensity[b]    = sum_a f[b, a] consistent[b, a]   (f: the logging distribution over actions)

Importance sampling on slates (the decision actually shown) is unbiased whenever the reward
depends on the action only through its slate: E[1[slate(a*) = slate] r / P(slate)] =
sum_sigma P(sigma) 1[sigma = slate(a*)] E[r | sigma] / P(sigma) = E[r | slate(a*)], the target's
value; and a weight 1 / P(slate) >= 1 / P(a) on more matched rows raises the effective sample size.

"Same slate" means the same ORDERED list of candidates: examination is position-biased, so two
slates with the same items in another order are different decisions with different expected
rewards, and matching them would bias the estimate. Unordered (set) matching is deliberately not
offered.

Ranking (the definition every producer of slate-matched logs must share, and the one
``puts_jax.data.simulator`` uses for its own slates): utility in float64 of the given ``preds`` and
``weights``, best first, ties to the lower candidate index (a stable sort); padded candidates
(``mask`` False) and candidates with a non-finite prediction are never ranked; slots beyond the
real candidates hold -1 (and compare equal to -1). Serving (``kernels``) ranks in float32, so a
production log should record consistency from the ranking its server actually used.

Pure numpy on the host (shapes as in ``puts_jax.types``); inputs may be jax arrays.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from puts_jax.checks import InputError

_CHUNK_ROWS = 1024  # rows ranked at a time (bounds the f64[rows, A, N] utility temporary)


class SlateMatch(NamedTuple):
    """consistent: bool[B, A] actions whose slate equals the logged action's (the logged action is
    always among them); propensity: f64[B] the logging probability of the logged slate;
    n_consistent: i32[B] the number of consistent actions."""

    consistent: np.ndarray
    propensity: np.ndarray
    n_consistent: np.ndarray


def rank_slates(preds, weights, k: int, mask=None) -> np.ndarray:
    """Ordered top-k slates i32[B, A, k] of every action (``k`` static).

    Args:
      preds: f32[B, N, K] ranker predictions (any real scale: the utility is W . preds as given).
      weights: f[A, K] action set shared by the rows, or f[B, A, K] per row.
      k: slate size, 1 <= k <= N.
      mask: optional bool[B, N], True for real candidates (default: all real).
    Returns candidate indices best first (float64 utility, ties to the lower index); -1 where a
    row has fewer than k real, finite candidates.
    """
    preds = np.asarray(preds)
    if preds.ndim != 3:
        raise InputError("preds", [], f"expected f32[B, N, K], got shape {preds.shape}")
    B, N, K = preds.shape
    w = np.asarray(weights, np.float64)
    if w.ndim not in (2, 3) or w.shape[-1] != K or (w.ndim == 3 and w.shape[0] != B):
        raise InputError("weights", [], f"expected f[A, {K}] or f[{B}, A, {K}], got {w.shape}")
    if not 1 <= k <= N:
        raise InputError("k", [], f"slate size {k} outside [1, {N}]")
    real = np.isfinite(preds).all(-1)
    if mask is not None:
        mask = np.asarray(mask, bool)
        if mask.shape != (B, N):
            raise InputError("mask", [], f"expected bool[{B}, {N}], got {mask.shape}")
        real &= mask
    out = np.empty((B, w.shape[-2], k), np.int32)
    for lo in range(0, B, _CHUNK_ROWS):
        sl = slice(lo, lo + _CHUNK_ROWS)
        wn = w[sl] if w.ndim == 3 else np.broadcast_to(w, (len(preds[sl]),) + w.shape)
        s = np.matmul(wn, np.swapaxes(preds[sl].astype(np.float64), 1, 2))  # [b, A, N]
        s = np.where(real[sl, None, :], s, -np.inf)
        top = np.argsort(-s, axis=-1, kind="stable")[..., :k]
        ok = np.take_along_axis(np.broadcast_to(real[sl, None, :], s.shape), top, axis=-1)
        out[sl] = np.where(ok, top, -1)
    return out


def match_slates(slates, action, probs) -> SlateMatch:
    """Consistency and slate propensity from precomputed slates.

    Args:
      slates: i[B, A, k] every action's slate (``rank_slates``).
      action: i[B] logged action in [0, A).
      probs: f[A] logging distribution over actions (uniform: 1/A; epsilon-greedy: see
        ``simulator.logging_probs``) or f[B, A] per row.
    """
    slates = np.asarray(slates)
    if slates.ndim != 3:
        raise InputError("slates", [], f"expected i[B, A, k], got shape {slates.shape}")
    B, A, _ = slates.shape
    action = np.asarray(action, np.int64).reshape(-1)
    if action.shape != (B,):
        raise InputError("action", [], f"expected i[{B}], got {action.shape}")
    bad = np.flatnonzero((action < 0) | (action >= A))
    if bad.size:
        raise InputError("action", bad[:10].tolist(), f"outside [0, {A}) (slate matching needs "
                         "the logged action)")
    p = np.asarray(probs, np.float64)
    if p.shape not in ((A,), (B, A)):
        raise InputError("probs", [], f"expected f[{A}] or f[{B}, {A}], got {p.shape}")
    logged = slates[np.arange(B), action]  # [B, k]
    consistent = (slates == logged[:, None, :]).all(-1)
    propensity = np.where(consistent, np.broadcast_to(p, (B, A)), 0.0).sum(-1)
    return SlateMatch(consistent, propensity, consistent.sum(-1).astype(np.int32))


def slate_matching(preds, weights, action, probs, k: int, mask=None) -> SlateMatch:
    """Slate-level ``consistent`` bool[B, A] and ``propensity`` f64[B] of logged actions.

    Args:
      preds: f32[B, N, K] the ranker predictions the logged request was ranked with.
      weights: f[A, K] the action set W.
      action: i[B] logged action; probs: f[A] (or f[B, A]) logging distribution over actions.
      k: slate size (top-k); mask: optional bool[B, N] real candidates.
    Two actions are consistent when their ordered top-k slates are equal (module docstring).
    """
    return match_slates(rank_slates(preds, weights, k, mask), action, probs)
