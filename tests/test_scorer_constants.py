"""``Scorer(params_as_constants=True)``: the same rows as the numpy reference, lambda changes
compile nothing, and ``set_params`` serves the new parameters (recompiling once per shape)."""

import numpy as np
import pytest
from flax import nnx

from puts_jax import engine, reference
from puts_jax.config import QNetConfig, ScoringConfig
from puts_jax.qnet import QNetwork
from puts_jax.types import RequestBatch

D, A, K, N = 5, 8, 2, 40
KINDS = ("binary", "real")


def _weights():
    return (np.random.default_rng(9).integers(0, 5, (A, K)) / 4).astype(np.float32)


def _requests(B, seed):
    rng = np.random.default_rng(seed)
    preds = (rng.integers(0, 9, (B, N, K)) / 8).astype(np.float32)  # exact arithmetic, ties
    preds[::7, 2, 1] = np.nan
    return RequestBatch(rng.normal(size=(B, D)).astype(np.float32), preds,
                        rng.random((B, N)) < 0.7, np.ones(B, bool))


def _check(got, model, lam, batch):
    want = reference.serve(np.asarray(model(batch.context)), lam, _weights(), batch.preds,
                           batch.mask, 4)
    np.testing.assert_array_equal(got.action, want.action)
    np.testing.assert_array_equal(got.topk_index, want.topk_index)
    np.testing.assert_allclose(got.topk_score, want.topk_score, rtol=1e-6)
    np.testing.assert_array_equal(got.n_nonfinite, want.n_nonfinite)


@pytest.fixture(scope="module")
def models():
    return [QNetwork(QNetConfig.tiny(), D, A, KINDS, rngs=nnx.Rngs(s)) for s in (0, 1)]


def test_constant_params_match_the_reference_and_lambda_compiles_nothing(models):
    model = models[0]
    cfg = ScoringConfig(top_k=4, batch_buckets=(8, 32), candidate_buckets=(64,))
    scorer = engine.Scorer(model, _weights(), cfg, params_as_constants=True)
    for i, B in enumerate((3, 20, 70)):  # two buckets, then a split batch (32 + 32 + 6 rows)
        lam = np.array([0.5, 0.5], np.float32)
        _check(scorer(lam, _requests(B, i)), model, lam, _requests(B, i))
    compiled, seconds = len(scorer._constant_serves), scorer.compile_seconds
    assert compiled == 2
    for i, lam in enumerate(([1.0, 0.0], [0.2, 0.8], [0.0, 1.0])):
        lam = np.asarray(lam, np.float32)
        _check(scorer(lam, _requests(20, 10 + i)), model, lam, _requests(20, 10 + i))
    assert (len(scorer._constant_serves), scorer.compile_seconds) == (compiled, seconds)


def test_set_params_serves_the_new_parameters(models):
    cfg = ScoringConfig(top_k=4, batch_buckets=(32,), candidate_buckets=(64,))
    scorer = engine.Scorer(models[0], _weights(), cfg, params_as_constants=True)
    lam, batch = np.array([0.3, 0.7], np.float32), _requests(25, 3)
    before = scorer(lam, batch)
    _check(before, models[0], lam, batch)
    scorer.set_params(nnx.split(models[1])[1])
    after = scorer(lam, batch)
    _check(after, models[1], lam, batch)
    assert not np.array_equal(before.action, after.action)  # the new parameters are served
