"""Review of the estimators, intervals and the frontier's honesty (session 6): closed forms and
exact expectations the estimators must meet."""

import numpy as np
import pytest
from flax import nnx

from puts_jax import evaluation, reference
from puts_jax.config import QNetConfig, SweepConfig
from puts_jax.qnet import QNetwork
from puts_jax.types import EstimatorStats, LoggedBatch

# The shapes, model structure and SweepConfig of tests/test_engine.py's streamed sweep, so that
# the suite compiles the sweep program once for both (build_sweep is cached per structure).
D, A = 5, 8
KINDS = ("binary", "real")
LAMS = np.stack([np.linspace(0, 1, 5), 1 - np.linspace(0, 1, 5)], 1).astype(np.float32)
CFG = SweepConfig(n_lambdas=5, chunk_rows=256, lambda_chunk=2)


@pytest.fixture(scope="module")
def model():
    return QNetwork(QNetConfig.tiny(), D, A, KINDS, rngs=nnx.Rngs(0))


def _decision_log(n_ctx: int = 40, seed: int = 0) -> LoggedBatch:
    """Every logged action of uniform logging over A actions, once per context, where actions
    share decisions (as slate- or slot-level matching makes them: two labels per context), the
    propensity is the decision's (|consistent| / A) and the reward depends on the decision only.
    Averaging over a context's A rows is the exact expectation over the logging policy, so IPS
    equals the target's value exactly and an unbiased DR must equal IPS."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 2, (n_ctx, A))
    label[:, 0], label[:, 1] = 0, 0  # at least one decision that two actions make
    reward_of = np.stack([rng.random((n_ctx, 2)) < 0.5, rng.random((n_ctx, 2))], -1)  # [c, d, J]
    ctx = np.repeat(rng.normal(size=(n_ctx, D)), A, axis=0).astype(np.float32)
    c = np.repeat(np.arange(n_ctx), A)
    action = np.tile(np.arange(A), n_ctx).astype(np.int32)
    d = label[c, action]
    consistent = label[c] == d[:, None]
    propensity = consistent.sum(1) / A
    rewards = reward_of[c, d].astype(np.float32)
    return LoggedBatch(ctx, action, propensity, rewards, consistent, np.ones(len(c), bool))


def test_dr_is_unbiased_when_actions_share_a_decision(model):
    """DR's reward model at the logged DECISION (not the logged action's Q): before the fix
    DR - IPS here was the mean of Q(x, a*) - Q(x, logged action) over matched rows (up to 0.35
    on this log; about 0.005, 2-3 standard errors, on the simulator's slate-matching logs)."""
    ev = evaluation.evaluate_log(model, LAMS, [_decision_log()], CFG, reward_kinds=KINDS)
    np.testing.assert_allclose(ev.estimates.dr, ev.estimates.ips, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_dr_matches_the_oracle_and_the_baselines_are_unbiased_too(model):
    """The numpy oracle's DR (``reference.logged_decision_qhat``) agrees, and the single-action
    baselines of the same pass are unbiased too."""
    lb = _decision_log(seed=3)
    ev = evaluation.evaluate_log(model, LAMS, [lb], CFG, reward_kinds=KINDS,
                                 baselines=evaluation.fixed_action_probs(np.arange(A), A))
    np.testing.assert_allclose(ev.baselines.dr, ev.baselines.ips, rtol=1e-5, atol=1e-6)
    q = np.asarray(model(lb.context), np.float64)
    for i, r in enumerate(reference.sweep_estimates(q, LAMS, lb.action, lb.propensity,
                                                    lb.rewards, lb.consistent)):
        np.testing.assert_allclose(ev.estimates.dr[i], r["dr"], rtol=1e-5)
        np.testing.assert_allclose(r["dr"], r["ips"], rtol=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize("policy, param", [("epsilon_greedy", 0.3), ("softmax", 0.5)])
def test_dr_of_stochastic_targets_is_unbiased_when_actions_share_a_decision(model, policy, param):
    """The same for stochastic targets: qhat(x, d) is the target-weighted mean of Q over d."""
    lb = _decision_log(seed=2)
    ev = evaluation.evaluate_log(model, LAMS, [lb], CFG, policy=policy, policy_param=param,
                                 reward_kinds=KINDS)
    np.testing.assert_allclose(ev.estimates.dr, ev.estimates.ips, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_dr_of_fixed_policies_is_unbiased_when_actions_share_a_decision(model):
    """A context-free distribution (uniform logging) and one action per row likewise."""
    lb = _decision_log(seed=1)
    probs = np.full((1, A), 1.0 / A, np.float32)
    ev = evaluation.evaluate_fixed(probs, [lb], CFG, model=model, reward_kinds=KINDS)
    np.testing.assert_allclose(ev.estimates.dr, ev.estimates.ips, rtol=1e-5, atol=1e-6)
    rows = np.argmax(np.asarray(model(lb.context)), axis=1)[:, 0][None]  # best action on J0
    ev = evaluation.evaluate_fixed_actions(rows, A, [lb], CFG, model=model, reward_kinds=KINDS)
    np.testing.assert_allclose(ev.estimates.dr, ev.estimates.ips, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- puts-jax truth

def _hand_estimates():
    """ope.finalize of one policy on a hand-made uniform log (A = 4, p = 1/4, so w = 4 where
    matched; 8 rows): rows 0-2 matched with session rewards 1, 0, 0 and clicks 2, 0, 1."""
    from puts_jax import ope
    r = np.array([[1, 2], [0, 0], [0, 1]], np.float64)  # the matched rows' rewards
    w = 4.0
    st = EstimatorStats(n=np.int64(8), matched=np.int64(3), sum_w=3 * w, sum_w2=3 * w * w,
                        sum_wr=w * r.sum(0), sum_w2r=w * w * r.sum(0),
                        sum_w2r2=w * w * (r * r).sum(0), sum_match_r=r.sum(0))
    return ope.finalize(st, 0.95, ("binary", "count"), 0.25)


def test_truth_shows_the_estimator_the_frontier_shows():
    """``puts-jax truth`` used SNIPS for every row while the frontier's table shows ``auto``
    (exact around IPS for a binary reward): the same policy showed two sets of numbers. Now each
    objective's column is the frontier's estimator, auto resolved as the sweep resolved it."""
    from scipy import stats as sps

    from puts_jax import sweep_truth
    doc = {"primary_estimator": "auto", "auto_estimator": ["exact", "snips"],
           "objectives": {"names": ["session_success", "clicks"]}, "estimators": {}}
    assert sweep_truth.estimators_shown(doc) == ["exact", "snips"]
    old = {**doc, "auto_estimator": None,  # a frontier written before auto_estimator existed
           "estimators": {"exact": {"lo": [[0.1, None], [0.2, None]]}}}
    assert sweep_truth.estimators_shown(old) == ["exact", "snips"]
    assert sweep_truth.estimators_shown({**doc, "primary_estimator": "dr"}) == ["dr", "dr"]
    got = sweep_truth._pick(_hand_estimates(), ["exact", "snips"])
    # exact: IPS = 1 success / (8 rows x 1/4) = 0.5 with Clopper-Pearson(1 of 8) / (1/4), <= 1
    lo, hi = sps.beta.ppf(0.025, 1, 8) / 0.25, min(sps.beta.ppf(0.975, 2, 7) / 0.25, 1.0)
    np.testing.assert_allclose([got[q][0] for q in ("value", "lo", "hi")], [0.5, lo, hi])
    # SNIPS of clicks: (2 + 0 + 1) / 3 matched rows, delta-method half-width 1.96 se
    se = np.sqrt(((np.array([2, 0, 1]) - 1.0) ** 2).sum()) / 3
    np.testing.assert_allclose([got[q][1] for q in ("value", "lo", "hi")],
                               [1.0, 1 - 1.959964 * se, 1 + 1.959964 * se], rtol=1e-6)
    lines = sweep_truth._format([["p", "0.1", "0.2", "a", "b", "8", "3"]],
                                ["session_success", "clicks"], 0.95, "auto", ["exact", "snips"])
    assert "session_success (auto: exact, 95% CI)" in lines[0]
    assert "clicks (auto: snips, 95% CI)" in lines[0] and "SNIPS" not in lines[0]
    assert sweep_truth._cell(0.25, float("nan"), None) == "0.2500 [n/a, n/a]"


def test_a_collapsed_bootstrap_interval_is_not_estimable():
    """A point with no matched successes: every resample's SNIPS is 0, so the percentile
    interval was [0, 0], shown as an interval of zero width beside SNIPS's 'n/a'; now n/a too."""
    from puts_jax import bootstrap, report, sweep_job
    est = _hand_estimates()
    pe = report.from_ope(["point"], est)
    nan = np.full((1, 2), np.nan)
    boot = bootstrap.BootstrapEstimates(
        ips_lo=nan, ips_hi=nan, ips_se=nan, snips_lo=np.array([[0.0, 0.4]]),
        snips_hi=np.array([[0.0, 1.6]]), snips_se=nan, dr_lo=nan, dr_hi=nan, dr_se=nan,
        snips_defined=np.ones(1), n_resamples=200, confidence=0.95)
    block = sweep_job.with_boot(pe, est, boot).estimates["snips_boot"]
    np.testing.assert_array_equal(block["lo"], [[np.nan, 0.4]])
    np.testing.assert_array_equal(block["hi"], [[np.nan, 1.6]])
    np.testing.assert_allclose(block["value"], [[1 / 3, 1.0]])


def test_truth_says_its_true_values_carry_the_requests_sampling_error():
    """The "true" columns are means over simulate's --n-eval fresh requests: with 1,000 of them
    the logging policy's "true" 0.2080 lay outside its on-policy interval [0.1985, 0.2020] of a
    200k-row log (2.3 standard errors of the truth itself); the table now says how large that
    error is: the largest over the rows of sd / sqrt(n), per objective."""
    from puts_jax import sweep_truth
    a = np.array([[0.0, 1.0], [1.0, 3.0], [0.0, 2.0], [1.0, 2.0]])  # per-request values, n = 4
    b = np.array([[0.5, 2.0], [0.5, 2.0], [0.5, 2.0], [0.5, 2.0]])  # no spread
    line = sweep_truth.truth_error_line([a, b], ["session_success", "clicks"])
    se = a.std(0, ddof=1) / 2
    assert line == ("true values: exact expected rewards averaged over the 4 fresh requests of "
                    "truth.npz (simulate --n-eval); as the population values the intervals "
                    f"estimate they have a standard error of up to {se[0]:.4f} (session_success), "
                    f"{se[1]:.4f} (clicks) in these rows")
