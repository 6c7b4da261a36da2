"""``policy publish`` takes what it publishes from the frontier, not from the files it is
handed: a --selection's choice is made again with the criteria it records and the frontier's
estimates are published (an edited file is refused), a point that fails a guardrail on the
report half needs --accept-guardrail-miss (recorded, with a warning), --logs must be an
exploration log, and an unrelated corrupt version in the registry blocks nothing."""

import json
import os
import shutil

import numpy as np
import pytest

from puts_jax import cli, halves, policy
from conftest import cli_error, snapshot, tiny_cli_world


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("publish_checks")
    tiny_cli_world(d)
    return d


def _frontier(run, tmp_path):
    shutil.copytree(run / "frontier", tmp_path / "frontier")
    return tmp_path / "frontier" / "frontier.json"


def _select(frontier, out, guardrail="clicks >= -99%"):
    return cli.main(["policy", "select", "--frontier", str(frontier), "--maximize",
                     "session_success", "--guardrail", guardrail, "--out", str(out)])


def _publish(run, reg, frontier, *extra, logs="logs.parquet"):
    return cli.main(["policy", "publish", "--registry", str(reg), "--model", str(run / "model"),
                     "--frontier", str(frontier), "--logs", str(run / "data" / logs),
                     "--reason", "test", *extra])


def test_published_estimates_are_the_frontiers_and_an_edited_selection_is_refused(
        run, tmp_path, capsys):
    f, sel_path, reg = _frontier(run, tmp_path), tmp_path / "sel.json", tmp_path / "reg"
    assert _select(f, sel_path) == 0
    sel = json.loads(sel_path.read_text())
    assert sel["criteria"] == {"maximize": "session_success",
                               "guardrails": ["clicks >= -99%"], "baseline": "production"}
    doc, i = json.loads(f.read_text()), sel["index"]
    rep, _, n = halves.estimates_of(doc, "report", doc["primary_estimator"], "production")
    ours = {q: rep[q][i] for q in ("value", "lo", "hi")}  # the frontier's, independently read
    edited = {**sel, "estimates": {**sel["estimates"], "value": [0.99, 0.99]}}
    sel_path.write_text(json.dumps(edited))
    capsys.readouterr()
    assert _publish(run, reg, f, "--selection", str(sel_path)) == 2
    assert cli_error(capsys) == (
        f"--selection: {sel_path}: estimates {str(edited['estimates'])[:120]} are not "
        f"--frontier's for point {i} (report half ({n} rows): {ours}) (was the file edited?); "
        "nothing published")
    assert not reg.exists()
    sel_path.write_text(json.dumps({**sel, "index": (i + 1) % 3,
                                    "lambda": doc["lambdas"][(i + 1) % 3]}))
    assert _publish(run, reg, f, "--selection", str(sel_path)) == 2
    assert cli_error(capsys) == (f"--selection: {sel_path}: its criteria select point {i} on "
                                 f"--frontier, not its index {(i + 1) % 3} (was the file "
                                 "edited?); nothing published")
    sel_path.write_text(json.dumps({k: v for k, v in sel.items() if k != "criteria"}))
    assert _publish(run, reg, f, "--selection", str(sel_path)) == 2
    assert cli_error(capsys).startswith(f"--selection: {sel_path} does not record the criteria")
    assert not reg.exists()
    sel_path.write_text(json.dumps(sel))
    assert _publish(run, reg, f, "--selection", str(sel_path)) == 0
    published = policy.show(str(reg))["policy"]["frontier_point"]["selection"]
    assert published["estimates"] == ours and published["report_passes_guardrails"] is True
    assert "accepted" not in policy.show(str(reg))["policy"]


def test_a_guardrail_missed_on_the_report_half_needs_the_flag(run, tmp_path, capsys):
    f, sel_path, reg = _frontier(run, tmp_path), tmp_path / "sel.json", tmp_path / "reg"
    doc = json.loads(f.read_text())
    base = doc["halves"]["report"]["baselines"]["production"]["estimators"][
        doc["primary_estimator"]]
    base["value"] = [[v[0], 1000.0] for v in base["value"]]  # no point reaches 1% of that
    f.write_text(json.dumps(doc))
    before = snapshot(f.parent)
    assert _select(f, sel_path) == 0
    sel = json.loads(sel_path.read_text())
    assert sel["report_passes_guardrails"] is False
    # not marked as the operating point: publish refuses it without the flag
    assert snapshot(f.parent) == before
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"note: the operating point is not marked on {f}: point {sel['index']} fails a guardrail "
        "on the report half (publish it with --accept-guardrail-miss to make it the operating "
        "policy); the selection is written")
    why = sel["reason"].rpartition("on the report half it fails a guardrail ")[2]
    miss = (f"point {sel['index']} ({sel['name']}) fails a guardrail on the report half, whose "
            f"estimate is the one published: {why}")
    capsys.readouterr()
    assert _publish(run, reg, f, "--selection", str(sel_path)) == 2
    assert cli_error(capsys) == (f"--selection: {sel_path}: {miss}; select again, or publish it "
                                 "anyway with --accept-guardrail-miss (recorded in policy.json "
                                 "and the audit log); nothing published")
    assert not reg.exists()
    assert _publish(run, reg, f, "--selection", str(sel_path), "--accept-guardrail-miss") == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[0] == "published v0001"
    assert err == (f"puts-jax: warning: published v0001 although {miss} (accepted with "
                   "--accept-guardrail-miss; recorded in policy.json and the audit log)\n")
    meta = policy.show(str(reg))["policy"]
    assert meta["accepted"] == [miss] and policy.read_audit(str(reg))[-1]["accepted"] == [miss]
    assert meta["frontier_point"]["selection"]["report_passes_guardrails"] is False


def test_publish_refuses_a_request_set_as_logs(run, tmp_path, capsys):
    f, reg = _frontier(run, tmp_path), tmp_path / "reg"
    path = run / "data" / "requests.parquet"
    capsys.readouterr()
    assert _publish(run, reg, f, "--point", "0", logs="requests.parquet") == 2
    assert cli_error(capsys) == (
        f"--logs: {path} is not an exploration log: it lacks the columns ['action', "
        "'propensity', 'rewards'] (a request set has no logged decisions); give a log of the "
        "action set, e.g. logs.parquet (nothing published)")
    assert not reg.exists()


def test_publish_into_a_registry_with_an_unrelated_corrupt_version(run, tmp_path, capsys):
    f, reg = _frontier(run, tmp_path), tmp_path / "reg"
    assert _publish(run, reg, f, "--point", "0") == 0 and _publish(run, reg, f, "--point", "1") == 0
    os.truncate(reg / "v0001" / "policy.json", 100)
    capsys.readouterr()
    assert _publish(run, reg, f, "--point", "2") == 0
    out, err = capsys.readouterr()
    assert err == "" and out.splitlines()[0] == "published v0003"
    assert out.splitlines()[1].startswith("  v0001  unreadable: ")
    assert policy.versions(str(reg)) == ["v0001", "v0002", "v0003"]
    assert policy.show(str(reg))["audit_consistent"]
    np.testing.assert_array_equal(policy.load(str(reg)).lam,
                                  np.float32(json.loads(f.read_text())["lambdas"][2]))
