"""Estimators: hand-computed cases, PITFALLS P1/P2, and agreement with the numpy oracle."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from puts_jax import checks, ope, reference
from puts_jax.checks import InputError


def _est(pi, p, r, floor=None, **kw):
    st = ope.chunk_stats(jnp.asarray(pi, jnp.float32), jnp.asarray(p, jnp.float32),
                         jnp.asarray(r), jnp.ones(len(pi), bool), floor=floor)
    return ope.finalize(st, **kw)


def test_p1a_probability_table_rejects_rows():
    table = [[0.5, 0.5], [0.0, 0.0], [-0.127094, -0.0635469], [0.7, 0.31]]
    with pytest.raises(InputError, match=r"action_probs: .*sum to 1 \(tol 1e-06\) at rows \[1, 2, 3\]"):
        checks.check_distribution(np.array(table))


def test_p1b_positivity_error_and_explicit_floor():
    r = np.array([[1.0], [1.0], [0.0]], np.float32)
    p = np.array([0.5, 0.0, 0.3])
    pi = np.array([1.0, 1.0, 0.0])
    with pytest.raises(InputError, match=r"positivity.*rows \[1\]"):
        checks.check_propensity(p)
    floored = checks.check_propensity(p, floor=0.01)
    w = ope.importance_weight(jnp.asarray(pi), jnp.asarray(floored))
    np.testing.assert_array_equal(w, [2.0, 100.0, 0.0])
    np.testing.assert_array_equal(ope.importance_weight(jnp.asarray(pi), jnp.asarray(p), 0.01),
                                  [2.0, 100.0, 0.0])
    est = _est(pi, p, r, floor=0.01)
    assert float(est.ips[0]) == pytest.approx(34.0, abs=1e-12)
    # a round the target never takes contributes exactly 0, even at propensity 0 without a floor
    assert float(ope.importance_weight(jnp.float32(0.0), jnp.float32(0.0))) == 0.0
    assert np.isfinite(float(ope.importance_weight(jnp.float32(0.0), jnp.float32(0.0))))


def test_p2_bf16_inputs_accumulate_exactly():
    """10,000 rows, weight 1, reward 0.5 in bf16 -> IPS 0.5; 1828 valid of 2048 -> n 1828."""
    B = 10_000
    st = ope.chunk_stats(jnp.ones(B, jnp.bfloat16), jnp.ones(B, jnp.bfloat16),
                         jnp.full((B, 1), 0.5, jnp.bfloat16), jnp.ones(B, bool))
    assert float(ope.finalize(st).ips[0]) == 0.5
    valid = np.zeros(2048, bool)
    valid[:1828] = True
    st = jax.jit(ope.chunk_stats)(jnp.ones(2048, jnp.bfloat16), jnp.ones(2048, jnp.bfloat16),
                                  jnp.ones((2048, 1), jnp.bfloat16), jnp.asarray(valid))
    assert int(st.n) == 1828 and int(st.matched) == 1828 and float(st.sum_wr[0]) == 1828.0


def test_hand_computed_ips_snips_ess():
    # weights [2, 0, 4], rewards [1, 1, 0.5]: IPS = (2 + 0 + 2)/3, SNIPS = 4/6
    est = _est([1.0, 0.0, 1.0], [0.5, 0.5, 0.25], np.array([[1.0], [1.0], [0.5]], np.float32))
    assert est.ips[0] == pytest.approx(4 / 3)
    assert est.snips[0] == pytest.approx(2 / 3)
    assert est.ess == pytest.approx(36 / 20)
    assert int(est.matched) == 2 and int(est.n) == 3
    # delta-method se: sqrt(sum w^2 (r - V)^2) / sum w
    want = np.sqrt(4 * (1 / 3) ** 2 + 16 * (1 / 6) ** 2) / 6
    assert est.snips_se[0] == pytest.approx(want)


def test_snips_undefined_without_support_not_zero():
    est = _est([0.0, 0.0], [0.5, 0.5], np.ones((2, 2), np.float32))
    assert not bool(est.snips_defined)
    assert np.isnan(est.snips).all() and np.isnan(est.snips_lo).all()
    assert (est.ips == 0).all() and int(est.matched) == 0


def test_clopper_pearson_zero_successes_non_degenerate():
    lo, hi = ope.clopper_pearson(0, 100)
    assert float(lo) == 0.0 and 0 < float(hi) < 1
    assert float(hi) == pytest.approx(1 - 0.025 ** (1 / 100))
    rlo, rhi = reference.clopper_pearson(0, 100)
    assert float(hi) == pytest.approx(rhi, rel=1e-6)
    lo, hi = ope.clopper_pearson(7, 50, 0.9)
    rlo, rhi = reference.clopper_pearson(7, 50, 0.9)
    assert (float(lo), float(hi)) == pytest.approx((rlo, rhi), rel=1e-6)


def test_exact_interval_scaled_by_constant_propensity():
    rng = np.random.default_rng(1)
    n, A = 400, 4
    match = rng.random(n) < 1 / A
    r = (rng.random((n, 1)) < 0.1).astype(np.float32)
    r[match] = 0.0  # zero matched successes: IPS 0, normal CI [0, 0], exact CI [0, hi > 0]
    est = _est(match.astype(np.float32), np.full(n, 1 / A), r, reward_kinds=("binary",),
               constant_propensity=1 / A)
    assert est.ips[0] == 0 and est.ips_hi[0] == 0
    assert bool(est.exact_defined[0]) and est.exact_lo[0] == 0 and est.exact_hi[0] > 0
    _, hi = reference.clopper_pearson(0, n)
    assert est.exact_hi[0] == pytest.approx(hi * A, rel=1e-6)
    # a stochastic target (weights not in {0, 1/p}) gets no exact interval
    est = _est(np.full(n, 0.5, np.float32), np.full(n, 1 / A), r, reward_kinds=("binary",),
               constant_propensity=1 / A)
    assert not bool(est.exact_defined[0]) and np.isnan(est.exact_lo[0])


@pytest.mark.parametrize("kind,param", [("greedy", 0.0), ("epsilon_greedy", 0.2), ("softmax", 0.5)])
def test_policy_probs_match_reference(kind, param):
    rng = np.random.default_rng(2)
    s = rng.normal(size=(20, 5)).astype(np.float32)
    s[3, 1] = np.nan
    got = jax.vmap(lambda x: ope.policy_probs(x, kind, param, 2))(s)
    want = np.stack([reference.policy_probs(x, kind, param, 2) for x in s])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(got).sum(1), 1.0, rtol=1e-6)


def test_deterministic_target_prob_is_the_one_hot_case():
    _, action, consistent, *_ = _random_log(B=40)
    a = np.arange(40) % 5
    got = jax.vmap(ope.deterministic_target_prob)(consistent, a)
    one_hot = np.eye(5, dtype=np.float32)[a]
    np.testing.assert_array_equal(got, jax.vmap(ope.target_prob)(one_hot, consistent))


def _random_log(B=300, A=5, J=2, seed=3):
    rng = np.random.default_rng(seed)
    s = rng.normal(size=(B, A)).astype(np.float32)
    action = rng.integers(0, A, B)
    consistent = np.eye(A, dtype=bool)[action]
    consistent[::7, (action[::7] + 1) % A] = True  # slot-level style: two consistent actions
    p = rng.uniform(0.1, 0.6, B)
    r = np.stack([rng.random(B) < 0.3, rng.random(B) * 2], 1).astype(np.float32)[:, :J]
    qhat = rng.random((B, A, J)).astype(np.float32)
    valid = rng.random(B) < 0.9
    return s, action, consistent, p, r, qhat, valid


@pytest.mark.parametrize("kind,param", [("greedy", 0.0), ("epsilon_greedy", 0.1), ("softmax", 1.0)])
def test_estimates_match_reference(kind, param):
    s, action, consistent, p, r, qhat, valid = _random_log()
    probs = jax.vmap(lambda x: ope.policy_probs(x, kind, param))(s)
    pi = jax.vmap(ope.target_prob)(probs, consistent)
    qp = jnp.einsum("ba,baj->bj", probs, qhat)
    ql = qhat[np.arange(len(action)), action]
    fn = jax.jit(ope.chunk_stats)
    st = fn(pi, p.astype(np.float32), r, valid, qp, ql)
    eager = ope.chunk_stats(pi, p.astype(np.float32), r, valid, qp, ql)
    for a, b in zip(st, eager):
        np.testing.assert_allclose(a, b, rtol=1e-5)
    est = ope.finalize(st, 0.9, ("binary", "real"))
    ref = reference.estimate(np.asarray(pi), p.astype(np.float32), r, valid, np.asarray(qp), ql,
                             confidence=0.9, reward_kinds=("binary", "real"))
    for key in ("ips", "ips_lo", "ips_hi", "snips", "snips_lo", "snips_hi", "dm", "dr", "dr_lo",
                "dr_hi", "ess"):
        np.testing.assert_allclose(getattr(est, key), ref[key], rtol=2e-5, err_msg=key)
    assert int(est.n) == ref["n"] and int(est.matched) == ref["matched"]


def test_merged_chunks_equal_single_pass():
    s, action, consistent, p, r, qhat, valid = _random_log(B=301)
    pi = consistent[np.arange(len(s)), s.argmax(1)].astype(np.float32)
    args = (pi, p.astype(np.float32), r, valid)
    whole = ope.finalize(ope.merge_stats(None, ope.chunk_stats(*args)))
    merged = None
    for lo in range(0, 301, 64):
        merged = ope.merge_stats(merged, ope.chunk_stats(*(a[lo:lo + 64] for a in args)))
    parts = ope.finalize(merged)
    for a, b, f in zip(whole, parts, ope.Estimates._fields):
        np.testing.assert_allclose(a, b, rtol=1e-6, err_msg=f)
