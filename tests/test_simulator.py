"""Tests of the embedded simulator: its closed form against brute force and Monte Carlo, its
determinism, and the calibration targets of SIMULATOR.md on the reference default."""

import dataclasses
import hashlib
import os
import time

import numpy as np
import pytest

from puts_jax.data import logs
from puts_jax.data import simulator as sim

N_EVAL = 20000
EVAL_SEED = 123


@pytest.fixture(scope="module")
def tiny_world():
    return sim.make_world(sim.SimConfig.tiny())


def _eval(world):
    req = sim.sample_requests(world, N_EVAL, EVAL_SEED)
    return req, sim.true_values(world, req, world.action_set.weights)


@pytest.fixture(scope="module")
def default_eval():
    world = sim.make_world(sim.SimConfig.default())
    return (world, *_eval(world))


def _headroom(world, req, tv):
    """J0 of (best global, per-segment, Bayes, per-request oracle), relative to best global."""
    g = sim.policy_value(tv, np.full(len(tv), sim.best_global_action(world)))[0]
    pols = [sim.segment_oracle_actions(world, req.segment), sim.bayes_actions(world, req.context),
            sim.request_oracle_actions(tv)]
    return g, [sim.policy_value(tv, a)[0] / g - 1.0 for a in pols]


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize("kwargs, match", [
    (dict(slate=60), r"SimConfig\.slate: 60 exceeds n_candidates = 50"),
    (dict(n_segments=3), r"SimConfig\.mu: expected shape \(3, 4\)"),
    (dict(miscalibration=-1.0), r"SimConfig\.miscalibration"),
    (dict(bz=(1.0, 2.0)), r"SimConfig\.bz"),
    (dict(n_candidates=0), r"SimConfig\.n_candidates"),
])
def test_config_validation_names_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sim.SimConfig(**kwargs)


def test_presets_and_action_set(tiny_world):
    cfg = sim.SimConfig.default()
    assert (cfg.n_segments, cfg.context_dim, cfg.n_candidates, cfg.slate) == (4, 16, 50, 10)
    aset = tiny_world.action_set
    assert aset.n_actions == 10 and aset.objective_names == sim.OBJECTIVES
    np.testing.assert_allclose(aset.weights[:, 3], -0.25)
    np.testing.assert_allclose(aset.weights[:, :3].sum(1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(tiny_world.examine, (np.arange(4) + 1.0) ** -0.8)
    np.testing.assert_allclose(tiny_world.m, np.asarray(cfg.mu).mean(0))


# ----------------------------------------------------------------------------- requests


def test_sample_requests_depends_only_on_seed_and_row(tiny_world):
    a = sim.sample_requests(tiny_world, 3000, seed=5)
    b = sim.sample_requests(tiny_world, 3000, seed=5)
    part = sim.sample_requests(tiny_world, 1100, seed=5, start=1500)
    other = sim.sample_requests(tiny_world, 3000, seed=6)
    for x, y, p in zip(a, b, part):
        np.testing.assert_array_equal(x, y)
        np.testing.assert_array_equal(x[1500:2600], p)
    assert not np.array_equal(a.preds, other.preds)
    assert a.context.shape == (3000, 4) and a.context.dtype == np.float32
    assert a.preds.shape == a.q_true.shape == (3000, 12, 4) and a.preds.dtype == np.float32
    assert a.segment.dtype == np.int32 and set(np.unique(a.segment)) == {0, 1, 2, 3}
    assert ((a.preds > 0) & (a.preds < 1)).all() and ((a.q_true > 0) & (a.q_true < 1)).all()
    assert len(sim.sample_requests(tiny_world, 0, seed=5).preds) == 0


def test_calibrated_ranker_is_unbiased_per_segment():
    """miscalibration 0: ranker logit = true logit + N(0, 0.5^2) noise in every segment."""
    w = sim.make_world(dataclasses.replace(sim.SimConfig.tiny(), miscalibration=0.0))
    np.testing.assert_allclose(w.a, 1.0)
    np.testing.assert_allclose(w.b, 0.0)
    np.testing.assert_allclose(w.tau, 0.5)
    req = sim.sample_requests(w, 2000, seed=1)
    logit = lambda p: np.log(p / (1 - p))  # noqa: E731
    resid = logit(req.preds.astype(np.float64)) - logit(req.q_true.astype(np.float64))
    assert abs(resid.mean()) < 0.01 and abs(resid.std() - 0.5) < 0.01


# ----------------------------------------------------------------------------- exact values


def _brute_force(world, preds, q, weights):
    """Per-request, per-action python loop over SIMULATOR.md's formulas."""
    L, e, pbar = world.cfg.slate, world.examine, world.pbar
    out = np.zeros((len(preds), len(weights), 2))
    for r in range(len(preds)):
        for a, w in enumerate(weights):
            util = [sum(float(w[k]) * float(preds[r, n, k]) / pbar[k] for k in range(4))
                    for n in range(preds.shape[1])]
            slate = sorted(range(len(util)), key=lambda n: (-util[n], n))[:L]
            miss, clicks = 1.0, 0.0
            for i, n in enumerate(slate):
                ps = 1 - (1 - float(q[r, n, 1])) * (1 - float(q[r, n, 2]))
                miss *= 1 - e[i] * ps
                clicks += e[i] * float(q[r, n, 0])
            out[r, a] = (1 - miss, clicks)
    return out


def test_true_values_equal_brute_force(tiny_world):
    req = sim.sample_requests(tiny_world, 6, seed=9)
    W = tiny_world.action_set.weights
    got = sim.true_values(tiny_world, req, W, chunk_rows=4)
    assert got.shape == (6, 10, 2) and got.dtype == np.float32
    np.testing.assert_allclose(got, _brute_force(tiny_world, req.preds, req.q_true, W), atol=1e-6)


def test_utility_ties_go_to_the_lower_candidate_index(tiny_world):
    req = sim.sample_requests(tiny_world, 3, seed=2)
    preds = req.preds.copy()
    preds[0] = 0.1  # every candidate ties: the slate is candidates 0..3 in order
    preds[1, 7] = preds[1, 2]  # a tied pair, wherever it ranks
    preds[2, :] = preds[2, 5]
    preds[2, 9] = 0.9  # one clear winner, then an 11-way tie cut at the slate boundary
    tied = req._replace(preds=preds)
    W = tiny_world.action_set.weights
    got = sim.true_values(tiny_world, tied, W)
    np.testing.assert_allclose(got, _brute_force(tiny_world, preds, req.q_true, W), atol=1e-6)
    e, q = tiny_world.examine, req.q_true[0].astype(np.float64)
    np.testing.assert_allclose(got[0, :, 1], (e * q[:4, 0]).sum(), rtol=1e-6)


def test_true_values_rejects_bad_weights(tiny_world):
    req = sim.sample_requests(tiny_world, 2, seed=0)
    with pytest.raises(ValueError, match=r"weights: expected f32\[A, 4\]"):
        sim.true_values(tiny_world, req, np.ones((3, 2)))


# ----------------------------------------------------------------------------- policies


def test_segment_posterior_is_the_gaussian_posterior(tiny_world):
    req = sim.sample_requests(tiny_world, 500, seed=3)
    post = sim.segment_posterior(tiny_world, req.context)
    mean = tiny_world.cfg.context_scale * tiny_world.u  # [S, D]
    logpdf = -0.5 * ((req.context[:, None, :].astype(np.float64) - mean[None]) ** 2).sum(-1)
    ref = np.exp(logpdf - logpdf.max(1, keepdims=True))
    np.testing.assert_allclose(post, ref / ref.sum(1, keepdims=True), atol=1e-6)
    assert post.dtype == np.float32 and post.shape == (500, 4)


def test_reference_policies_and_values(tiny_world):
    req = sim.sample_requests(tiny_world, 400, seed=4)
    tv = sim.true_values(tiny_world, req, tiny_world.action_set.weights)
    vbar0 = tiny_world.vbar[:, :, 0]
    assert sim.best_global_action(tiny_world) == int(np.argmax(vbar0.mean(0)))
    post = sim.segment_posterior(tiny_world, req.context).astype(np.float64)
    np.testing.assert_array_equal(sim.bayes_actions(tiny_world, req.context),
                                  np.argmax(post @ vbar0, 1))
    np.testing.assert_array_equal(sim.segment_oracle_actions(tiny_world, req.segment),
                                  np.argmax(vbar0, 1)[req.segment])
    oracle = sim.request_oracle_actions(tv)
    assert (tv[np.arange(400), oracle, 0] >= tv[:, :, 0].max(1)).all()
    hand = np.array([[[1.0, 2.0], [3.0, 4.0]], [[5.0, 6.0], [7.0, 8.0]]], np.float32)
    np.testing.assert_allclose(sim.policy_value(hand, np.array([1, 0])), [4.0, 5.0])
    np.testing.assert_allclose(sim.logging_policy_value(hand, [0.5, 0.5]), [4.0, 5.0])
    np.testing.assert_allclose(sim.logging_policy_value(tv, sim.logging_probs(tiny_world)),
                               tv.mean((0, 1)), rtol=1e-5)


# ----------------------------------------------------------------------------- logs


def test_simulate_log_matches_exact_expectations(tiny_world):
    """Monte Carlo: realized session success and click counts average to the exact J0, J1 of the
    logged actions on the same requests, within 4 standard errors."""
    n, seed = 20000, 11
    d = sim.simulate_log(tiny_world, n, seed, chunk_rows=3000)
    A = tiny_world.action_set.n_actions
    np.testing.assert_allclose(d["propensity"], 1.0 / A)
    counts = np.bincount(d["action"], minlength=A)
    assert np.abs(counts - n / A).max() < 5 * np.sqrt(n / A)
    req = sim.sample_requests(tiny_world, n, seed)
    np.testing.assert_array_equal(d["context"], req.context)
    tv = sim.true_values(tiny_world, req, tiny_world.action_set.weights)
    exact = tv[np.arange(n), d["action"]]
    r = d["rewards"].astype(np.float64)
    assert set(np.unique(r[:, 0])) <= {0.0, 1.0}
    assert (r[:, 1] == np.round(r[:, 1])).all() and r[:, 1].max() <= tiny_world.cfg.slate
    se = np.sqrt(((r - exact) ** 2).mean(0) / n)
    assert (np.abs(r.mean(0) - exact.mean(0)) < 4 * se).all(), (r.mean(0), exact.mean(0), se)


def test_simulate_log_is_independent_of_chunking(tiny_world):
    a = sim.simulate_log(tiny_world, 2500, 3, chunk_rows=700)
    b = sim.simulate_log(tiny_world, 2500, 3)
    for k in ("request_id", "context", "action", "propensity", "rewards"):
        np.testing.assert_array_equal(a[k], b[k])
    assert a["meta"].reward_names == ("session_success", "clicks")
    assert a["meta"].reward_kinds == ("binary", "count")
    assert a["meta"].logging_policy == {"kind": "uniform"}


def test_epsilon_greedy_logging(tiny_world):
    eps, n, A = 0.2, 20000, tiny_world.action_set.n_actions
    prod = tiny_world.action_set.production
    d = sim.simulate_log(tiny_world, n, 8, logging=("epsilon_greedy", eps))
    p = sim.logging_probs(tiny_world, ("epsilon_greedy", eps))
    np.testing.assert_allclose(p.sum(), 1.0)
    np.testing.assert_allclose(d["propensity"], p[d["action"]])
    assert p[prod] == pytest.approx(1 - eps + eps / A)
    freq = (d["action"] == prod).mean()
    assert abs(freq - p[prod]) < 4 * np.sqrt(p[prod] * (1 - p[prod]) / n)
    assert d["meta"].logging_policy == {"kind": "epsilon_greedy", "epsilon": eps,
                                        "production": prod}
    with pytest.raises(ValueError, match="logging: epsilon"):
        sim.logging_probs(tiny_world, ("epsilon_greedy", 0.0))
    with pytest.raises(ValueError, match="logging: expected"):
        sim.logging_probs(tiny_world, "softmax")


def _sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_write_simulation_is_reproducible_and_readable(tmp_path):
    cfg = sim.SimConfig.tiny()
    kw = dict(cfg=cfg, n_logs=1500, n_heldout=700, n_eval=900, n_requests=60, seed=42)
    p1 = sim.write_simulation(str(tmp_path / "a"), **kw)
    p2 = sim.write_simulation(str(tmp_path / "b"), **kw)
    assert sorted(p1) == ["heldout", "logs", "requests", "truth"]
    for k in p1:
        assert _sha256(p1[k]) == _sha256(p2[k]), k
    assert not [f for f in os.listdir(tmp_path / "a") if f.startswith(".tmp-")]
    meta, rid, lb = logs.read_log(p1["logs"])
    assert len(rid) == 1500 and lb.rewards.shape == (1500, 2)
    assert meta.action_set.hash() == sim.make_world(cfg).action_set.hash()
    _, rid_h, held = logs.read_log(p1["heldout"])
    assert rid_h[0] == 1500 and not np.array_equal(held.context[:5], lb.context[:5])
    chunk = next(logs.iter_request_chunks(p1["requests"]))
    assert chunk.batch.preds.shape == (60, 12, 4) and chunk.batch.mask.all()
    assert chunk.candidate_ids[1, 0] == (2200 + 1) * 12
    t = np.load(p1["truth"])
    assert t["true_values"].shape == (900, 10, 2) and t["vbar"].shape == (4, 10, 2)
    assert t["bayes_actions"].shape == (900,) and t["action_values"].shape == (10, 2)
    np.testing.assert_allclose(t["value_bayes"], sim.policy_value(t["true_values"],
                                                                  t["bayes_actions"]))
    p3 = sim.write_simulation(str(tmp_path / "c"), **{**kw, "seed": 43})
    assert _sha256(p3["logs"]) != _sha256(p1["logs"])


# ----------------------------------------------------------------------------- calibration


def test_calibration_headroom(default_eval):
    """SIMULATOR.md calibration targets on the reference default (20k eval requests)."""
    world, req, tv = default_eval
    g, (seg, bayes, oracle) = _headroom(world, req, tv)
    assert abs(g - 0.415) < 0.006, g
    assert abs(seg - 0.047) < 0.005, seg
    assert 0.026 < bayes < 0.038, bayes
    assert abs(oracle - 0.069) < 0.006, oracle
    assert 0.70 < (sim.segment_posterior(world, req.context).argmax(1) == req.segment).mean() < 0.86


def test_calibration_front_and_tradeoff(default_eval):
    world, _, tv = default_eval
    v = tv.mean(0, dtype=np.float64)  # [A, J]
    dominated = ((v[None] >= v[:, None]).all(-1) & (v[None] > v[:, None]).any(-1)).any(1)
    assert 11 <= (~dominated).sum() <= 17, (~dominated).sum()
    j0_best = int(np.argmax(v[:, 0]))
    assert j0_best == sim.best_global_action(world)
    assert abs(v[j0_best, 1] / v[:, 1].max() - 0.50) < 0.05
    pure_click = int(np.flatnonzero(world.action_set.weights[:, 0] == 1.0)[0])
    assert abs(v[pure_click, 0] / v[:, 0].max() - 0.63) < 0.05
    vbar_pop = world.vbar.mean(0)  # calibration sample agrees with the fresh eval sample
    np.testing.assert_allclose(vbar_pop, v, rtol=0.02)


def test_calibrated_ranker_leaves_no_segment_headroom():
    world = sim.make_world(sim.SimConfig(miscalibration=0.0))
    _, (seg, bayes, _) = _headroom(world, *_eval(world))
    assert seg < 0.003 and bayes < 0.003, (seg, bayes)


@pytest.mark.slow
def test_one_million_log_rows_under_a_minute():
    world = sim.make_world(sim.SimConfig.default())
    t = time.perf_counter()
    d = sim.simulate_log(world, 1_000_000, seed=1)
    assert time.perf_counter() - t < 60.0
    assert d["rewards"].shape == (1_000_000, 2)
