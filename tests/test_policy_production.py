"""``policy select`` says where the data cannot back its choice: a point whose interval lies
below production's on an objective (a warning; ``below_production`` in the selection, and
publish refuses it on the maximized objective without --accept-below-production), one not
distinguishable from production on the maximized objective (a note), and a runner-up whose
interval overlaps the chosen point's (a note; ``runner_up`` in the selection). Hand-built
frontiers with numbers chosen so the answer is known."""

import json
import shutil

import pytest

from puts_jax import cli, policy
from conftest import cli_error, tiny_cli_world

#                    session_success            clicks
POINTS = [((0.2300, 0.2200, 0.2400), (0.2500, 0.2400, 0.2600)),  # fails clicks >= -1%
          ((0.1967, 0.1882, 0.2054), (0.2926, 0.2880, 0.3028)),
          ((0.1500, 0.1400, 0.1600), (0.2938, 0.2900, 0.3040))]
PRODUCTION = ((0.2187, 0.2098, 0.2280), (0.2900, 0.2850, 0.2950))
LAMBDAS = [[1.0, 0.0], [0.75, 0.25], [0.0, 1.0]]


def _block(rows):
    return {q: [[obj[k] for obj in row] for row in rows] for k, q in enumerate(("value", "lo",
                                                                                "hi"))}


def _frontier(path):
    """A frontier without halves: 3 points, production and logging baselines (SNIPS)."""
    from puts_jax.report_estimates import PROVENANCE_KEYS
    from puts_jax.report_json import SCHEMA

    doc = {"schema": SCHEMA, "confidence": 0.95, "hypervolume": None, "operating_point": None,
           "verdict": "", "verdict_detail": "", "warnings": [],
           "provenance": dict.fromkeys(PROVENANCE_KEYS),
           "objectives": {"names": ["session_success", "clicks"], "directions": ["max", "max"]},
           "lambdas": LAMBDAS, "primary_estimator": "snips",
           "estimators": {"snips": _block(POINTS)},
           "baselines": {b: {"estimators": {"snips": _block([PRODUCTION])}}
                         for b in ("production", "logging")},
           "points": {"names": ["a", "b", "c"], "n": [100] * 3, "matched": [50] * 3,
                      "ess": [40.0] * 3},
           "nondominated": [True] * 3, "verdicts": [""] * 3}
    path.write_text(json.dumps(doc))
    return path


def _select(path, maximize, *extra):
    return cli.main(["policy", "select", "--frontier", str(path), "--maximize", maximize,
                     *extra])


def test_a_point_below_production_on_the_maximized_objective_is_a_warning(tmp_path, capsys):
    f = _frontier(tmp_path / "f.json")
    out = tmp_path / "sel.json"
    capsys.readouterr()
    assert _select(f, "session_success", "--guardrail", "clicks >= -1%", "--out", str(out)) == 0
    printed, err = capsys.readouterr()
    assert err == ("puts-jax: warning: the selected point is below production on session_success "
                   "(0.1967 [0.1882, 0.2054] vs 0.2187 [0.2098, 0.228], intervals disjoint): "
                   "publishing it would lose session_success\n")
    sel = json.loads(out.read_text())
    assert sel["index"] == 1 and sel["below_production"] == ["session_success"]
    assert sel["production"] == {"estimates": {"value": [0.2187, 0.29], "lo": [0.2098, 0.285],
                                               "hi": [0.228, 0.295]},
                                 "from": "full data (also used for the choice)"}
    # the runner-up (point 2) is far below on session_success: recorded, nothing printed
    assert sel["runner_up"] == {"index": 2, "lambda": [0.0, 1.0], "name": "c",
                                "estimate": {"value": 0.15, "lo": 0.14, "hi": 0.16},
                                "distinguishable": True}
    assert printed.splitlines()[-1] == (
        f"note: the operating point is not marked on {f}: point 1 is below production on "
        "session_success (publish it with --accept-below-production to make it the operating "
        "policy); the selection is written")


def test_a_runner_up_within_noise_and_a_tie_with_production_are_notes(tmp_path, capsys):
    f = _frontier(tmp_path / "f.json")
    capsys.readouterr()
    assert _select(f, "clicks") == 0
    printed, err = capsys.readouterr()
    sel = json.loads(printed)
    assert sel["index"] == 2 and sel["below_production"] == ["session_success"]
    assert sel["runner_up"] == {"index": 1, "lambda": [0.75, 0.25], "name": "b",
                                "estimate": {"value": 0.2926, "lo": 0.288, "hi": 0.3028},
                                "distinguishable": False}
    assert err.splitlines() == [
        "puts-jax: warning: the selected point is below production on session_success "
        "(0.15 [0.14, 0.16] vs 0.2187 [0.2098, 0.228], intervals disjoint): publishing it would "
        "lose session_success",
        "puts-jax: note: the selected point is not distinguishable from production on clicks "
        "(0.2938 [0.29, 0.304] vs 0.29 [0.285, 0.295], intervals overlap)",
        "puts-jax: note: within noise: the runner-up lambda=(0.75, 0.25) 0.2926 [0.288, 0.3028] "
        "overlaps the selected point's interval on clicks (0.2938 [0.29, 0.304]); the data "
        "cannot tell them apart (chosen by point estimate)"]


def test_a_lone_point_has_no_runner_up_and_no_production_baseline_no_comparison(
        tmp_path, capsys):
    f = _frontier(tmp_path / "f.json")
    doc = json.loads(f.read_text())
    del doc["baselines"]["production"]
    f.write_text(json.dumps(doc))
    capsys.readouterr()
    assert _select(f, "session_success", "--guardrail", "clicks >= -1%", "--baseline",
                   "logging") == 0
    printed, err = capsys.readouterr()
    sel = json.loads(printed)
    assert sel["production"] is None and sel["below_production"] == []
    assert sel["index"] == 1 and sel["runner_up"]["index"] == 2 and err == ""
    capsys.readouterr()
    assert _select(f, "session_success", "--guardrail", "clicks >= +0%", "--baseline",
                   "logging") == 0  # only point 2's lower bound (0.29) reaches 0.29
    sel = json.loads(capsys.readouterr().out)
    assert sel["index"] == 2 and sel["runner_up"] is None


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("below_production")
    tiny_cli_world(d)
    return d


def test_publish_refuses_a_point_below_production_without_the_flag(run, tmp_path, capsys):
    shutil.copytree(run / "frontier", tmp_path / "frontier")
    f, sel_path, reg = tmp_path / "frontier" / "frontier.json", tmp_path / "sel.json", \
        tmp_path / "reg"
    doc = json.loads(f.read_text())
    prod = doc["halves"]["report"]["baselines"]["production"]["estimators"][
        doc["primary_estimator"]]
    for q in ("value", "lo", "hi"):  # production far above every point on session_success
        prod[q] = [[1000.0, row[1]] for row in prod[q]]
    f.write_text(json.dumps(doc))
    assert cli.main(["policy", "select", "--frontier", str(f), "--maximize", "session_success",
                     "--guardrail", "clicks >= -99%", "--out", str(sel_path)]) == 0
    sel = json.loads(sel_path.read_text())
    assert sel["below_production"][0] == "session_success"
    v, lo, hi = (sel["estimates"][q][0] for q in ("value", "lo", "hi"))
    loss = (f"point {sel['index']} ({sel['name']}) is below production on session_success "
            f"({v:.4g} [{lo:.4g}, {hi:.4g}] vs 1000 [1000, 1000], intervals disjoint): "
            "publishing it would lose session_success")
    publish = ["policy", "publish", "--registry", str(reg), "--model", str(run / "model"),
               "--frontier", str(f), "--logs", str(run / "data" / "logs.parquet"),
               "--reason", "test", "--selection", str(sel_path)]
    capsys.readouterr()
    assert cli.main(publish) == 2
    assert cli_error(capsys) == (f"--selection: {sel_path}: {loss}; select again, or publish "
                                 "it anyway with --accept-below-production (recorded in "
                                 "policy.json and the audit log); nothing published")
    assert not reg.exists()
    assert cli.main(publish + ["--accept-below-production"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[0] == "published v0001"
    assert err == (f"puts-jax: warning: published v0001 although {loss} (accepted with "
                   "--accept-below-production; recorded in policy.json and the audit log)\n")
    assert policy.show(str(reg))["policy"]["accepted"] == [loss]
    assert policy.read_audit(str(reg))[-1]["accepted"] == [loss]
