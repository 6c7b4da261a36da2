"""Slate-level matching: hand cases, a brute-force oracle, the simulator's slate-matched logs, and
on simulated logs the two claims that justify it: IPS/SNIPS stay unbiased for the true value and
the effective sample size goes up."""

import jax
import numpy as np
import pytest

from puts_jax import ope, slates
from puts_jax.checks import InputError
from puts_jax.data import logs
from puts_jax.data import simulator as sim


# ----------------------------------------------------------------------------- hand cases


def test_two_actions_with_the_same_slate_are_both_consistent():
    preds = np.array([[[3.0, 0.0], [2.0, 1.0], [0.0, 3.0]]], np.float32)  # B=1, N=3, K=2
    W = np.array([[1.0, 0.0], [2.0, 0.1], [0.0, 1.0]])  # 0 and 1 rank 0, 1, 2; 2 ranks 2, 1, 0
    probs = np.array([0.5, 0.3, 0.2])
    m = slates.slate_matching(preds, W, [0], probs, k=2)
    np.testing.assert_array_equal(m.consistent, [[True, True, False]])
    np.testing.assert_allclose(m.propensity, [0.8])
    assert m.n_consistent.tolist() == [2]
    m2 = slates.slate_matching(preds, W, [2], probs, k=2)
    np.testing.assert_array_equal(m2.consistent, [[False, False, True]])
    np.testing.assert_allclose(m2.propensity, [0.2])


def test_same_items_in_another_order_is_another_slate():
    """Examination is position-biased: the slate is an ordered list."""
    preds = np.array([[[3.0, 0.0], [2.0, 2.0], [0.0, 0.0]]], np.float32)
    W = np.array([[1.0, 0.0], [0.0, 1.0]])  # slates [0, 1] and [1, 0]: same set, other order
    top = slates.rank_slates(preds, W, 2)
    assert top.tolist() == [[[0, 1], [1, 0]]]
    m = slates.slate_matching(preds, W, [0], [0.5, 0.5], k=2)
    np.testing.assert_array_equal(m.consistent, [[True, False]])
    np.testing.assert_allclose(m.propensity, [0.5])


def test_padding_nonfinite_and_ties():
    preds = np.array([[[1.0], [5.0], [1.0], [np.nan], [9.0]]], np.float32)  # K = 1
    mask = np.array([[True, True, True, True, False]])  # the 9.0 is padding
    top = slates.rank_slates(preds, np.array([[1.0]]), 4, mask)
    assert top.tolist() == [[[1, 0, 2, -1]]]  # tie 0/2 to the lower index; NaN never ranked
    m = slates.slate_matching(preds, np.array([[1.0], [2.0], [-1.0]]), [1], [0.2, 0.3, 0.5], 4,
                              mask)
    np.testing.assert_array_equal(m.consistent, [[True, True, False]])
    np.testing.assert_allclose(m.propensity, [0.5])


@pytest.mark.parametrize("kwargs, match", [
    (dict(action=[3]), r"action.*outside \[0, 2\)"),
    (dict(k=4), r"k.*slate size 4 outside \[1, 3\]"),
    (dict(probs=[1.0, 0.0, 0.0]), r"probs.*expected f\[2\]"),
    (dict(W=np.ones((2, 3))), r"weights.*expected f\[A, 2\]"),
])
def test_errors_name_the_field(kwargs, match):
    args = dict(preds=np.ones((1, 3, 2), np.float32), W=np.eye(2), action=[0], probs=[0.5, 0.5],
                k=2)
    args.update(kwargs)
    with pytest.raises(InputError, match=match):
        slates.slate_matching(args["preds"], args["W"], args["action"], args["probs"], args["k"])


def _brute(preds, mask, W, action, probs, k):
    B, N, _ = preds.shape
    A = len(W)
    top = np.full((B, A, k), -1)
    for b in range(B):
        for a in range(A):
            real = [n for n in range(N) if mask[b, n] and np.isfinite(preds[b, n]).all()]
            s = {n: sum(float(W[a, j]) * float(preds[b, n, j]) for j in range(preds.shape[2]))
                 for n in real}
            order = sorted(real, key=lambda n: (-s[n], n))[:k]
            top[b, a, :len(order)] = order
    cons = np.array([[(top[b, a] == top[b, action[b]]).all() for a in range(A)] for b in range(B)])
    p = probs if probs.ndim == 2 else np.broadcast_to(probs, (B, A))
    return top, cons, np.array([p[b][cons[b]].sum() for b in range(B)])


@pytest.mark.parametrize("ties", [True, False])
def test_equals_a_brute_force_loop(ties):
    rng = np.random.default_rng(0 if ties else 1)
    B, N, K, A, k = 40, 7, 3, 9, 3
    if ties:  # exact arithmetic with many ties: integer predictions, quarter weights
        preds = rng.integers(0, 4, (B, N, K)).astype(np.float32)
        W = rng.integers(-1, 5, (A, K)) / 4.0
    else:
        preds = rng.random((B, N, K)).astype(np.float32)
        W = rng.random((A, K))
    W[1] = W[0] * 2  # a scaled copy: always the same slate as action 0
    mask = rng.random((B, N)) < 0.8
    mask[0, 1:] = False  # fewer real candidates than k
    action = rng.integers(0, A, B)
    probs = rng.dirichlet(np.ones(A), B) if ties else rng.dirichlet(np.ones(A))
    top, cons, prop = _brute(preds, mask, W, action, probs, k)
    np.testing.assert_array_equal(slates.rank_slates(preds, W, k, mask), top)
    m = slates.slate_matching(preds, W, action, probs, k, mask)
    np.testing.assert_array_equal(m.consistent, cons)
    np.testing.assert_allclose(m.propensity, prop, rtol=1e-12)
    assert m.consistent[:, 0].tolist() == m.consistent[:, 1].tolist()
    assert m.consistent[np.arange(B), action].all()


# ----------------------------------------------------------------------------- simulator


@pytest.fixture(scope="module")
def tiny_world():
    return sim.make_world(sim.SimConfig.tiny())


@pytest.mark.parametrize("logging", ["uniform", ("epsilon_greedy", 0.3)])
def test_simulated_slate_log(tiny_world, logging, tmp_path):
    n, W = 3000, tiny_world.action_set.weights
    plain = sim.simulate_log(tiny_world, n, 5, logging)
    d = sim.simulate_log(tiny_world, n, 5, logging, chunk_rows=1100, slate_matching=True)
    for key in ("request_id", "context", "action", "rewards"):  # the same draws
        np.testing.assert_array_equal(d[key], plain[key])
    probs = sim.logging_probs(tiny_world, logging)
    req = sim.sample_requests(tiny_world, n, 5)
    exact = slates.slate_matching(req.preds, W / tiny_world.pbar, d["action"], probs,
                                  tiny_world.cfg.slate)
    np.testing.assert_array_equal(d["consistent"], exact.consistent)
    np.testing.assert_allclose(d["propensity"], exact.propensity, rtol=1e-12)
    assert (d["propensity"] >= plain["propensity"]).all() and d["consistent"].sum(1).max() > 1
    # The written preds (P / Pbar, as in the request set) re-derive the same matching.
    again = slates.slate_matching(d["preds"], W, d["action"], probs, tiny_world.cfg.slate)
    np.testing.assert_array_equal(again.consistent, d["consistent"])
    assert d["meta"].extra["matching"]["kind"] == "slate"
    logs.write_log(str(tmp_path / "log.parquet"), **d)
    _, _, lb = logs.read_log(str(tmp_path / "log.parquet"))
    np.testing.assert_array_equal(lb.consistent, d["consistent"])
    np.testing.assert_array_equal(lb.propensity, d["propensity"])


def test_write_simulation_slate_matching(tiny_world, tmp_path):
    paths = sim.write_simulation(str(tmp_path), tiny_world.cfg, 300, 200, 50, 10, seed=3,
                                 slate_matching=True)
    meta, _, lb = logs.read_log(paths["heldout"])
    assert meta.extra["matching"]["ordered"] and lb.consistent.sum(1).max() > 1


# ----------------------------------------------------------------------------- unbiasedness, ESS

_stats = jax.jit(jax.vmap(ope.chunk_stats, in_axes=(0, None, None, None)))


def _policies(world, req, tv) -> dict:
    n = len(req.context)
    return {"best_global": np.full(n, sim.best_global_action(world)),
            "production": np.full(n, world.action_set.production),
            "best_clicks": np.full(n, sim.best_global_action(world, objective=1)),
            "bayes": sim.bayes_actions(world, req.context),
            "segment_oracle": sim.segment_oracle_actions(world, req.segment),
            "request_oracle": sim.request_oracle_actions(tv)}


def monte_carlo(world, n_logs: int, n: int, seed0: int = 1000, logging="uniform") -> dict:
    """Per log and policy: IPS and SNIPS with slate and one-hot matching, ESS, and the exact
    expected value on the log's own requests (E[IPS | requests] for an unbiased estimator).
    Returns arrays [n_logs, P, J] (ESS [n_logs, P]) and the policy names."""
    probs = sim.logging_probs(world, logging)
    out = {k: [] for k in ("truth", "ips_slate", "snips_slate", "ess_slate", "ips_onehot",
                           "snips_onehot", "ess_onehot")}
    for m in range(n_logs):
        d = sim.simulate_log(world, n, seed0 + m, logging, slate_matching=True, with_preds=False)
        req = sim.sample_requests(world, n, seed0 + m)
        tv = sim.true_values(world, req, world.action_set.weights)
        pol = _policies(world, req, tv)
        acts = np.stack(list(pol.values()))  # [P, n]
        out["truth"].append(np.stack([tv[np.arange(n), a].mean(0, dtype=np.float64) for a in acts]))
        valid = np.ones(n, bool)
        for kind, pi, p in (
                ("slate", d["consistent"][np.arange(n), acts], d["propensity"]),
                ("onehot", acts == d["action"], probs[d["action"]])):
            e = ope.finalize(_stats(pi.astype(np.float32), p.astype(np.float32), d["rewards"],
                                    valid))
            out[f"ips_{kind}"].append(e.ips)
            out[f"snips_{kind}"].append(e.snips)
            out[f"ess_{kind}"].append(e.ess)
    res = {k: np.stack(v) for k, v in out.items()}
    res["names"] = list(pol)
    return res


def _z(diff):
    """Mean over logs of ``diff`` [M, ...] in standard errors of that mean."""
    return diff.mean(0) / (diff.std(0, ddof=1) / np.sqrt(len(diff)))


def check_unbiased_and_ess_gain(res, z_max=4.0, min_gain=1.0):
    for est in ("ips_slate", "snips_slate", "ips_onehot", "snips_onehot"):
        z = _z(res[est] - res["truth"])
        assert (np.abs(z) < z_max).all(), (est, dict(zip(res["names"], z.tolist())))
    gain = res["ess_slate"].mean(0) / res["ess_onehot"].mean(0)
    assert (gain > min_gain).all(), dict(zip(res["names"], gain.tolist()))
    return gain


def test_slate_matching_is_unbiased_and_raises_ess(tiny_world):
    """Tiny world, 60 logs of 2000 rows: every policy's slate-matched IPS and SNIPS average to the
    exact value on the same requests (within 4 standard errors of the mean over logs), and the
    ESS is higher than with one-hot action matching for every policy."""
    res = monte_carlo(tiny_world, 60, 2000)
    gain = check_unbiased_and_ess_gain(res, min_gain=1.05)
    sd = res["ips_slate"].std(0) / res["ips_onehot"].std(0)
    assert gain.max() > 1.3 and np.median(sd) < 1.0  # matched rows cut the spread over logs


def test_slate_matching_is_unbiased_under_epsilon_greedy(tiny_world):
    res = monte_carlo(tiny_world, 40, 2000, seed0=5000, logging=("epsilon_greedy", 0.5))
    check_unbiased_and_ess_gain(res)


@pytest.mark.slow
def test_slate_matching_on_the_reference_default():
    """SIMULATOR.md default (A = 36, N = 50, ordered top-10 slates): unbiased over 40 logs of
    10k rows, and the ESS does not go down for any policy."""
    world = sim.make_world(sim.SimConfig.default())
    res = monte_carlo(world, 40, 10_000)
    gain = check_unbiased_and_ess_gain(res, min_gain=0.999)
    assert gain.max() > 1.05


def test_cli_simulate_slate_matching(tmp_path):
    from puts_jax import cli

    assert cli.main(["simulate", "--out", str(tmp_path), "--preset", "tiny", "--n-logs", "300",
                     "--n-heldout", "100", "--n-evaluation", "400", "--n-eval", "50",
                     "--n-requests", "10", "--slate-matching"]) == 0
    meta, _, lb = logs.read_log(str(tmp_path / "evaluation.parquet"))
    assert meta.extra["matching"]["kind"] == "slate" and lb.consistent.sum(1).max() > 1
    chunk = next(logs.iter_log_chunks(str(tmp_path / "logs.parquet"), columns=["request_id",
              "context", "action", "propensity", "rewards", "consistent", "preds"]))
    assert chunk[2].consistent.shape == (300, 10)
