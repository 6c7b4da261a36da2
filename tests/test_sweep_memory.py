"""The compiled sweep accumulates its sums over row blocks (``lax.scan``): its scratch memory is
one block's, whatever the chunk's rows, with and without the Poisson bootstrap; and a chunk that
is not a whole number of blocks (its last block overlaps the one before) still counts every row
once, against the numpy oracle (estimates and bootstrap replicates)."""

import jax
import numpy as np
import pytest
from flax import nnx

from puts_jax import bootstrap, engine, ope, reference
from puts_jax.config import QNetConfig, SweepConfig
from puts_jax.qnet import QNetwork
from conftest import random_log

D, A, J, R = 5, 8, 2, 8
KINDS = ("binary", "real")
L = 101  # 1024-row blocks (rows * L <= 2^17) for every B >= 1024
LAMS = np.stack([np.linspace(0, 1, L), 1 - np.linspace(0, 1, L)], 1).astype(np.float32)


@pytest.fixture(scope="module")
def model():
    return QNetwork(QNetConfig.tiny(), D, A, KINDS, rngs=nnx.Rngs(0))


def _log(B, seed=0):
    return random_log(B, A, D, seed)


def _abstract(B):
    """The shapes of a B-row log (nothing allocated)."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _log(B))


@pytest.mark.parametrize("n_resamples", [0, 32])
def test_sweep_scratch_memory_does_not_grow_with_rows(model, n_resamples):
    graphdef, params = nnx.split(model)
    sweep = engine.build_sweep(graphdef, SweepConfig(), n_resamples=n_resamples)
    kw = dict(key=jax.random.key(0), first_row=np.uint32(0)) if n_resamples else {}
    temp = {}
    for B in (2048, 16384):
        assert engine._sweep_block_rows(B, L, A, "greedy") == 1024  # the same block size
        compiled = sweep.lower(params, LAMS, _abstract(B), **kw).compile()
        temp[B] = compiled.memory_analysis().temp_size_in_bytes
    assert temp[16384] <= 1.1 * temp[2048], temp  # 8x the rows, the same scratch memory
    # far below the per-row terms of a whole chunk (f32[B, L] for each of 11 fields; with a
    # bootstrap, f32[B, 12 L + 1] for its matmul), which stacking the blocks would hold
    per_row = 12 * L + 1 if n_resamples else 11 * L
    assert temp[16384] < 16384 * per_row * 4 / 4, temp


def test_partial_last_block_matches_the_oracle(model):
    """2500 rows = two 1024-row blocks and a last one that overlaps the second: every row counted
    once, estimates as ``reference.sweep_estimates``, replicates as the oracle's resamples of
    rows first_row + [0, 2500)."""
    B, first, key = 2500, 3000, jax.random.key(4)
    lb = _log(B, seed=1)
    graphdef, params = nnx.split(model)
    sweep = engine.build_sweep(graphdef, SweepConfig(), n_resamples=R)
    st, bt = sweep(params, LAMS, lb, key=key, first_row=np.uint32(first))
    plain = engine.build_sweep(graphdef, SweepConfig())(params, LAMS, lb)
    for f in ope.EstimatorStats._fields:  # the bootstrap leaves the point sums alone
        np.testing.assert_array_equal(getattr(st, f), getattr(plain, f), err_msg=f)
    assert (np.asarray(st.n) == B).all()
    est = ope.finalize(st, 0.95, KINDS, 1 / A)
    q = np.asarray(model(lb.context), np.float64)
    pick = range(0, L, 25)
    want = reference.sweep_estimates(q, LAMS[list(pick)], lb.action, lb.propensity, lb.rewards,
                                     lb.consistent, reward_kinds=KINDS, constant_propensity=1 / A)
    for i, w in zip(pick, want):
        assert int(est.matched[i]) == w["matched"]
        for f in ("ips", "ips_se", "snips", "snips_se", "dm", "dr", "dr_se", "ess", "exact_hi"):
            np.testing.assert_allclose(getattr(est, f)[i], w[f], rtol=2e-5, err_msg=f"{f} {i}")
    m = np.asarray(bootstrap.poisson_multiplicities(bootstrap.key_data(key), first, B, 0, R))
    np.testing.assert_array_equal(bt.n, m.sum(1))  # each row drawn once per resample
    ql = q[np.arange(B), lb.action]
    for i in pick:
        a = np.array([reference.select_action(qb, LAMS[i])[0] for qb in q])
        pi = lb.consistent[np.arange(B), a].astype(np.float64)
        w = reference.bootstrap_replicates(m.astype(np.int64), pi, lb.propensity, lb.rewards,
                                           None, q[np.arange(B), a], ql)
        for name in ("ips", "snips", "dr"):
            np.testing.assert_allclose(bootstrap.replicates(bt, name)[:, i], w[name], rtol=2e-5,
                                       err_msg=f"{name} lambda {i}")
            np.testing.assert_allclose(bootstrap.replicate_se(bt, name)[:, i], w[name + "_se"],
                                       rtol=1e-4, err_msg=f"{name} se lambda {i}")


def test_a_chunk_shorter_than_a_block_and_an_empty_one(model):
    """Fewer rows than one block (padded inside to the block) and zero rows: sums of the real
    rows only."""
    graphdef, params = nnx.split(model)
    sweep = engine.build_sweep(graphdef, SweepConfig())
    lb = _log(300, seed=2)
    st = sweep(params, LAMS[:3], lb)
    want = reference.sweep_estimates(np.asarray(model(lb.context), np.float64), LAMS[:3],
                                     lb.action, lb.propensity, lb.rewards, lb.consistent)
    est = ope.finalize(st)
    for i, w in enumerate(want):
        np.testing.assert_allclose(est.dr[i], w["dr"], rtol=2e-5)
        assert int(est.n[i]) == 300 and int(est.matched[i]) == w["matched"]
    empty = sweep(params, LAMS[:3], jax.tree.map(lambda x: x[:0], lb))
    assert (np.asarray(empty.n) == 0).all() and not np.asarray(empty.sum_w).any()
