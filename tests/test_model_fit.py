"""Inputs that do not fit the model or the data are refused by name (fresh-user review):
context width != the model's D (score, sweep, truth), a frontier from other data (truth), and a
top-k beyond the candidates (ranked as the candidates, not paid for)."""

import numpy as np
import pytest

from puts_jax import cli, engine, model_io
from puts_jax.config import ScoringConfig
from puts_jax.data import logs
from puts_jax.types import RequestBatch
from conftest import make_tiny_world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("fit")
    D = make_tiny_world(d, n_logs=500, n_heldout=200, n_evaluation=1500, n_eval=200,
                        n_requests=50, models=(("model", 0), ("wide_model", 3)))
    return d, D


def test_sweep_refuses_a_log_of_another_context_width(world, capsys):
    d, D = world
    assert cli.main(["sweep", "--model", str(d / "wide_model"), "--logs",
                     str(d / "data" / "evaluation.parquet"), "--out", str(d / "f_wide"),
                     "--n-lambdas", "3", "--bootstrap", "0"]) == 2
    err = capsys.readouterr().err
    assert f"context: {D} features a row; the model reads {D + 3}\n" in err  # not every row
    assert "Traceback" not in err
    assert "evaluation.parquet" in err and not (d / "f_wide").exists()


def test_score_and_truth_refuse_other_widths_and_other_data(world, capsys):
    d, D = world
    data = str(d / "data")
    assert cli.main(["sweep", "--model", str(d / "model"), "--logs", f"{data}/evaluation.parquet",
                     "--out", str(d / "f"), "--n-lambdas", "3", "--bootstrap", "0"]) == 0
    assert cli.main(["sweep", "--model", str(d / "model"), "--logs", f"{data}/heldout.parquet",
                     "--out", str(d / "f_other"), "--n-lambdas", "3", "--bootstrap", "0"]) == 0
    capsys.readouterr()
    assert cli.main(["truth", "--data", data, "--model", str(d / "wide_model"), "--frontier",
                     str(d / "f" / "frontier.json")]) == 2
    assert f"has {D}-wide contexts; the model reads {D + 3}" in capsys.readouterr().err
    assert cli.main(["truth", "--data", data, "--model", str(d / "model"), "--frontier",
                     str(d / "f_other" / "frontier.json")]) == 2
    err = capsys.readouterr().err
    assert "--frontier" in err and "heldout.parquet" in err and "evaluation.parquet" in err
    assert cli.main(["truth", "--data", data, "--model", str(d / "model"), "--frontier",
                     str(d / "f" / "frontier.json")]) == 0
    # the sweep table says what "auto" became per objective (exact for binary rewards)
    assert cli.main(["report", "--frontier", str(d / "f" / "frontier.json")]) == 0
    meta = logs.read_meta(f"{data}/evaluation.parquet")
    out = capsys.readouterr().out
    for name, kind in zip(meta.reward_names, meta.reward_kinds):
        assert f"{name} (auto: {'exact' if kind == 'binary' else 'snips'}, 95% CI)" in out
    # a request set of another width, scored through the registry's model
    assert cli.main(["policy", "publish", "--registry", str(d / "reg"), "--model",
                     str(d / "model"), "--frontier", str(d / "f" / "frontier.json"), "--logs",
                     f"{data}/logs.parquet", "--point", "1", "--reason", "test"]) == 0
    meta = logs.read_meta(f"{data}/requests.parquet")
    K = meta.action_set.n_outcomes
    logs.write_requests(str(d / "wide_req.parquet"), meta, request_id=np.arange(3),
                        context=np.zeros((3, D + 1)), preds=np.ones((3, 4, K), np.float32))
    capsys.readouterr()
    assert cli.main(["score", "--policy", str(d / "reg"), "--requests",
                     str(d / "wide_req.parquet"), "--out", str(d / "s.parquet")]) == 2
    err = capsys.readouterr().err
    assert f"context: {D + 1} features a row; the model reads {D}\n" in err
    assert not (d / "s.parquet").exists()


def test_top_k_beyond_the_candidates_ranks_them_all_within_the_bucket(world):
    """top-k above the candidate bucket ranks the bucket's width (8 here): outputs never grow
    with k (a --top-k of 1e6 was killed for memory), padded with -1 / -inf past the N real."""
    d, D = world
    model, _ = model_io.load_model(str(d / "model"))
    meta = logs.read_meta(str(d / "data" / "logs.parquet"))
    W = meta.action_set.weights
    rng = np.random.default_rng(0)
    B, N, K = 5, 7, W.shape[1]
    batch = RequestBatch(rng.normal(size=(B, D)).astype(np.float32),
                         rng.random((B, N, K), dtype=np.float32), np.ones((B, N), bool), None)
    lam = np.array([0.5, 0.5], np.float32)
    small = engine.Scorer(model, W, ScoringConfig(top_k=N, candidate_buckets=(8, 64)))(lam, batch)
    huge = engine.Scorer(model, W, ScoringConfig(top_k=5000, candidate_buckets=(8, 64)))
    out = huge(lam, batch)
    assert out.topk_index.shape == (B, 8) and out.topk_score.shape == (B, 8)
    np.testing.assert_array_equal(out.topk_index[:, :N], small.topk_index)
    np.testing.assert_array_equal(out.topk_score[:, :N], small.topk_score)
    assert (out.topk_index[:, N:] == -1).all() and np.isneginf(out.topk_score[:, N:]).all()
    np.testing.assert_array_equal(out.action, small.action)
    assert sorted(huge._serves) == [8, 5000]  # ranked with k = the candidate bucket


def test_band_does_not_rank_points_whose_interval_collapsed():
    """OBD-like: no matched successes on an objective gives SNIPS 0 with zero SE; the band must
    call those points not estimable (as the primary table shows n/a), not nondominated."""
    from types import SimpleNamespace

    from puts_jax import sweep_job

    snips = np.array([[0.30, 0.0], [0.20, 0.0], [0.25, 0.10]])
    se = np.array([[0.01, 0.0], [0.01, 0.0], [0.01, 0.02]])
    ev = SimpleNamespace(estimates=SimpleNamespace(snips=snips, snips_se=se), boot_stats=None)
    band = sweep_job.evidence_blocks(ev, 0.95, ["max", "max"], 0)["band"]
    assert band["verdicts"] == ["not estimable", "not estimable", "nondominated"]


def test_exact_estimator_is_refused_for_a_count_objective(world, capsys):
    d, _ = world
    meta = logs.read_meta(str(d / "data" / "evaluation.parquet"))
    kinds = dict(zip(meta.reward_names, meta.reward_kinds))
    if all(k == "binary" for k in kinds.values()):
        pytest.skip("the tiny world has only binary objectives")
    assert cli.main(["sweep", "--model", str(d / "model"), "--logs",
                     str(d / "data" / "evaluation.parquet"), "--out", str(d / "f_exact"),
                     "--estimator", "exact", "--bootstrap", "0"]) == 2
    err = capsys.readouterr().err
    assert "--estimator: exact (Clopper-Pearson) intervals need binary rewards" in err
    assert not (d / "f_exact").exists()
