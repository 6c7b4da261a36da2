"""Compiled serve / sweep / streaming evaluation (engine builders through puts_jax.evaluation)
against the numpy oracle, and no recompilation."""

import jax
import numpy as np
import pytest
from flax import nnx

from puts_jax import engine, evaluation, reference
from puts_jax.checks import InputError
from puts_jax.config import QNetConfig, ScoringConfig, SweepConfig
from puts_jax.qnet import QNetwork
from puts_jax.types import LoggedBatch, RequestBatch

D, A, J, K = 5, 8, 2, 2
KINDS = ("binary", "real")


@pytest.fixture(scope="module")
def model():
    return QNetwork(QNetConfig.tiny(), D, A, KINDS, rngs=nnx.Rngs(0))


def _weights():
    return (np.random.default_rng(9).integers(0, 5, (A, K)) / 4).astype(np.float32)


def _requests(B, N=50, seed=0):
    rng = np.random.default_rng(seed)
    preds = (rng.integers(0, 9, (B, N, K)) / 8).astype(np.float32)  # exact arithmetic, many ties
    mask = rng.random((B, N)) < 0.7
    preds[::11, 3, 0] = np.nan
    return RequestBatch(rng.normal(size=(B, D)).astype(np.float32), preds, mask, np.ones(B, bool))


def _q(model, context):
    return np.asarray(model(context))


def _assert_serve_equal(got, want):
    np.testing.assert_array_equal(got.action, want.action)
    np.testing.assert_array_equal(got.topk_index, want.topk_index)
    np.testing.assert_allclose(got.topk_score, want.topk_score, rtol=1e-6)
    np.testing.assert_array_equal(got.n_nonfinite, want.n_nonfinite)
    np.testing.assert_array_equal(got.q_fallback, want.q_fallback)


def test_scorer_matches_reference_and_splits_large_batches(model):
    cfg = ScoringConfig(top_k=6, batch_buckets=(128, 256, 512), candidate_buckets=(16, 64))
    scorer = engine.Scorer(model, _weights(), cfg)
    lam = np.array([0.3, 0.7], np.float32)
    batch = _requests(1100)  # > the largest bucket: 512 + 512 + 76 (-> 128)
    got = scorer(lam, batch)
    want = reference.serve(_q(model, batch.context), lam, _weights(), batch.preds, batch.mask, 6)
    assert got.topk_index.shape == (1100, 6)
    _assert_serve_equal(got, want)
    ti = got.topk_index
    assert batch.mask[np.nonzero(ti >= 0)[0], ti[ti >= 0]].all()  # padding never in the top k
    assert (got.n_nonfinite[::11] == batch.mask[::11, 3]).all()  # NaN reported, not ranked
    assert not (ti[::11] == 3).any()


def test_no_recompilation_across_batch_sizes_lambda_and_params(model):
    """PITFALLS P3: buckets {128, 256, 512}: at most 3 compilations, none on a second pass."""
    cfg = ScoringConfig(top_k=5, batch_buckets=(128, 256, 512), candidate_buckets=(64,))
    scorer = engine.Scorer(model, _weights(), cfg)
    sizes = [100, 200, 400, 87, 233, 391, 119, 176, 420]
    start = engine.TRACE_COUNTS["serve"]
    for i, b in enumerate(sizes):
        assert len(scorer(np.array([0.5, 0.5]), _requests(b, seed=i)).action) == b
    first = engine.TRACE_COUNTS["serve"] - start
    assert first == 3  # one trace per bucket used (a counter that never moved passed '<= 3')
    for i, b in enumerate(sizes):
        lam = np.array([i / 8, 1 - i / 8], np.float32)  # a new lambda every call
        assert len(scorer(lam, _requests(b, seed=i)).action) == b
    _, params = nnx.split(QNetwork(QNetConfig.tiny(), D, A, KINDS, rngs=nnx.Rngs(1)))
    scorer.set_params(params)
    scorer(np.array([1.0, 0.0]), _requests(100))
    assert engine.TRACE_COUNTS["serve"] - start == first


def _log(B, seed=0, A_=A):
    rng = np.random.default_rng(seed)
    action = rng.integers(0, A_, B).astype(np.int32)
    consistent = np.eye(A_, dtype=bool)[action]
    rewards = np.stack([rng.random(B) < 0.3, rng.random(B)], 1).astype(np.float32)
    return LoggedBatch(rng.normal(size=(B, D)).astype(np.float32), action, np.full(B, 1 / A_),
                       rewards, consistent, np.ones(B, bool))


def _reference_sweep(model, lb, lams, **kw):
    return reference.sweep_estimates(_q(model, lb.context), lams, lb.action, lb.propensity,
                                     lb.rewards, lb.consistent, lb.valid, **kw)


def test_streamed_sweep_matches_reference_and_single_pass(model):
    lb = _log(700)
    lams = np.stack([np.linspace(0, 1, 5), 1 - np.linspace(0, 1, 5)], 1).astype(np.float32)
    cfg = SweepConfig(n_lambdas=5, chunk_rows=256, lambda_chunk=2)
    start = engine.TRACE_COUNTS["sweep"]
    single = evaluation.evaluate_log(model, lams, [lb], cfg)
    chunks = [jax.tree.map(lambda x: x[lo:lo + 150], lb) for lo in range(0, 700, 150)]
    streamed = evaluation.evaluate_log(model, lams, iter(chunks), cfg)
    assert single.reward_kinds == KINDS and single.constant_propensity == pytest.approx(1 / A)
    for f in ("n", "matched", "ips", "ips_lo", "snips", "snips_hi", "dr", "dr_lo", "ess",
              "exact_lo", "exact_hi"):
        np.testing.assert_allclose(getattr(streamed.estimates, f), getattr(single.estimates, f),
                                   rtol=1e-6, err_msg=f)
    ref = _reference_sweep(model, lb, lams, reward_kinds=KINDS, constant_propensity=1 / A)
    for i, r in enumerate(ref):
        for f in ("ips", "ips_hi", "snips", "snips_lo", "dm", "dr", "dr_hi", "exact_lo", "exact_hi"):
            np.testing.assert_allclose(getattr(single.estimates, f)[i], r[f], rtol=2e-5,
                                       equal_nan=True, err_msg=f)
        assert single.estimates.matched[i] == r["matched"]
    # binary objective: exact interval defined; real objective: not
    assert single.estimates.exact_defined[:, 0].all() and not single.estimates.exact_defined[:, 1].any()
    assert engine.TRACE_COUNTS["sweep"] - start <= 2  # 256-row pieces (700 rows) and 256 (150 rows)


def test_sweep_compiles_once_per_chunk_size_and_lambda_is_traced(model):
    cfg = SweepConfig(n_lambdas=3, chunk_rows=128, lambda_chunk=2)
    graphdef, params = nnx.split(model)
    sweep = engine.build_sweep(graphdef, cfg)
    lb = evaluation._pad_rows(_log(100), 128)
    start = engine.TRACE_COUNTS["sweep"]
    for a in (0.0, 0.25, 0.5):
        st = sweep(params, np.array([[a, 1 - a], [1 - a, a], [0.5, 0.5]], np.float32), lb)
    assert engine.TRACE_COUNTS["sweep"] - start == 1
    assert st.sum_wr.shape == (3, J) and int(st.n[0]) == 100


def test_fixed_baselines_match_reference(model):
    lb = _log(500, seed=4)
    cfg = SweepConfig.tiny()
    probs = evaluation.fixed_action_probs([0, 3, 7], A, uniform=True)
    ev = evaluation.evaluate_fixed(probs, [lb], cfg, model=model)
    q = _q(model, lb.context)
    ql = q[np.arange(500), lb.action]
    for i, pr in enumerate(probs):
        pi = lb.consistent.astype(np.float64) @ pr
        qp = np.einsum("a,baj->bj", pr, q)
        r = reference.estimate(pi, lb.propensity, lb.rewards, None, qp, ql,
                               reward_kinds=KINDS, constant_propensity=1 / A)
        for f in ("ips", "snips", "dm", "dr", "exact_hi")[:5 if i < 3 else 4]:
            np.testing.assert_allclose(ev.estimates[ev.estimates._fields.index(f)][i], r[f],
                                       rtol=2e-5, equal_nan=True, err_msg=f)
    assert not ev.estimates.exact_defined[-1].any()  # stochastic policy: no exact interval
    # uniform logging evaluated on itself: weights 1, IPS = mean reward
    np.testing.assert_allclose(ev.estimates.ips[-1], lb.rewards.mean(0), rtol=1e-5)
    assert ev.estimates.ess[-1] == pytest.approx(500)
    same = evaluation.evaluate_fixed_actions([0, 3, 7], A, [lb], cfg)
    np.testing.assert_allclose(same.estimates.ips, ev.estimates.ips[:3], rtol=1e-6)
    assert np.isnan(same.estimates.dr).all()  # no reward model: no DR
    both = evaluation.evaluate_log(model, np.array([[0.5, 0.5]]), [lb], cfg, baselines=probs)
    np.testing.assert_allclose(both.baselines.ips, ev.estimates.ips, rtol=1e-6)


def test_positivity_error_names_absolute_row_and_floor_is_explicit(model):
    chunks = [_log(50), _log(50, seed=1)]
    chunks[1].propensity[7] = 0.0
    lams = np.array([[1.0, 0.0]], np.float32)
    with pytest.raises(InputError, match=r"propensity.*positivity.*rows \[57\]"):
        evaluation.evaluate_log(model, lams, iter(chunks), SweepConfig.tiny())
    ev = evaluation.evaluate_log(model, lams, iter(chunks), SweepConfig.tiny(), propensity_floor=0.01)
    assert ev.constant_propensity is None and int(ev.estimates.n[0]) == 100
    with pytest.raises(InputError, match="declared binary"):
        evaluation.evaluate_log(model, lams, [_log(50)], SweepConfig.tiny(),
                            reward_kinds=("binary", "binary"))


def test_rows_outside_the_action_set_are_zero_terms(model):
    """Slot-level logs (OBD): action -1 rows match no action; they count in n, never in matched,
    and keep DR finite."""
    lb = _log(300, seed=5)
    action = lb.action.copy()
    action[::3] = -1
    consistent = lb.consistent.copy()
    consistent[::3] = False
    lb = lb._replace(action=action, consistent=consistent)
    lams = np.array([[0.5, 0.5], [1.0, 0.0]], np.float32)
    ev = evaluation.evaluate_log(model, lams, [lb], SweepConfig.tiny())
    assert np.isfinite(ev.estimates.dr).all() and (ev.estimates.n == 300).all()
    ref = _reference_sweep(model, lb, lams)
    for i, r in enumerate(ref):
        assert ev.estimates.matched[i] == r["matched"] <= 200
        np.testing.assert_allclose(ev.estimates.ips[i], r["ips"], rtol=2e-5)
        np.testing.assert_allclose(ev.estimates.dr[i], r["dr"], rtol=2e-5)
    # default consistency (None) from action alone gives the same numbers
    same = evaluation.evaluate_log(model, lams, [lb._replace(consistent=None)], SweepConfig.tiny(),
                               n_actions=A)
    np.testing.assert_allclose(same.estimates.ips, ev.estimates.ips, rtol=1e-7)


def test_per_row_fixed_actions_equal_global_when_constant(model):
    lb = _log(260, seed=6)
    chunks = [jax.tree.map(lambda x: x[lo:lo + 100], lb) for lo in range(0, 260, 100)]
    cfg = SweepConfig(n_lambdas=2, chunk_rows=128, lambda_chunk=2)
    glob = evaluation.evaluate_fixed_actions([2, 5], A, chunks, cfg, model=model)
    rows = evaluation.evaluate_fixed_actions(np.array([[2] * 260, [5] * 260]), A, chunks, cfg,
                                         model=model)
    for f in ("ips", "snips", "dr", "exact_hi"):
        np.testing.assert_allclose(getattr(rows.estimates, f), getattr(glob.estimates, f),
                                   rtol=1e-6, err_msg=f)
    # the logged actions themselves (the logging policy's choices): every row matches, w = 1/p
    logged = evaluation.evaluate_fixed_actions(lb.action[None], A, [lb], cfg)
    assert int(logged.estimates.matched[0]) == 260
    with pytest.raises(InputError, match="per-row actions"):
        evaluation.evaluate_fixed_actions(np.zeros((1, 100), np.int64), A, [lb], cfg)


def test_stochastic_sweep_matches_ope_and_validates_param(model):
    lb = _log(200, seed=7)
    lams = np.array([[0.5, 0.5]], np.float32)
    cfg = SweepConfig.tiny()
    ev = evaluation.evaluate_log(model, lams, [lb], cfg, policy="epsilon_greedy", policy_param=0.2)
    q = _q(model, lb.context)
    probs = np.stack([reference.policy_probs(qb @ lams[0], "epsilon_greedy", 0.2) for qb in q])
    pi = (lb.consistent * probs).sum(1)
    r = reference.estimate(pi, lb.propensity, lb.rewards, None, np.einsum("ba,baj->bj", probs, q),
                           q[np.arange(200), lb.action])
    for f in ("ips", "snips", "dr"):
        np.testing.assert_allclose(getattr(ev.estimates, f)[0], r[f], rtol=2e-5, err_msg=f)
    assert not ev.estimates.exact_defined.any()  # stochastic target: no exact interval
    with pytest.raises(InputError, match="temperature must be > 0"):
        evaluation.evaluate_log(model, lams, [lb], cfg, policy="softmax", policy_param=0.0)


@pytest.mark.parametrize("head,kinds,feats", [
    ("mixture", KINDS, False), ("mixture", KINDS, True), ("per_action", ("real", "real"), False),
    ("per_action", KINDS, False)])
def test_serve_with_lambda_folded_matches_reference(head, kinds, feats):
    """Lambda folded into the last layer (mixture head; per-action head with identity links)
    gives the reference's actions and top-k; duplicate actions stay exact ties (lowest index)."""
    W = _weights()
    feat = np.concatenate([W, W[:1]]) if feats else None  # action 8 duplicates action 0
    n_act = A + 1 if feats else A
    Wn = np.concatenate([W, W[:1]]) if feats else W
    m = QNetwork(QNetConfig(hidden=(16,), head=head, n_components=4), D, n_act, kinds,
                 rngs=nnx.Rngs(3), action_features=feat)
    graphdef, params = nnx.split(m)
    batch = _requests(300, seed=4)
    q = _q(m, batch.context)
    for lam in (np.array([0.3, 0.7], np.float32), np.array([1.0, 0.0], np.float32)):
        want = reference.serve(q, lam, Wn, batch.preds, batch.mask, 6)
        for fold in (True, False):
            serve = engine.build_serve(graphdef, Wn, ScoringConfig(top_k=6), fold_lambda=fold)
            _assert_serve_equal(jax.device_get(serve(params, lam, batch)), want)
    if feats:
        assert (want.action != A).all()  # the duplicate of action 0 is never chosen


def test_latency_serve_is_compiled_once_lambda_traced_params_constant(model):
    """compile_latency_serve: AOT for one shape, parameters as constants, lambda traced."""
    cfg = ScoringConfig(top_k=5)
    one = _requests(1, seed=8)
    start = engine.TRACE_COUNTS["serve"]
    fn = engine.compile_latency_serve(model, _weights(), cfg, one)
    assert engine.TRACE_COUNTS["serve"] - start == 1
    for a in (0.0, 0.3, 1.0):
        lam = np.array([a, 1 - a], np.float32)
        got = jax.device_get(fn(lam, one))
        _assert_serve_equal(got, reference.serve(_q(model, one.context), lam, _weights(),
                                                 one.preds, one.mask, 5))
    assert engine.TRACE_COUNTS["serve"] - start == 1  # new lambdas: no tracing, no compiling
    with pytest.raises(TypeError):
        fn(np.array([0.5, 0.5], np.float32), _requests(2))  # compiled for B = 1 only
    other = QNetwork(QNetConfig.tiny(), D, A, KINDS, rngs=nnx.Rngs(5))
    fn2 = engine.compile_latency_serve(nnx.split(other), _weights(), cfg, one)  # new params
    lam = np.array([0.5, 0.5], np.float32)
    _assert_serve_equal(jax.device_get(fn2(lam, one)), reference.serve(
        _q(other, one.context), lam, _weights(), one.preds, one.mask, 5))


def test_sweep_program_compiles_ahead_of_time_with_bounded_memory(model):
    """build_sweep returns the jitted program: AOT compilation, memory analysis, same result;
    its scratch memory does not grow with L * B * A (rows are blocked)."""
    graphdef, params = nnx.split(model)
    lb = _log(1000, seed=2)  # not a power of two: padded to whole row blocks inside
    lams = np.stack([np.linspace(0, 1, 301), 1 - np.linspace(0, 1, 301)], 1).astype(np.float32)
    sweep = engine.build_sweep(graphdef, SweepConfig())
    compiled = sweep.lower(params, lams, lb).compile()
    st = compiled(params, lams, lb)
    np.testing.assert_array_equal(st.sum_wr, sweep(params, lams, lb).sum_wr)
    temp = compiled.memory_analysis().temp_size_in_bytes
    big = sweep.lower(params, lams, _log(8000, seed=3)).compile().memory_analysis()
    assert big.temp_size_in_bytes < 1.5 * temp  # 8x the rows, about the same scratch memory
    assert big.temp_size_in_bytes < 8000 * 301 * A * 4 / 8  # far below one f32[B, L, A]
    ref = _reference_sweep(model, lb, lams[::50])
    for i, r in zip(range(0, 301, 50), ref):
        assert int(st.matched[i]) == r["matched"] and int(st.n[i]) == 1000
        np.testing.assert_allclose(st.sum_wr[i] / 1000, r["ips"], rtol=2e-5)
