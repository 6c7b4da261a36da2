"""Streaming evaluation with the Poisson bootstrap: any chunking gives the same resamples and sums,
every program (sweep, fixed baselines, per-row actions) matches the numpy oracle resample by
resample, keys are explicit, and a new lambda, key or chunk offset never recompiles."""

import jax
import numpy as np
import pytest
from flax import nnx

from puts_jax import bootstrap, engine, evaluation, reference
from puts_jax.checks import InputError
from puts_jax.config import QNetConfig, SweepConfig
from puts_jax.qnet import QNetwork
from conftest import random_log

D, A, R = 5, 8, 24
KINDS = ("binary", "real")
LAMS = np.array([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]], np.float32)
CFG = SweepConfig(n_lambdas=3, chunk_rows=256, lambda_chunk=2)


@pytest.fixture(scope="module")
def model():
    return QNetwork(QNetConfig.tiny(), D, A, KINDS, rngs=nnx.Rngs(0))


def _log(B, seed=0):
    return random_log(B, A, D, seed)


def _split(lb, sizes):
    out, lo = [], 0
    for s in sizes:
        out.append(jax.tree.map(lambda x: x[lo:lo + s], lb))
        lo += s
    return out


def _mult(n_rows, key):
    """The multiplicities of rows [0, n_rows) as the device draws them."""
    return np.asarray(bootstrap.poisson_multiplicities(bootstrap.key_data(key), 0, n_rows, 0,
                                                       4 * -(-R // 4)))[:R].astype(np.int64)


def test_streamed_bootstrap_equals_one_pass_for_any_chunking(model):
    lb, key = _log(700), jax.random.key(1)
    base = evaluation.fixed_action_probs([0, 3], A, uniform=True)
    kw = dict(baselines=base, bootstrap=R, key=key)
    one = evaluation.evaluate_log(model, LAMS, [lb], CFG, **kw)
    for sizes in ([150] * 4 + [100], [1, 699], [256, 256, 188]):
        st = evaluation.evaluate_log(model, LAMS, iter(_split(lb, sizes)), CFG, **kw)
        for a, b in ((one.boot_stats, st.boot_stats), (one.baseline_boot_stats,
                                                         st.baseline_boot_stats)):
            for f in a._fields:
                if getattr(a, f) is not None:
                    np.testing.assert_allclose(getattr(b, f), getattr(a, f), rtol=2e-6,
                                               atol=1e-5, err_msg=f"{f} {sizes}")
    # points and baselines are resampled together (the same multiplicities per row)
    np.testing.assert_array_equal(one.boot_stats.n, one.baseline_boot_stats.n)
    assert one.boot_stats.sum_wr.shape == (R, 3, 2)
    assert one.baseline_boot_stats.sum_w.shape == (R, 3)
    # the point estimates are those without a bootstrap
    plain = evaluation.evaluate_log(model, LAMS, [lb], CFG, baselines=base)
    np.testing.assert_array_equal(plain.estimates.snips, one.estimates.snips)
    assert plain.boot is None and plain.boot_stats is None


def test_sweep_replicates_match_the_oracle(model):
    lb, key = _log(600, seed=2), jax.random.key(3)
    ev = evaluation.evaluate_log(model, LAMS, iter(_split(lb, [300, 300])), CFG, bootstrap=R,
                                 key=key)
    m = _mult(600, key)
    q = np.asarray(model(lb.context), np.float64)
    ql = q[np.arange(600), lb.action]
    for i, lam in enumerate(LAMS):
        a = np.array([reference.select_action(qb, lam)[0] for qb in q])
        pi = lb.consistent[np.arange(600), a].astype(np.float64)
        want = reference.bootstrap_replicates(m, pi, lb.propensity, lb.rewards, None,
                                              q[np.arange(600), a], ql)
        for name in ("ips", "snips", "dr"):
            np.testing.assert_allclose(bootstrap.replicates(ev.boot_stats, name)[:, i],
                                       want[name], rtol=2e-5, err_msg=f"{name} lambda {i}")
            np.testing.assert_allclose(bootstrap.replicate_se(ev.boot_stats, name)[:, i],
                                       want[name + "_se"], rtol=1e-4, err_msg=f"{name} se {i}")
    b = ev.boot
    assert b.n_resamples == R and b.snips_lo.shape == (3, 2)
    assert np.isfinite(b.snips_lo).all() and (b.snips_lo < b.snips_hi).all()


def test_fixed_and_per_row_programs_match_the_oracle(model):
    lb, key = _log(500, seed=4), jax.random.key(5)
    m = _mult(500, key)
    fixed = evaluation.evaluate_fixed_actions([2, 6], A, iter(_split(lb, [128, 372])), CFG,
                                              bootstrap=R, key=key)
    rows = np.stack([np.full(500, 2), np.arange(500) % A])
    per_row = evaluation.evaluate_fixed_actions(rows, A, iter(_split(lb, [200, 300])), CFG,
                                                model=model, bootstrap=R, key=key)
    q = np.asarray(model(lb.context), np.float64)
    ql = q[np.arange(500), lb.action]
    np.testing.assert_allclose(bootstrap.replicates(per_row.boot_stats, "snips")[:, 0],
                               bootstrap.replicates(fixed.boot_stats, "snips")[:, 0], rtol=1e-6)
    for i, acts in enumerate(rows):
        pi = lb.consistent[np.arange(500), acts].astype(np.float64)
        want = reference.bootstrap_replicates(m, pi, lb.propensity, lb.rewards, None,
                                              q[np.arange(500), acts], ql)
        for name in ("ips", "snips", "dr"):
            np.testing.assert_allclose(bootstrap.replicates(per_row.boot_stats, name)[:, i],
                                       want[name], rtol=2e-5, err_msg=f"{name} policy {i}")
    assert np.isnan(bootstrap.replicates(fixed.boot_stats, "dr")).all()  # no reward model


def test_keys_are_explicit_and_change_the_draws(model):
    lb = _log(300, seed=6)
    with pytest.raises(InputError, match="explicit key"):
        evaluation.evaluate_log(model, LAMS, [lb], CFG, bootstrap=R)
    with pytest.raises(InputError, match="bootstrap"):
        evaluation.evaluate_fixed_actions([1], A, [lb], CFG, bootstrap=-3, key=jax.random.key(0))
    with pytest.raises(InputError, match="one resample"):
        evaluation.evaluate_fixed_actions([1], A, [lb], CFG, bootstrap=1, key=jax.random.key(0))
    run = lambda k: evaluation.evaluate_fixed_actions([1], A, [lb], CFG, bootstrap=R,  # noqa: E731
                                                      key=jax.random.key(k)).boot_stats.sum_wr
    np.testing.assert_array_equal(run(11), run(11))
    assert not np.array_equal(run(11), run(12))


def test_bootstrap_program_compiles_once(model):
    graphdef, params = nnx.split(model)
    sweep = engine.build_sweep(graphdef, CFG, n_resamples=R)
    lb = evaluation._pad_rows(_log(100), 128)
    start = engine.TRACE_COUNTS["sweep"]
    for i, a in enumerate((0.0, 0.25, 0.5)):
        st, bt = sweep(params, np.array([[a, 1 - a], [1 - a, a]], np.float32), lb,
                       key=jax.random.key(i), first_row=128 * i)
    assert engine.TRACE_COUNTS["sweep"] - start == 1
    assert bt.sum_w.shape == (R, 2) and int(st.n[0]) == 100
    assert float(bt.n.mean()) == pytest.approx(100, rel=0.2)  # padding rows never count
