"""Numpy-only oracle of every kernel and estimator (no jax import). Tests and bench compare the
compiled code against these plain, loop-light implementations, computed in float64.

Independence: top-k uses a stable sort (not a partial selection), estimators are computed from
per-row arrays with ``np.mean``/``np.std`` (not from merged sums), and the exact interval inverts
the binomial CDF by bisection (not the beta quantile ``ope`` uses).
"""

from __future__ import annotations

import math

import numpy as np

from puts_jax.types import ServeOutput


def scalarize(q_AxJ, lam_J) -> np.ndarray:
    return np.asarray(q_AxJ, np.float64) @ np.asarray(lam_J, np.float64)


def select_action(q_AxJ, lam_J, fallback: int = 0) -> tuple[int, bool]:
    """(first argmax of q @ lam, used_fallback); any non-finite scalarized entry -> fallback."""
    s = scalarize(q_AxJ, lam_J)
    if not np.all(np.isfinite(s)):
        return int(fallback), True
    return int(np.flatnonzero(s == s.max())[0]), False


def reweight(preds_NxK, w_K) -> np.ndarray:
    return np.asarray(preds_NxK, np.float64) @ np.asarray(w_K, np.float64)


def masked_top_k(scores_N, mask_N, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Stable sort of real, finite scores, descending, ties to the lowest index; -1 / -inf pad."""
    s = np.asarray(scores_N, np.float64)
    ok = np.asarray(mask_N, bool) & np.isfinite(s)
    cand = np.flatnonzero(ok)
    order = cand[np.argsort(-s[cand], kind="stable")][:k]
    idx = np.full(k, -1, np.int64)
    val = np.full(k, -np.inf)
    idx[:len(order)] = order
    val[:len(order)] = s[order]
    return idx, val


def serve(q_BxAxJ, lam_J, W_AxK, preds_BxNxK, mask_BxN, k: int, fallback: int = 0) -> ServeOutput:
    """Row-by-row serve pass; returns a ServeOutput of numpy arrays."""
    B = len(q_BxAxJ)
    action = np.zeros(B, np.int64)
    fb = np.zeros(B, bool)
    idx = np.zeros((B, k), np.int64)
    val = np.zeros((B, k))
    bad = np.zeros(B, np.int64)
    for b in range(B):
        action[b], fb[b] = select_action(q_BxAxJ[b], lam_J, fallback)
        with np.errstate(invalid="ignore", over="ignore"):
            s = reweight(preds_BxNxK[b], np.asarray(W_AxK)[action[b]])
        bad[b] = int((np.asarray(mask_BxN[b], bool) & ~np.isfinite(s)).sum())
        idx[b], val[b] = masked_top_k(s, mask_BxN[b], k)
    return ServeOutput(action, idx, val, bad, fb)


def sweep_actions(q_BxAxJ, lams_LxJ, fallback: int = 0) -> np.ndarray:
    return np.array([[select_action(q, lam, fallback)[0] for q in q_BxAxJ] for lam in lams_LxJ])


def policy_probs(s_A, kind: str = "greedy", param: float = 0.0, fallback: int = 0) -> np.ndarray:
    s = np.asarray(s_A, np.float64)
    A = len(s)
    finite = bool(np.all(np.isfinite(s)))
    one_hot = np.zeros(A)
    one_hot[int(np.flatnonzero(s == s.max())[0]) if finite else fallback] = 1.0
    if kind == "greedy":
        return one_hot
    if kind == "epsilon_greedy":
        return (1 - param) * one_hot + param / A
    if not finite:
        return one_hot
    e = np.exp((s - s.max()) / param)
    return e / e.sum()


def _norm_ppf(q: float) -> float:
    lo, hi = -10.0, 10.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if 0.5 * math.erfc(-mid / math.sqrt(2)) < q:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def _binom_cdf(k: int, n: int, p: float) -> float:
    from scipy import stats as sps
    return float(sps.binom.cdf(k, n, p))


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Invert the binomial tails by bisection (Clopper & Pearson 1934): lo solves
    P(X >= k; lo) = a/2 and hi solves P(X <= k; hi) = a/2."""
    a = 1 - confidence

    def solve_increasing(g, target):
        lo, hi = 0.0, 1.0
        for _ in range(100):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if g(mid) < target else (lo, mid)
        return (lo + hi) / 2

    low = 0.0 if k == 0 else solve_increasing(lambda p: 1 - _binom_cdf(k - 1, n, p), a / 2)
    high = 1.0 if k == n else solve_increasing(lambda p: -_binom_cdf(k, n, p), -a / 2)
    return low, high


def estimate(pi, propensity, rewards, valid=None, qhat_pi=None, qhat_logged=None,
             floor: float | None = None, confidence: float = 0.95, reward_kinds=None,
             constant_propensity: float | None = None) -> dict:
    """Every estimator for ONE policy from per-row arrays (pi f[B], propensity f[B], rewards
    f[B, J]; qhat_pi, qhat_logged f[B, J]: the reward model under the policy and at the logged
    decision, ``logged_decision_qhat``); returns a dict keyed like ``ope.Estimates`` (without the
    policy axis)."""
    r = np.asarray(rewards, np.float64)
    keep = np.ones(len(r), bool) if valid is None else np.asarray(valid, bool)
    r, pi = r[keep], np.asarray(pi, np.float64)[keep]
    p = np.asarray(propensity, np.float64)[keep]
    if floor is not None:
        p = np.maximum(p, floor)
    w = np.zeros_like(pi)
    w[pi > 0] = pi[pi > 0] / p[pi > 0]
    n, J = r.shape
    z = _norm_ppf(0.5 + confidence / 2)
    x = w[:, None] * r
    out = {"n": n, "matched": int((pi > 0).sum()), "ess": w.sum() ** 2 / (w ** 2).sum()
           if (w ** 2).sum() > 0 else np.nan}
    out["ips"] = x.mean(0)
    out["ips_se"] = x.std(0, ddof=1) / np.sqrt(n)
    if w.sum() > 0:
        v = x.sum(0) / w.sum()
        out["snips"] = v
        out["snips_se"] = np.sqrt(((w[:, None] * (r - v)) ** 2).sum(0)) / w.sum()
    else:
        out["snips"] = out["snips_se"] = np.full(J, np.nan)
    if qhat_pi is not None:
        qp = np.asarray(qhat_pi, np.float64)[keep]
        ql = np.asarray(qhat_logged, np.float64)[keep]
        d = qp + w[:, None] * (r - ql)
        out["dm"] = qp.mean(0)
        out["dr"] = d.mean(0)
        out["dr_se"] = d.std(0, ddof=1) / np.sqrt(n)
    for name in ("ips", "snips", "dr"):
        if name in out:
            out[name + "_lo"] = out[name] - z * out[name + "_se"]
            out[name + "_hi"] = out[name] + z * out[name + "_se"]
    lo, hi = np.full(J, np.nan), np.full(J, np.nan)
    if constant_propensity is not None and reward_kinds is not None:
        for j, kind in enumerate(reward_kinds):
            if kind == "binary":
                k = int(round(((pi > 0) * r[:, j]).sum()))
                a, b = clopper_pearson(k, n, confidence)
                lo[j] = min(a / constant_propensity, 1.0)
                hi[j] = min(b / constant_propensity, 1.0)
    out["exact_lo"], out["exact_hi"] = lo, hi
    return out


def sweep_estimates(q_BxAxJ, lams_LxJ, action, propensity, rewards, consistent, valid=None,
                    fallback: int = 0, floor: float | None = None, with_dr: bool = True,
                    **kw) -> list[dict]:
    """``estimate`` of the greedy target policy of every lambda, the Q-values also serving as the
    reward model for DM/DR (as ``engine.build_sweep`` does): qhat(x, pi) = Q[a*] and qhat(x,
    logged decision) = ``logged_decision_qhat`` (the target-weighted mean of Q over the actions
    consistent with the logged one). Rows with action -1 (logged outside the action set) have
    no consistent action."""
    q = np.asarray(q_BxAxJ, np.float64)
    rows = np.arange(len(q))
    cons = np.asarray(consistent, bool)
    out = []
    for lam in lams_LxJ:
        a = np.array([select_action(qb, lam, fallback)[0] for qb in q_BxAxJ])
        pi = cons[rows, a].astype(np.float64)
        probs = np.eye(q.shape[1])[a]
        qp = q[rows, a] if with_dr else None
        ql = logged_decision_qhat(probs, cons, q) if with_dr else None
        out.append(estimate(pi, propensity, rewards, valid, qp, ql, floor=floor, **kw))
    return out


def logged_decision_qhat(probs_BxA, consistent_BxA, q_BxAxJ) -> np.ndarray:
    """f64[B, J] qhat(x, logged decision) = sum_a c pi Q / sum_a c pi over the consistent actions
    c (0 where the target never makes the logged decision), row by row."""
    out = np.zeros((len(q_BxAxJ), np.shape(q_BxAxJ)[2]))
    for b, (p, c, q) in enumerate(zip(probs_BxA, consistent_BxA, q_BxAxJ)):
        m = np.asarray(c, bool) & (np.asarray(p) > 0)
        if m.any():
            out[b] = np.average(np.asarray(q, np.float64)[m], axis=0, weights=np.asarray(p)[m])
    return out


def bootstrap_replicates(mult_RxB, pi, propensity, rewards, valid=None, qhat_pi=None,
                         qhat_logged=None, floor: float | None = None) -> dict:
    """IPS / SNIPS / DR of ONE policy and their standard errors ("ips_se", ...) recomputed on
    each bootstrap resample: f64[R, J] each. Resample r repeats row b mult[r, b] times
    (``np.repeat``) and runs ``estimate`` on the expanded log, so every estimator, the SNIPS
    denominator included, is recomputed from rows (independent of the matmul form in
    ``puts_jax.bootstrap``)."""
    m = np.asarray(mult_RxB, np.int64)
    keep = np.ones(m.shape[1], bool) if valid is None else np.asarray(valid, bool)
    cols = {"pi": pi, "propensity": propensity, "rewards": rewards, "qhat_pi": qhat_pi,
            "qhat_logged": qhat_logged}
    out = {k: [] for k in ("ips", "snips", "dr", "ips_se", "snips_se", "dr_se")}
    for m_r in m:
        idx = np.repeat(np.flatnonzero(keep), m_r[keep])
        e = estimate(**{k: None if v is None else np.asarray(v)[idx] for k, v in cols.items()},
                     floor=floor)
        for name in out:
            out[name].append(e.get(name, np.full(np.shape(rewards)[1], np.nan)))
    return {k: np.asarray(v, np.float64) for k, v in out.items()}
