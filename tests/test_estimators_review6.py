"""Review of the estimators, intervals and the frontier's honesty (session 6): closed forms and
exact expectations the estimators must meet."""

import numpy as np
import pytest
from flax import nnx

from puts_jax import evaluation, reference
from puts_jax.config import QNetConfig, SweepConfig
from puts_jax.qnet import QNetwork
from puts_jax.types import LoggedBatch

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

