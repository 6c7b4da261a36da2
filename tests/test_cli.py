"""CLI end to end on tiny sizes: simulate -> (model) -> sweep -> select -> publish -> set-lambda
-> score -> truth, checking files and row counts."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from flax import nnx

from puts_jax import cli, model_io, policy
from puts_jax.config import QNetConfig
from puts_jax.qnet import QNetwork
from conftest import make_tiny_world


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    make_tiny_world(d, n_logs=2000, n_heldout=500, n_evaluation=3000, n_eval=400,
                    n_requests=257)
    return d


def test_sweep_select_publish_score_truth(run, capsys):
    d = run
    assert cli.main(["sweep", "--model", str(d / "model"), "--logs",
                     str(d / "data" / "evaluation.parquet"), "--out", str(d / "frontier"),
                     "--n-lambdas", "5", "--bootstrap", "40", "--seed", "3"]) == 0
    doc = json.loads((d / "frontier" / "frontier.json").read_text())
    assert len(doc["lambdas"]) == 5 and doc["points"]["n"] == [3000] * 5
    # bootstrap evidence: SNIPS percentile intervals, the simultaneous band, dominance
    assert "snips_boot" in doc["estimators"] and "snips_boot" in doc["baselines"]["actions"]["estimators"]
    band = doc["band"]
    assert band["method"].startswith("Poisson bootstrap") and len(band["lo"]) == 5
    assert all(lo <= v <= hi for lo, v, hi in zip(band["lo"][0], doc["estimators"]["snips"]["value"][0],
                                                   band["hi"][0]))
    assert len(band["verdicts"]) == 5 and len(doc["dominance"]["probability"]) == 5
    assert doc["bootstrap"] == {**doc["bootstrap"], "n_resamples": 40, "seed": 3}
    assert (d / "frontier" / "frontier.png").stat().st_size > 1000
    assert cli.main(["policy", "select", "--frontier", str(d / "frontier" / "frontier.json"),
                     "--maximize", "session_success", "--out", str(d / "sel.json")]) == 0
    sel = json.loads((d / "sel.json").read_text())
    assert sel["index"] is not None
    assert cli.main(["policy", "publish", "--registry", str(d / "reg"), "--model", str(d / "model"),
                     "--frontier", str(d / "frontier" / "frontier.json"), "--logs",
                     str(d / "data" / "logs.parquet"), "--selection", str(d / "sel.json"),
                     "--reason", "test"]) == 0
    assert cli.main(["policy", "set-lambda", "--registry", str(d / "reg"), "--lam", "0.3,0.7",
                     "--reason", "switch"]) == 0  # not a grid point: not the published lambda
    assert policy.current_version(str(d / "reg")) == "v0002"
    assert cli.main(["score", "--policy", str(d / "reg"), "--requests",
                     str(d / "data" / "requests.parquet"), "--out", str(d / "scored.parquet"),
                     "--top-k", "3", "--chunk-rows", "100"]) == 0
    t = pq.read_table(str(d / "scored.parquet"))
    req = pq.read_table(str(d / "data" / "requests.parquet"))
    assert t.num_rows == 257
    np.testing.assert_array_equal(t["request_id"].to_numpy(), req["request_id"].to_numpy())
    assert all(len(x) == 3 for x in t["topk_index"].to_pylist())
    capsys.readouterr()
    assert cli.main(["truth", "--data", str(d / "data"), "--model", str(d / "model"), "--frontier",
                     str(d / "frontier" / "frontier.json"), "--registry", str(d / "reg")]) == 0
    out = capsys.readouterr().out
    assert "Bayes context policy" in out and "personalization gain" in out
    # the learned policy at lambda (1, 0) is the frontier's point (1, 0): the same numbers
    e, i = doc["estimators"][doc["primary_estimator"]], doc["lambdas"].index([1.0, 0.0])
    line = next(x for x in out.splitlines() if x.startswith("learned, lam=[1.0, 0.0]"))
    for j in range(2):
        assert f"{e['value'][i][j]:.4f} [{e['lo'][i][j]:.4f}, {e['hi'][i][j]:.4f}]" in line
    assert "best global action on session_success (action " in out
    assert ("best global action = the single action with the highest true mean session_success "
            "(the simulator's exact population mean)") in out


def test_sweep_without_bootstrap_uses_bonferroni(run):
    d = run
    assert cli.main(["sweep", "--model", str(d / "model"), "--logs",
                     str(d / "data" / "evaluation.parquet"), "--out", str(d / "frontier0"),
                     "--n-lambdas", "3", "--bootstrap", "0"]) == 0
    doc = json.loads((d / "frontier0" / "frontier.json").read_text())
    assert doc["band"]["method"].startswith("Bonferroni") and doc["dominance"] is None
    assert "snips_boot" not in doc["estimators"] and doc["bootstrap"]["n_resamples"] == 0


def test_bad_guardrail_is_a_clear_error(run, capsys):
    fr = str(run / "frontier" / "frontier.json")
    assert cli.main(["policy", "select", "--frontier", fr, "--maximize", "session_success",
                     "--guardrail", "nope >= -1%"]) == 2
    assert "puts-jax: error: --guardrail: unknown objective 'nope'" in capsys.readouterr().err
    # a bare number is ambiguous (ratio or percent?): rejected, never read as -1000%
    assert cli.main(["policy", "select", "--frontier", fr, "--maximize", "session_success",
                     "--guardrail", "clicks >= -10"]) == 2
    assert "relative change in percent" in capsys.readouterr().err
    # nothing passes: exit 3, and nothing is marked on the frontier
    assert cli.main(["policy", "select", "--frontier", fr, "--maximize", "session_success",
                     "--guardrail", "clicks >= +500%"]) == 3


def test_publish_refuses_a_frontier_of_another_model(run, capsys):
    other = QNetwork(QNetConfig.tiny(), 4, 10, ("binary", "count"), rngs=nnx.Rngs(9))
    model_io.save_model(str(run / "other"), other)
    assert cli.main(["policy", "publish", "--registry", str(run / "reg2"), "--model",
                     str(run / "other"), "--frontier", str(run / "frontier" / "frontier.json"),
                     "--logs", str(run / "data" / "logs.parquet"), "--point", "0",
                     "--reason", "x"]) == 2
    assert "evaluated a model with params hash" in capsys.readouterr().err
    assert not (run / "reg2").exists() or policy.current_version(str(run / "reg2")) is None


def test_missing_file_is_an_error_not_a_traceback(run, capsys):
    assert cli.main(["report", "--frontier", str(run / "nope.json")]) == 2
    err = capsys.readouterr().err
    assert err == f"puts-jax: error: --frontier: no such file {run / 'nope.json'}\n"
