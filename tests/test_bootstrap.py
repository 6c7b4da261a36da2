"""Poisson bootstrap: the draws (distribution, determinism, independence of chunking), per-resample
sums against the numpy oracle, percentile intervals, simultaneous bands, dominance probabilities
and the Pareto verdicts they support (hand-computed cases)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats as sps

from puts_jax import bootstrap, ope, pareto, reference
from puts_jax.checks import InputError
from puts_jax.types import BootstrapStats

KEY = bootstrap.key_data(jax.random.key(7))
_mult = jax.jit(bootstrap.poisson_multiplicities, static_argnums=(2, 4))


def _m(first_row, n_rows, r_start, n_r, key=KEY):
    return np.asarray(_mult(key, first_row, n_rows, r_start, n_r)).astype(np.int64)


def test_multiplicities_are_poisson_one():
    m = _m(0, 4096, 0, 64).ravel()  # 262,144 draws
    assert m.mean() == pytest.approx(1.0, abs=0.006) and m.var() == pytest.approx(1.0, abs=0.012)
    counts = np.bincount(m, minlength=6)[:6].astype(np.float64)
    counts[5] = (m >= 5).sum()
    want = sps.poisson.pmf(np.arange(5), 1.0)
    want = np.append(want, 1 - want.sum()) * m.size
    chi2 = ((counts - want) ** 2 / want).sum()
    assert chi2 < sps.chi2.ppf(0.999, 5), (counts, want)
    assert m.max() <= 8
    # the 16-bit thresholds invert the Poisson(1) cdf to within 2^-17
    cdf = np.cumsum([math.exp(-1) / math.factorial(k) for k in range(8)])
    assert np.abs(np.array(bootstrap._POISSON_T16) / 65536 - cdf).max() <= 2 ** -17


def test_draws_depend_only_on_key_row_and_resample():
    whole = _m(1000, 700, 0, 40)
    # any split of the rows and of the resamples gives the same draws
    np.testing.assert_array_equal(np.concatenate([_m(1000, 300, 0, 40), _m(1300, 400, 0, 40)], 1),
                                  whole)
    np.testing.assert_array_equal(np.concatenate([_m(1000, 700, 0, 12), _m(1000, 700, 12, 28)]),
                                  whole)
    np.testing.assert_array_equal(_m(1000, 700, 0, 40), whole)  # same key: same draws
    other = _m(1000, 700, 0, 40, bootstrap.key_data(jax.random.key(8)))
    assert (other != whole).mean() > 0.5  # another key: other draws
    assert (_m(1700, 700, 0, 40) != whole).mean() > 0.5  # other rows: other draws
    # resamples are independent of each other: correlation across rows ~ 0
    c = np.corrcoef(whole.astype(np.float64))[np.triu_indices(40, 1)]
    assert np.abs(c).max() < 0.2


def test_key_must_be_threefry():
    assert bootstrap.key_data(jax.random.PRNGKey(3)).shape == (2,)
    with pytest.raises(InputError, match="threefry key"):
        bootstrap.key_data(jax.random.key(0, impl="rbg"))


def test_resample_sums_match_oracle_and_recompute_the_snips_denominator():
    rng = np.random.default_rng(0)
    B, A, R = 300, 4, 24
    action = rng.integers(0, A, B)
    pi = (action == 2).astype(np.float32)
    p = np.full(B, 1 / A, np.float32)
    r = np.stack([rng.random(B) < 0.4, rng.poisson(0.5, B)], 1).astype(np.float32)
    qp, ql = rng.random((B, 2)).astype(np.float32), rng.random((B, 2)).astype(np.float32)
    valid = rng.random(B) < 0.9
    rows = ope.rows_stats(jnp.asarray(pi), jnp.asarray(p), jnp.asarray(r), jnp.asarray(valid),
                          jnp.asarray(qp), jnp.asarray(ql))
    terms = jax.tree.map(lambda x: x[None], bootstrap.row_terms(rows))  # one policy
    fn = jax.jit(bootstrap.resample_stats, static_argnums=(3, 4))
    got = fn(KEY, 50, terms, R, 8)  # chunks of 8 resamples
    same = fn(KEY, 50, terms, R, 32)  # another resample chunking: the same draws
    for a, b in zip(got, same):
        assert (a is None) == (b is None)
        if a is not None:
            np.testing.assert_allclose(a, b, rtol=1e-6)
    m = _m(50, B, 0, R)
    want = reference.bootstrap_replicates(m, pi, p, r, valid, qp, ql)
    for name in ("ips", "snips", "dr"):
        np.testing.assert_allclose(bootstrap.replicates(got, name)[:, 0], want[name], rtol=1e-5,
                                   err_msg=name)
        assert np.isnan(bootstrap.replicate_se(got, name)).all()  # no second moments
    # with second moments, each resample's own standard error is the oracle's on that resample
    terms2 = jax.tree.map(lambda x: x[None], bootstrap.row_terms(rows, moments=True))
    got2 = fn(KEY, 50, terms2, R, 8)
    np.testing.assert_allclose(got2.sum_wr, got.sum_wr, rtol=1e-6)
    for name in ("ips", "snips", "dr"):
        np.testing.assert_allclose(bootstrap.replicate_se(got2, name)[:, 0], want[name + "_se"],
                                   rtol=1e-4, err_msg=name)
    np.testing.assert_allclose(np.asarray(got.n), (m * valid).sum(1), rtol=1e-6)
    # SNIPS* uses each resample's own sum m w (not the full-sample sum w)
    snips_fixed_denominator = np.asarray(got.sum_wr)[:, 0] / float(rows.sum_w.sum())
    assert not np.allclose(bootstrap.replicates(got, "snips")[:, 0], snips_fixed_denominator)


def test_merge_adds_in_float64_and_rejects_mismatched_fields():
    a = BootstrapStats(np.ones(3, np.float32), np.ones((3, 2)), np.ones((3, 2, 1)), None)
    m = bootstrap.merge(bootstrap.merge(None, a), a)
    assert m.n.dtype == np.float64 and (m.sum_w == 2).all() and m.sum_dr is None
    with pytest.raises(ValueError, match="sum_dr"):
        bootstrap.merge(m, a._replace(sum_dr=np.ones((3, 2, 1))))


def test_percentile_interval_and_undefined_resamples():
    reps = np.arange(1.0, 201.0)[:, None, None] * np.ones((1, 2, 1))  # 1..200 for two points
    reps[:3, 1] = np.nan  # point 1: 1.5% of resamples undefined (<= 2.5%): interval kept
    lo, hi, se = bootstrap.percentile_interval(reps, 0.95)
    # plotting positions q (R + 1): 0.025 * 201 = 5.025 -> between the 5th and 6th smallest
    assert lo[0, 0] == pytest.approx(5.025) and hi[0, 0] == pytest.approx(195.975)
    assert se[0, 0] == pytest.approx(np.arange(1.0, 201.0).std(ddof=1))
    assert np.isfinite(lo[1, 0])
    reps[:6, 1] = np.nan  # 3% undefined > (1 - 0.95) / 2: no interval
    lo, hi, _ = bootstrap.percentile_interval(reps, 0.95)
    assert np.isnan(lo[1, 0]) and np.isnan(hi[1, 0]) and np.isfinite(lo[0, 0])


def _reps_for_band():
    """R = 19 resamples of P = 3 points, J = 2, with hand-set deviations."""
    v = np.array([[0.5, 1.0], [0.4, 2.0], [np.nan, 3.0]])
    dev = np.linspace(-1, 1, 19)
    scale = np.array([1.0, 2.0, 1.0])[:, None]  # point 1 spreads twice as wide
    reps = v + np.stack([dev * 0.01, dev * 0.02], -1)[:, None, :] * scale
    return v, reps


def test_bootstrap_band_hand_computed():
    v, reps = _reps_for_band()
    # studentized: t = |dev| / sd(dev) for every included point; max over points = |dev| / sd
    sd = np.linspace(-1, 1, 19).std(ddof=1)
    band = bootstrap.bootstrap_band(v, reps, 0.9, studentize=True, joint=False)
    k = math.ceil(20 * 0.9)  # the 18th smallest of 19
    crit = np.sort(np.abs(np.linspace(-1, 1, 19)))[k - 1] / sd
    np.testing.assert_allclose(band.critical, [crit, crit])
    np.testing.assert_allclose(band.hi[0, 0] - v[0, 0], crit * 0.01 * sd, rtol=1e-9)
    np.testing.assert_allclose(band.hi[1, 1] - v[1, 1], crit * 0.04 * sd, rtol=1e-9)
    assert np.isnan(band.lo[2, 0]) and np.isfinite(band.lo[2, 1])  # NaN value: left out there
    joint = bootstrap.bootstrap_band(v, reps, 0.9, joint=True)
    np.testing.assert_allclose(joint.critical, [crit, crit])  # same shape of deviations
    raw = bootstrap.bootstrap_band(v, reps, 0.9, studentize=False)
    np.testing.assert_allclose(raw.critical, np.sort(np.abs(np.linspace(-1, 1, 19)))[k - 1]
                               * np.array([0.02, 0.04]))  # the widest point sets it
    with pytest.raises(InputError, match="studentize"):
        bootstrap.bootstrap_band(v, reps, joint=True, studentize=False)


def test_bootstrap_t_band_studentizes_each_resample():
    # two points; point 0's resamples with a large deviation also have a large own SE
    v = np.array([[0.5], [0.2]])
    dev = np.linspace(-1, 1, 39)
    reps = v[None] + np.stack([0.1 * dev, 0.01 * dev], 1)[..., None]
    reps_se = np.stack([0.05 * (1 + np.abs(dev)), np.full(39, 0.01)], 1)[..., None]
    se = np.array([[0.05], [0.01]])
    band = bootstrap.bootstrap_band(v, reps, 0.95, se=se, reps_se=reps_se)
    t = np.maximum(np.abs(0.1 * dev) / (0.05 * (1 + np.abs(dev))), np.abs(dev))
    crit = np.sort(t)[math.ceil(40 * 0.95) - 1]
    np.testing.assert_allclose(band.critical, [crit])
    np.testing.assert_allclose(band.hi[:, 0] - v[:, 0], crit * se[:, 0])
    assert band.method.startswith("Poisson bootstrap bootstrap-t")
    bad = reps_se.copy()
    bad[0, 1] = np.nan  # an undefined own SE counts as not covered
    assert bootstrap.bootstrap_band(v, reps, 0.95, se=se, reps_se=bad).critical[0] >= crit


def test_bonferroni_band():
    v = np.array([[0.5, 1.0], [0.4, np.nan], [0.3, 2.0], [0.2, 2.5], [0.1, 3.0]])
    se = np.full_like(v, 0.1)
    band = bootstrap.bonferroni_band(v, se, 0.95)
    np.testing.assert_allclose(band.critical, [sps.norm.ppf(1 - 0.05 / 10),
                                               sps.norm.ppf(1 - 0.05 / 8)])
    joint = bootstrap.bonferroni_band(v, se, 0.95, joint=True)
    np.testing.assert_allclose(joint.critical, sps.norm.ppf(1 - 0.05 / 18))
    assert np.isnan(band.hi[1, 1]) and band.hi[0, 0] == pytest.approx(0.5 + 0.1 * band.critical[0])


def test_dominance_probability_hand_case():
    # 4 resamples, points (x max, y max): q=0 dominates p=1 in resamples 0, 1, 2; ties on every
    # objective (resample 3) never dominate; a NaN replicate never dominates or is dominated.
    reps = np.array([[[2, 2], [1, 1], [0, 5]],
                     [[2, 1], [1, 1], [0, 5]],
                     [[1, 2], [1, 1], [np.nan, 5]],
                     [[1, 1], [1, 1], [0, 5]]], np.float64)
    d = bootstrap.dominance_probability(reps)
    assert d[0, 1] == 0.75 and d[1, 0] == 0.0 and (np.diag(d) == 0).all()
    assert d[2, 1] == 0.0 and d[0, 2] == 0.0 and d[1, 2] == 0.0
    d_min = bootstrap.dominance_probability(reps, ("min", "max"))  # x minimized
    assert d_min[1, 0] == 0.25  # only resample 1: x 1 < 2 and y 1 >= 1


def test_frontier_evidence_verdicts_use_the_band():
    rng = np.random.default_rng(1)
    v = np.array([[0.50, 0.50], [0.30, 0.30], [0.49, 0.51], [0.45, 0.46]])
    reps = v + 0.01 * rng.standard_normal((400, 4, 2))
    fe = bootstrap.frontier_evidence(v, reps=reps, confidence=0.95)
    # point 1 is far below 0 on both objectives: clearly dominated, at the band's confidence
    assert fe.verdicts[1] == pareto.CLEARLY_DOMINATED
    assert fe.verdicts[0] == fe.verdicts[2] == pareto.NONDOMINATED
    assert fe.verdicts[3] == pareto.NOT_SEPARABLE  # dominated, but within the bands' noise
    assert fe.dominance[0, 1] == 1.0 and 0.0 < fe.dominance[0, 3] < 1.0
    assert fe.band.joint and fe.band.critical[0] > fe.band_per_objective.critical.max()
    no_boot = bootstrap.frontier_evidence(v, se=np.full_like(v, 0.01), confidence=0.95)
    assert no_boot.dominance is None and no_boot.band.method.startswith("Bonferroni")
    assert no_boot.verdicts[1] == pareto.CLEARLY_DOMINATED


def test_bootstrap_se_agrees_with_delta_method_on_a_large_log():
    rng = np.random.default_rng(2)
    B, A, R = 20000, 5, 200
    action = rng.integers(0, A, B)
    pi = (action == 1).astype(np.float32)
    r = (rng.random((B, 1)) < 0.3 + 0.2 * (action == 1)[:, None]).astype(np.float32)
    args = (jnp.asarray(pi), jnp.full(B, 1 / A, jnp.float32), jnp.asarray(r), jnp.ones(B, bool))
    rows = ope.rows_stats(*args)
    boot = jax.jit(bootstrap.resample_stats, static_argnums=(3,))(
        KEY, 0, jax.tree.map(lambda x: x[None], bootstrap.row_terms(rows)), R)
    est = ope.finalize(ope.sum_rows(rows))
    b = bootstrap.finalize(boot)
    for name in ("ips", "snips"):
        se = float(getattr(b, f"{name}_se")[0, 0])
        assert se == pytest.approx(float(np.ravel(getattr(est, f"{name}_se"))[0]), rel=0.15), name
    assert b.n_resamples == R and (b.snips_defined == 1).all()
    assert np.isnan(b.dr_lo).all()  # no reward model: no DR
