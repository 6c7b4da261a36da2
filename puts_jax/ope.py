"""Off-policy estimators: per-request terms, mergeable statistics and confidence intervals.

Device side (pure jax arrays, one request at a time, vmapped by ``chunk_stats``): the target
policy's probability of the logged decision, the importance weight, and the sums that IPS, SNIPS,
DM and DR need (``puts_jax.types.EstimatorStats``). Host side (numpy float64): merging chunk
statistics and turning them into estimates with intervals (``finalize``).

Estimators, for n logged rows with weight w = pi(decision | x) / propensity and reward r:
  IPS   (Horvitz & Thompson 1952; inverse propensity scoring)  V = (1/n) sum w r, normal CI.
  SNIPS (self-normalized IPS, Swaminathan & Joachims 2015)     V = sum w r / sum w, delta-method CI
        se = sqrt(sum w^2 (r - V)^2) / sum w; undefined (NaN, flagged) when no row has support.
  DM    (direct method)  V = (1/n) sum qhat(x, pi); no interval (model error is not captured).
  DR    (doubly robust, Dudik, Langford & Li 2011)  V = (1/n) sum [qhat(x, pi) + w (r - qhat(x, d))]
        with d the logged DECISION and qhat(x, d) the reward model that qhat(x, pi) averages:
        qhat(x, pi) = sum_d pi(d | x) qhat(x, d). Where several actions make one decision (slot- or
        slate-level matching, ``consistent``), qhat(x, d) is the target-weighted mean of their Q
        (``logged_decision_qhat``; Q(x, a*) for a deterministic target), never Q(x, logged
        action): that would bias DR by E[Q(x, a*) - mean over the consistent actions of Q].
  Exact (Clopper & Pearson 1934): binary rewards, a deterministic target and a constant logging
        propensity p give 1[match] r ~ Bernoulli(p V) i.i.d., so the successes k ~ Binomial(n, p V)
        and the Clopper-Pearson interval of k out of n, divided by p, is an exact interval for V
        (IPS = k / (n p) there). It stays non-degenerate with zero successes: [0, hi > 0].

Positivity (PITFALLS P1): propensities must be > 0; ``checks.check_propensity`` rejects p <= 0
naming the rows unless an explicit, documented ``floor`` is given, in which case w = pi / max(p,
floor). A row the target policy never takes (pi = 0) contributes exactly 0 whatever its propensity.
Accumulation is f32 (counts i32) on device whatever the input dtype, f64 on the host (P2).

The statistics are plain sums so they stream over chunks and add a policy axis by vmap
(``lambda_rows_stats``: every lambda of a sweep on the same rows, [B, L] layout); the
Poisson bootstrap (``puts_jax.bootstrap``) weights the per-row terms (``rows_stats``) with per-row
multiplicities and adds a resample axis R the same way.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from puts_jax.kernels import select_from_scores
from puts_jax.types import EstimatorStats

POLICY_KINDS = ("greedy", "epsilon_greedy", "softmax")


# ----------------------------------------------------------------------------- per request (device)

def policy_probs(s_A: jax.Array, kind: str = "greedy", param=0.0, fallback=0) -> jax.Array:
    """Target policy pi(. | x): f32[A] from scalarized scores ``s: f32[A]`` of one request.

    kind (static): "greedy" (one-hot of the first argmax), "epsilon_greedy" (param = epsilon:
    (1 - eps) greedy + eps uniform), "softmax" (param = temperature > 0). ``param`` is traced.
    A row with a non-finite score uses the one-hot of ``fallback`` in place of the greedy part
    (and of the whole softmax).
    """
    if s_A.ndim != 1:
        raise ValueError(f"policy_probs: expected s f[A], got {s_A.shape}")
    if kind not in POLICY_KINDS:
        raise ValueError(f"kind: must be one of {POLICY_KINDS}, got {kind!r}")
    A = s_A.shape[0]
    a, bad = select_from_scores(s_A, fallback)
    one_hot = (jnp.arange(A) == a).astype(jnp.float32)
    if kind == "greedy":
        return one_hot
    param = jnp.asarray(param, jnp.float32)
    if kind == "epsilon_greedy":
        return (1.0 - param) * one_hot + param / A
    soft = jax.nn.softmax(jnp.where(bad, 0.0, s_A.astype(jnp.float32)) / param)
    return jnp.where(bad, one_hot, soft)


def target_prob(probs_A: jax.Array, consistent_A: jax.Array) -> jax.Array:
    """pi(decision | x) = sum_a pi(a | x) consistent[a]: f32 for one logged row. For a
    deterministic target with chosen action a*, this is ``consistent[a*]``."""
    if probs_A.ndim != 1 or consistent_A.ndim != 1:
        raise ValueError(f"target_prob: expected f[A], bool[A]; got {probs_A.shape}, "
                         f"{consistent_A.shape}")
    return jnp.sum(jnp.where(consistent_A, probs_A.astype(jnp.float32), 0.0))


def deterministic_target_prob(consistent_A: jax.Array, action) -> jax.Array:
    """pi(decision | x) of a deterministic target choosing ``action``: f32 ``consistent[action]``
    (1 when the logged decision is the one the target makes, else 0)."""
    if consistent_A.ndim != 1:
        raise ValueError(f"deterministic_target_prob: expected bool[A], got {consistent_A.shape}")
    return consistent_A[action].astype(jnp.float32)


def importance_weight(pi: jax.Array, propensity: jax.Array, floor: float | None = None) -> jax.Array:
    """w = pi / propensity (f32), exactly 0 where pi == 0. With an explicit ``floor`` the
    propensity is max(p, floor) (documented clipping, PITFALLS P1(b)); without one, p must have
    passed ``checks.check_propensity`` (p > 0)."""
    p = jnp.asarray(propensity, jnp.float32)
    if floor is not None:
        p = jnp.maximum(p, jnp.float32(floor))
    pi = jnp.asarray(pi, jnp.float32)
    return jnp.where(pi > 0, pi / jnp.where(pi > 0, p, 1.0), 0.0)


def logged_decision_qhat(probs_A: jax.Array, consistent_A: jax.Array,
                         q_AxJ: jax.Array) -> jax.Array:
    """qhat(x, logged decision) f32[J] for DR: the target-weighted mean of Q over the actions
    consistent with the logged decision, sum_a c[a] pi(a | x) Q[a] / sum_a c[a] pi(a | x) (0 where
    the target never makes that decision: the row's weight is 0 then). With it DR is unbiased for
    any Q, since sum_d pi(d | x) qhat(x, d) = sum_a pi(a | x) Q[a] = qhat(x, pi) (module
    docstring). One-hot ``consistent``: Q[logged action]; a deterministic target: Q[a*].

    probs_A: f[A] the target policy; consistent_A: bool[A]; q_AxJ: f[A, J] the reward model.
    Raises ValueError for other ranks.
    """
    if probs_A.ndim != 1 or consistent_A.ndim != 1 or q_AxJ.ndim != 2:
        raise ValueError(f"logged_decision_qhat: expected f[A], bool[A], f[A, J]; got "
                         f"{probs_A.shape}, {consistent_A.shape}, {q_AxJ.shape}")
    c = jnp.where(consistent_A, probs_A.astype(jnp.float32), 0.0)
    pi = jnp.sum(c)
    num = jnp.sum(jnp.where((c > 0)[:, None], c[:, None] * q_AxJ.astype(jnp.float32), 0.0), 0)
    return jnp.where(pi > 0, num / jnp.where(pi > 0, pi, 1.0), 0.0)


def row_stats(pi, propensity, rewards_J, valid, qhat_pi_J=None, qhat_logged_J=None,
              floor: float | None = None) -> EstimatorStats:
    """The EstimatorStats terms of ONE logged row (sum them over rows; ``chunk_stats`` does).

    Args:
      pi: target probability of the logged decision; propensity: its logging probability.
      rewards_J: f[J] observed rewards; valid: bool, False for padding (all terms 0).
      qhat_pi_J, qhat_logged_J: optional f[J] reward-model values qhat(x, pi) = sum_a pi(a|x)
        qhat(x, a) and qhat(x, logged decision) (``logged_decision_qhat``: Q of the logged action
        only when ``consistent`` is its one-hot), for DM and DR (Dudik et al. 2011).
    """
    if rewards_J.ndim != 1:
        raise ValueError(f"row_stats: expected rewards f[J], got {rewards_J.shape}")
    r = jnp.where(valid, rewards_J.astype(jnp.float32), 0.0)
    w = jnp.where(valid, importance_weight(pi, propensity, floor), 0.0)
    hit = valid & (jnp.asarray(pi) > 0)
    wr = w * r
    dm = dr = dr2 = None
    if qhat_pi_J is not None:
        qp = jnp.where(valid, qhat_pi_J.astype(jnp.float32), 0.0)
        ql = jnp.where(valid, qhat_logged_J.astype(jnp.float32), 0.0)
        dm = qp
        dr = qp + w * (r - ql)
        dr2 = dr * dr
    return EstimatorStats(
        n=valid.astype(jnp.int32), matched=hit.astype(jnp.int32), sum_w=w, sum_w2=w * w,
        sum_wr=wr, sum_w2r=w * wr, sum_w2r2=wr * wr, sum_match_r=jnp.where(hit, r, 0.0),
        sum_dm=dm, sum_dr=dr, sum_dr2=dr2)


def rows_stats(pi_B, propensity_B, rewards_BxJ, valid_B, qhat_pi_BxJ=None, qhat_logged_BxJ=None,
               floor: float | None = None) -> EstimatorStats:
    """``row_stats`` vmapped: every field keeps the leading row axis B (unsummed; the bootstrap
    weights these terms per resample, ``puts_jax.bootstrap``)."""
    return jax.vmap(lambda *a: row_stats(*a, floor=floor))(
        pi_B, propensity_B, rewards_BxJ, valid_B, qhat_pi_BxJ, qhat_logged_BxJ)


def lambda_rows_stats(pi_BxL, propensity_B, rewards_BxJ, valid_B, qhat_pi_BxLxJ=None,
                      qhat_logged_BxJ=None, floor: float | None = None) -> EstimatorStats:
    """``row_stats`` of L target policies on the same rows, in the [B, L] layout (rows major,
    policies minor): every field f[B, L] or f[B, L, J], unsummed (``sum_rows`` gives [L] stats).

    pi_BxL: target probability of each row's logged decision under each policy;
    qhat_pi_BxLxJ: optional qhat(x, pi) per policy; qhat_logged: optional qhat(x, logged
    decision) per policy f[B, L, J] (``logged_decision_qhat``), or f[B, J] shared by the
    policies; the other arguments as in ``row_stats``.
    The terms are the same elementwise formulas as ``rows_stats``; on XLA:CPU the sums over B
    of [B, L] arrays run about 3x faster than ``chunk_stats`` per policy (the L policies of a
    row sit in the vector lanes).
    """
    if qhat_logged_BxJ is not None and qhat_logged_BxJ.ndim == 2:  # shared by the L policies
        qhat_logged_BxJ = jnp.broadcast_to(qhat_logged_BxJ[:, None, :],
                                           pi_BxL.shape + qhat_logged_BxJ.shape[-1:])

    def one_row(pi_L, p, r_J, v, qp_LxJ, ql_LxJ):
        return jax.vmap(lambda pi, qp, ql: row_stats(pi, p, r_J, v, qp, ql, floor=floor))(
            pi_L, qp_LxJ, ql_LxJ)

    return jax.vmap(one_row)(pi_BxL, propensity_B, rewards_BxJ, valid_B, qhat_pi_BxLxJ,
                             qhat_logged_BxJ)


def sum_rows(per_row: EstimatorStats) -> EstimatorStats:
    """Sum per-row statistics over the leading row axis (f32 sums, i32 counts)."""
    return jax.tree.map(lambda x: jnp.sum(x, axis=0), per_row)


def chunk_stats(pi_B, propensity_B, rewards_BxJ, valid_B, qhat_pi_BxJ=None, qhat_logged_BxJ=None,
                floor: float | None = None) -> EstimatorStats:
    """EstimatorStats of one policy over a chunk of rows: ``row_stats`` vmapped and summed in f32
    (counts in i32) whatever the input dtype (PITFALLS P2)."""
    return sum_rows(rows_stats(pi_B, propensity_B, rewards_BxJ, valid_B, qhat_pi_BxJ,
                               qhat_logged_BxJ, floor=floor))


# ----------------------------------------------------------------------------- host (float64)

def to_host(stats: EstimatorStats) -> EstimatorStats:
    """Device statistics -> numpy (counts int64, sums float64)."""
    def conv(name, x):
        if x is None:
            return None
        return np.asarray(x).astype(np.int64 if name in ("n", "matched") else np.float64)
    return EstimatorStats(*(conv(f, getattr(stats, f)) for f in EstimatorStats._fields))


def merge_stats(a: EstimatorStats | None, b: EstimatorStats) -> EstimatorStats:
    """a + b field by field in float64/int64 on the host (``a = None`` starts a merge)."""
    b = to_host(b)
    if a is None:
        return b
    out = []
    for f in EstimatorStats._fields:
        x, y = getattr(a, f), getattr(b, f)
        if (x is None) != (y is None):
            raise ValueError(f"merge_stats: field {f} present in one operand only")
        out.append(None if x is None else x + y)
    return EstimatorStats(*out)


class Estimates(NamedTuple):
    """Finalized estimates (numpy). Leading policy axis P where the stats had one; J objectives.

    n, matched: int64[P] rows and rows with support; ess: f64[P] (sum w)^2 / sum w^2.
    ips, ips_se, ips_lo, ips_hi: f64[P, J] IPS value, standard error, normal interval.
    snips, snips_se, snips_lo, snips_hi: f64[P, J], NaN where ``snips_defined`` (bool[P]) is False.
    dm: f64[P, J] direct method (NaN without a reward model).
    dr, dr_se, dr_lo, dr_hi: f64[P, J] doubly robust (NaN without a reward model).
    exact_lo, exact_hi: f64[P, J] Clopper-Pearson interval where ``exact_defined`` (bool[P, J]).
    confidence: the interval level.
    """

    n: np.ndarray
    matched: np.ndarray
    ess: np.ndarray
    ips: np.ndarray
    ips_se: np.ndarray
    ips_lo: np.ndarray
    ips_hi: np.ndarray
    snips: np.ndarray
    snips_se: np.ndarray
    snips_lo: np.ndarray
    snips_hi: np.ndarray
    snips_defined: np.ndarray
    dm: np.ndarray
    dr: np.ndarray
    dr_se: np.ndarray
    dr_lo: np.ndarray
    dr_hi: np.ndarray
    exact_lo: np.ndarray
    exact_hi: np.ndarray
    exact_defined: np.ndarray
    confidence: float


def _div(a, b):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b != 0, a / np.where(b != 0, b, 1.0), np.nan)


def _mean_se(total, total_sq, n):
    """Mean and standard error of the mean from sum and sum of squares (unbiased variance)."""
    mean = _div(total, n)
    var = _div(np.maximum(total_sq - n * mean * mean, 0.0), n - 1.0)
    return mean, np.sqrt(_div(var, n))


def clopper_pearson(k, n, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Exact binomial interval (Clopper & Pearson 1934) for successes k out of n (arrays)."""
    from scipy import stats as sps

    k = np.asarray(k, np.float64)
    n = np.asarray(n, np.float64) * np.ones_like(k)
    alpha = 1.0 - confidence
    with np.errstate(invalid="ignore"):
        lo = np.where(k > 0, sps.beta.ppf(alpha / 2, np.maximum(k, 1), n - k + 1), 0.0)
        hi = np.where(k < n, sps.beta.ppf(1 - alpha / 2, k + 1, np.maximum(n - k, 1)), 1.0)
    bad = n <= 0
    return np.where(bad, np.nan, lo), np.where(bad, np.nan, hi)


def _exact(s: EstimatorStats, confidence, reward_kinds, p):
    """Clopper-Pearson interval / p where it is valid: binary reward, constant propensity p and a
    deterministic target (all weights 0 or 1/p, checked from sum w and sum w^2)."""
    shape = s.sum_wr.shape
    nan = np.full(shape, np.nan)
    if p is None or reward_kinds is None:
        return nan, nan.copy(), np.zeros(shape, bool)
    m = s.matched.astype(np.float64)
    tol = 1e-4 * np.maximum(m, 1.0)
    det = (np.abs(s.sum_w * p - m) <= tol) & (np.abs(s.sum_w2 * p * p - m) <= tol)
    binary = np.array([k == "binary" for k in reward_kinds])
    ok = det[..., None] & binary & (s.n[..., None] > 0)
    k = np.round(np.clip(s.sum_match_r, 0.0, None))
    lo, hi = clopper_pearson(k, s.n[..., None], confidence)
    lo, hi = np.clip(lo / p, 0.0, 1.0), np.clip(hi / p, 0.0, 1.0)
    return np.where(ok, lo, np.nan), np.where(ok, hi, np.nan), ok


def finalize(stats: EstimatorStats, confidence: float = 0.95,
             reward_kinds: tuple[str, ...] | None = None,
             constant_propensity: float | None = None) -> Estimates:
    """Estimates with intervals from (merged) statistics. See the module docstring for formulas.

    Args:
      stats: EstimatorStats (device or host; merged in float64 here).
      confidence: interval level in (0, 1).
      reward_kinds: per objective "binary" | "count" | "real"; exact intervals need "binary".
      constant_propensity: the logging propensity when it is the same for every row (e.g. 1/A
        for uniform logging); enables the exact Clopper-Pearson interval.
    """
    from scipy import stats as sps

    s = to_host(stats)
    z = float(sps.norm.ppf(0.5 + confidence / 2))
    n = s.n.astype(np.float64)
    nJ = n[..., None]
    ips, ips_se = _mean_se(s.sum_wr, s.sum_w2r2, nJ)
    sw = s.sum_w[..., None]
    defined = s.matched > 0
    snips = np.where(defined[..., None], _div(s.sum_wr, sw), np.nan)
    resid2 = np.maximum(s.sum_w2r2 - 2 * snips * s.sum_w2r + snips ** 2 * s.sum_w2[..., None], 0.0)
    snips_se = np.where(defined[..., None], _div(np.sqrt(resid2), sw), np.nan)
    nan = np.full(s.sum_wr.shape, np.nan)
    if s.sum_dr is not None:
        dm = _div(s.sum_dm, nJ)
        dr, dr_se = _mean_se(s.sum_dr, s.sum_dr2, nJ)
    else:
        dm, dr, dr_se = nan, nan.copy(), nan.copy()
    ex_lo, ex_hi, ex_ok = _exact(s, confidence, reward_kinds, constant_propensity)
    return Estimates(
        n=s.n, matched=s.matched, ess=_div(s.sum_w ** 2, s.sum_w2),
        ips=ips, ips_se=ips_se, ips_lo=ips - z * ips_se, ips_hi=ips + z * ips_se,
        snips=snips, snips_se=snips_se, snips_lo=snips - z * snips_se,
        snips_hi=snips + z * snips_se, snips_defined=defined,
        dm=dm, dr=dr, dr_se=dr_se, dr_lo=dr - z * dr_se, dr_hi=dr + z * dr_se,
        exact_lo=ex_lo, exact_hi=ex_hi, exact_defined=ex_ok, confidence=float(confidence))
