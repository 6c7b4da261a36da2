"""Rewards too large for the sweep's float32 sums, or one row dominating an estimate (fresh-user
review M8).

Before, ``sweep`` on a log whose clicks reward was 1e30 at one row exited 0: the production
action's clicks estimate was 9.26e+27 with an "n/a" interval (its sum of squares overflowed
float32) and was called the best global action on clicks; 1e6 at that row gave 9260
[-8804, 2.732e+04] without a word. Now the first is an error naming the objective and the row,
and the second a warning naming the row and the estimates it dominates.
"""

import json

import numpy as np
import pytest

from puts_jax import cli, sweep_inputs, sweep_job
from puts_jax.checks import InputError
from puts_jax.data import logs
from puts_jax.types import EstimatorStats
from conftest import cli_error, make_tiny_world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """An untrained tiny model and a 1,000-row evaluation log (10 actions, uniform logging:
    propensity 0.1; rewards session_success (binary) and clicks (count))."""
    d = tmp_path_factory.mktemp("rewards")
    make_tiny_world(d, n_logs=300, n_heldout=100, n_evaluation=1000, n_eval=100, n_requests=10)
    ev = str(d / "data" / "evaluation.parquet")
    meta, rid, lb = logs.read_log(ev)

    def variant(name, rows, values):
        r = lb.rewards.copy()
        r[rows, 1] = values
        path = str(d / f"{name}.parquet")
        logs.write_log(path, meta, request_id=rid, context=lb.context, action=lb.action,
                       propensity=lb.propensity, rewards=r)
        return path

    return {"dir": d, "model": str(d / "model"), "ev": ev, "lb": lb,
            "huge": variant("huge", [17], [1e30]),
            "many": variant("many", [5, 100, 300, 400, 500, 600],
                            [1e17, 1e17, 1.2e17, 1e17, 1e17, 1e17]),
            "outlier": variant("outlier", [17], [1e6])}


def _sweep(w, log, out, *extra):
    return cli.main(["sweep", "--model", w["model"], "--logs", log, "--out", str(out),
                     "--n-lambdas", "3", "--bootstrap", "0", *extra])


def test_a_reward_that_overflows_float32_sums_is_an_error_naming_it_and_its_row(
        world, tmp_path, capsys):
    assert _sweep(world, world["huge"], tmp_path / "f") == 2
    assert cli_error(capsys) == (
        f"{world['huge']}: rewards: clicks is too large for the sweep's float32 sums: (reward / "
        "propensity)^2 summed over the rows read reaches 1e+62, past 5.32e+36 (float32's "
        "largest value / 64), so estimates and intervals would be inf or nan; the largest term "
        "is clicks 1e+30 at propensity 0.1: rescale clicks (e.g. in thousands) or drop that row "
        "(nothing written) at rows [17]")
    assert not (tmp_path / "f").exists()


def test_many_large_rewards_that_overflow_together_name_the_largest(world, tmp_path):
    with pytest.raises(InputError) as e:
        sweep_job.run_sweep(world["model"], world["many"], str(tmp_path / "f"), n_lambdas=3,
                            bootstrap=0)
    assert (e.value.field, e.value.rows, e.value.source) == ("rewards", [300], world["many"])
    assert "summed over the rows read reaches 6.44e+36" in e.value.msg
    assert "the largest term is clicks 1.2e+17 at propensity 0.1" in e.value.msg


def test_an_outlier_reward_is_warned_about_with_its_row(world, tmp_path, capsys):
    out = tmp_path / "f"
    assert _sweep(world, world["outlier"], out) == 0
    doc = json.loads((out / "frontier.json").read_text())
    clicks = np.asarray(world["lb"].rewards[:, 1], np.float64)
    clicks[17] = 0
    nz, others = int((clicks != 0).sum()), clicks.sum()
    share = 100 * 1e6 / (1e6 + others)
    a17 = int(world["lb"].action[17])
    prod = "" if doc["baselines"]["production"]["names"] != [f"production (action {a17})"] \
        else " = production"
    pts = sum(m[1] >= 1e6 for m in doc["points"]["matched_rewards"])
    warn = (f"clicks: row 17 has a reward of 1e+06, {share:.4g}% of the log's total |clicks| (the "
            f"{nz} other nonzero rows average {others / nz:.4g}): the clicks estimates of the "
            f"policies that match that row rest on it alone ({pts} of 3 lambda points, 1 of 10 "
            f"single actions (action {a17}{prod}) and the logging policy); check the row (a unit "
            "or logging error?) or drop it")
    assert warn in doc["warnings"]
    assert capsys.readouterr().err == f"puts-jax: warning: --logs: {warn}\n"
    assert doc["baselines"]["actions"]["matched_rewards"][a17][1] >= 1e6


def test_ordinary_rewards_give_no_reward_warning(world, tmp_path, capsys):
    assert _sweep(world, world["ev"], tmp_path / "f") == 0
    assert capsys.readouterr().err == ""


def test_reward_stats_over_chunks_are_hand_computed():
    st = sweep_inputs.RewardStats(2)
    st.update(0, np.array([[0, 2], [1, -8]], np.float32), np.array([0.5, 0.25]))
    st.update(2, np.array([[1, 4]], np.float32), np.array([1.0]))
    assert st.n == 3
    got = {k: getattr(st, k).tolist() for k in ("abs_sum", "nonzero", "top", "top_row",
                                                "top_value", "low", "q", "q_top", "q_row",
                                                "q_reward", "q_p")}
    assert got == {"abs_sum": [2, 14], "nonzero": [2, 3], "top": [1, 8], "top_row": [1, 1],
                   "top_value": [1, -8], "low": [0, -8], "q": [17, 1056], "q_top": [4, 32],
                   "q_row": [1, 1], "q_reward": [1, -8], "q_p": [0.25, 0.25]}
    st.check_sums(["a", "b"], "log.parquet")  # far below the limit: no error


def _stats(r: np.ndarray, p: np.ndarray) -> sweep_inputs.RewardStats:
    st = sweep_inputs.RewardStats(r.shape[1])
    st.update(0, r.astype(np.float32), p)
    return st


def test_outlier_rule_needs_a_majority_and_a_hundredfold_mean():
    p = np.full(6, 0.5)
    # 300 vs 5 others of mean 1: warned; the sign-mixed column cannot name the matching policies
    r = np.array([[300, -300], [1, 1], [1, 1], [1, 1], [1, 1], [1, 1]], np.float64)
    doc = {"points": {"matched_rewards": [[300, 0], [2, 0]]},
           "baselines": {"actions": {"matched_rewards": [[0, 0], [301, 0], [300, 0]]}}}
    w = sweep_inputs.outlier_warnings(_stats(r, p), ["x", "y"], doc, production=2)
    assert w == [
        "x: row 0 has a reward of 300, 98.36% of the log's total |x| (the 5 other nonzero rows "
        "average 1): the x estimates of the policies that match that row rest on it alone (1 of "
        "2 lambda points, 2 of 3 single actions (actions 1, 2 = production) and the logging "
        "policy); check the row (a unit or logging error?) or drop it",
        "y: row 0 has a reward of -300, 98.36% of the log's total |y| (the 5 other nonzero rows "
        "average 1): the y estimates of the policies that match that row rest on it alone "
        "(every policy that matches it, and the logging policy); check the row (a unit or "
        "logging error?) or drop it"]
    # 90 x the others' mean, or a single nonzero row, or under half the total: no warning
    for col in ([90, 1, 1, 1, 1, 1], [7, 0, 0, 0, 0, 0], [300] + [100] * 5):
        st = _stats(np.array(col, np.float64)[:, None], p)
        assert sweep_inputs.outlier_warnings(st, ["x"], doc) == []


def test_non_finite_sums_are_an_error_naming_the_objective_and_row():
    st = _stats(np.array([[1, 5], [0, 50]], np.float64), np.array([0.5, 0.25]))
    z = np.zeros((3, 2))
    stats = EstimatorStats(np.ones(3), np.ones(3), np.ones(3), np.ones(3), z, z, z, z,
                           sum_dr=z, sum_dr2=np.array([[0, 1], [0, np.inf], [0, 2]]))
    sweep_inputs.check_sums_finite([stats._replace(sum_dr2=z), None], ["a", "b"], st, "f")
    with pytest.raises(InputError) as e:
        sweep_inputs.check_sums_finite([None, stats], ["a", "b"], st, "f.parquet")
    assert str(e.value) == (
        "f.parquet: rewards: the sweep's float32 sums of b are not finite (sum_dr2): its rewards "
        "(the largest |reward| / propensity is b 50 at propensity 0.25) or the model's "
        "predicted b (doubly robust terms) are too large for float32; rescale b (e.g. in "
        "thousands) or drop that row (nothing written) at rows [1]")


def test_the_limit_is_float32_max_over_64():
    assert sweep_inputs.F32_SUM_LIMIT == float(np.finfo(np.float32).max) / 64
    st = _stats(np.array([[2.3e17]]), np.array([0.1]))  # (2.3e18)^2 = 5.29e36: just under
    st.check_sums(["c"], "f")
    st.update(1, np.array([[5e16]], np.float32), np.array([0.1]))  # + 2.5e35: past 5.3169e36
    with pytest.raises(InputError, match=r"c is too large .* reaches 5.54e\+36, past 5.32e\+36"):
        st.check_sums(["c"], "f")
