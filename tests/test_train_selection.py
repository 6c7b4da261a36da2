"""``train.selection.global_action_choice``: the best global action of the training log (the
single action with the highest SNIPS of the selection objective), its interval and whether it
is within noise of the runner-up; values by hand and from ``puts_jax.ope`` (an independent
path: the estimators' own statistics and ``finalize``)."""

import numpy as np
import pytest

from puts_jax import ope
from train import selection


def _onehot(actions, A):
    return np.eye(A, dtype=bool)[np.asarray(actions)]


def test_by_hand_uniform_logging_one_hot():
    # A = 3, propensity 1/3: SNIPS is each action's mean reward over its rows.
    actions = [0, 0, 0, 0, 1, 1, 1, 1, 2, 2]
    r0 = np.array([1, 1, 1, 0, 1, 0, 0, 0, 1, 1], np.float64)  # means 0.75, 0.25, 1.0
    rewards = np.stack([r0, 1 - r0], 1)
    out = selection.global_action_choice(_onehot(actions, 3), rewards, np.full(10, 1 / 3), 0)
    assert out["action"] == 2 and out["value"] == pytest.approx(1.0)
    assert out["lo"] == out["hi"] == pytest.approx(1.0)  # every matched reward equal: se 0
    ru = out["runner_up"]
    assert ru["action"] == 0 and ru["value"] == pytest.approx(0.75)
    # se = sqrt(sum (r - v)^2) / n for equal weights: sqrt(3 * 0.0625 + 0.5625) / 4
    half = 1.959963984540054 * np.sqrt(3 * 0.0625 + 0.5625) / 4
    assert (ru["lo"], ru["hi"]) == pytest.approx((0.75 - half, 0.75 + half))
    assert 0.75 + half > 1.0  # the runner-up's interval reaches the best's
    assert out["overlaps_runner_up"] is True and out["confidence"] == 0.95
    assert selection.best_global_action(_onehot(actions, 3), rewards, np.full(10, 1 / 3), 1) == 1


def test_matches_the_estimators_intervals():
    rng = np.random.default_rng(3)
    n, A = 4000, 5
    consistent = rng.random((n, A)) < 0.3  # several or no actions a row, as slot-level logs
    propensity = rng.uniform(0.2, 0.6, n)
    rewards = (rng.random((n, 2)) < np.array([0.3, 0.6])).astype(np.float32)
    rewards[consistent[:, 3], 0] = (rng.random(consistent[:, 3].sum()) < 0.4)  # action 3 ahead
    out = selection.global_action_choice(consistent, rewards, propensity, 0)
    fin = [ope.finalize(ope.chunk_stats(consistent[:, a].astype(np.float32),
                                        propensity.astype(np.float32), rewards,
                                        np.ones(n, bool)), 0.95) for a in range(A)]
    snips = np.array([float(e.snips[0]) for e in fin])
    assert out["action"] == int(np.argmax(snips)) == 3
    e = fin[3]
    assert (out["value"], out["lo"], out["hi"]) == pytest.approx(
        (float(e.snips[0]), float(e.snips_lo[0]), float(e.snips_hi[0])), rel=1e-5)
    r = int(np.argsort(-snips)[1])
    assert out["runner_up"]["action"] == r
    assert out["runner_up"]["lo"] == pytest.approx(float(fin[r].snips_lo[0]), rel=1e-5)
    assert out["overlaps_runner_up"] == bool(
        max(e.snips_lo[0], fin[r].snips_lo[0]) <= min(e.snips_hi[0], fin[r].snips_hi[0]))


def test_unmatched_actions_rank_last_and_no_runner_up_is_none():
    rewards = np.array([[0.0], [0.0]])
    out = selection.global_action_choice(_onehot([1, 1], 3), rewards, np.full(2, 1 / 3), 0)
    assert out["action"] == 1 and out["value"] == 0.0  # actions 0 and 2 never matched
    assert out["runner_up"] is None and out["overlaps_runner_up"] is None
    none = selection.global_action_choice(np.zeros((2, 3), bool), rewards, np.full(2, 0.5), 0)
    assert none["action"] == 0 and none["value"] is None and none["runner_up"] is None


def _doc(**over):
    """A selected.json document (``selection.summary``'s keys) for ``describe``."""
    doc = {"step": 1200, "selection_metric": "heldout SNIPS of session_success",
           "select_lambda": [1.0, 0.0], "value": 0.4312,
           "selection": {"session_success": {"snips": 0.4312, "snips_lo": 0.4280,
                                             "snips_hi": 0.4344}},
           "global_action": 17,
           "global_heldout": {"session_success": {"snips": 0.4271, "snips_lo": 0.4240,
                                                  "snips_hi": 0.4302}},
           "global_choice": {"action": 17, "runner_up": {"action": 3}, "overlaps_runner_up": True},
           "gain_over_global": 0.0041, "gain_shown": False}
    return {**doc, **over}


def test_describe_says_what_gain_shown_means():
    assert selection.describe(_doc()) == (
        "selected step 1200: held-out SNIPS of session_success 0.4312 [0.4280, 0.4344] at lambda "
        "[1, 0]; the best global action, action 17 (the highest training-log SNIPS of "
        "session_success; within noise of the runner-up, action 3), has 0.4271 [0.4240, "
        "0.4302]: gain +0.0041, shown: no (the 95% intervals overlap; shown needs the step's "
        "interval entirely above the action's)")
    shown = selection.describe(_doc(gain_shown=True, global_choice={
        "action": 17, "runner_up": {"action": 3}, "overlaps_runner_up": False}))
    assert shown.endswith("(the highest training-log SNIPS of session_success; ahead of the "
                          "runner-up, action 3, beyond noise), has 0.4271 [0.4240, 0.4302]: "
                          "gain +0.0041, shown: yes (the step's 95% interval lies entirely "
                          "above the action's)")


def test_describe_a_gain_not_shown_because_the_step_is_below():
    below = selection.describe(_doc(
        gain_over_global=-0.01, selection={"session_success": {
            "snips": 0.4171, "snips_lo": 0.4150, "snips_hi": 0.4200}}))
    assert below.endswith("gain -0.0100, shown: no (the step's 95% interval lies entirely below "
                          "the action's)")
    no_bound = selection.describe(_doc(selection={"session_success": {
        "snips": 0.4312, "snips_lo": None, "snips_hi": None}}))
    assert "held-out SNIPS of session_success 0.4312 [n/a, n/a]" in no_bound
    assert no_bound.endswith("shown: no (an interval bound is not available)")


def test_describe_without_a_runner_up_an_estimate_or_a_step():
    alone = selection.describe(_doc(global_choice={"action": 17, "runner_up": None,
                                                   "overlaps_runner_up": None}))
    assert "(the highest training-log SNIPS of session_success; no runner-up)" in alone
    old = selection.describe(_doc(global_choice=None))  # selected.json before global_choice
    assert "action 17 (the highest training-log SNIPS of session_success), has" in old
    none = selection.describe(_doc(gain_over_global=None, global_heldout={
        "session_success": {"snips": None, "snips_lo": None, "snips_hi": None}}))
    assert none.endswith("has no held-out estimate: gain not estimable")
    assert selection.describe(_doc(step=None)) == (
        "no step selected: no evaluation gave a held-out SNIPS of session_success")
    assert selection.describe({}) == (
        "no step selected: no evaluation gave a held-out SNIPS of the selection objective")
    sparse = selection.describe({"step": 5})  # whatever a caller returns, a sentence
    assert sparse.startswith("selected step 5: held-out SNIPS of the selection objective not "
                             "estimable at lambda []")
