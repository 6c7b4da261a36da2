"""``puts-jax policy`` as a fresh user meets it (review LOW items): publishing what is already
current writes nothing, ``show --full`` prints the action set at float32 precision, counts of
one read in the singular."""

import json
import shutil

import numpy as np
import pytest

from puts_jax import cli, cli_policy, pareto, policy, report_html, report_html_figures
from conftest import snapshot, tiny_cli_world


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("policy_ux")
    tiny_cli_world(d, frontiers=(("f3", 3),))
    return d


def _publish(run, reg, f, *extra):
    return cli.main(["policy", "publish", "--registry", str(reg), "--model", str(run / "model"),
                     "--frontier", str(f), "--logs", str(run / "data" / "logs.parquet"),
                     "--reason", "test", *extra])


def test_publishing_the_current_lambda_again_writes_nothing(run, tmp_path, capsys):
    shutil.copytree(run / "f3", tmp_path / "f3")
    f, reg = tmp_path / "f3" / "frontier.json", tmp_path / "reg"
    assert _publish(run, reg, f, "--point", "1") == 0
    lam = json.loads(f.read_text())["lambdas"][1]
    before = snapshot(reg)
    capsys.readouterr()
    assert _publish(run, reg, f, "--point", "1") == 0  # a no-op, exit 0
    assert capsys.readouterr().out == (
        f"nothing published: lambda {cli_policy.readable_lambda(lam)} with these parameters and "
        "action set is already published as v0001, the current version; nothing written\n")
    assert snapshot(reg) == before and policy.versions(str(reg)) == ["v0001"]
    # set-lambda to the same lambda: the same
    assert cli.main(["policy", "set-lambda", "--registry", str(reg), "--lam",
                     ",".join(map(str, lam)), "--reason", "again"]) == 0
    assert capsys.readouterr().out.startswith("nothing published: ")
    assert snapshot(reg) == before
    # another point, then the first again: a real change, a new version
    assert _publish(run, reg, f, "--point", "0") == 0
    assert _publish(run, reg, f, "--point", "1") == 0
    assert policy.versions(str(reg)) == ["v0001", "v0002", "v0003"]
    assert policy.show(str(reg))["current"] == "v0003"


def test_show_full_prints_weights_at_float32_precision(run, tmp_path, capsys):
    reg = tmp_path / "reg"
    assert _publish(run, reg, run / "f3" / "frontier.json", "--point", "0") == 0
    stored = json.loads((reg / "v0001" / "policy.json").read_text())["action_set"]["weights"]
    assert 0.6666666865348816 in stored[1]  # float32 2/3 as the file keeps it
    capsys.readouterr()
    assert cli.main(["policy", "show", "--registry", str(reg), "--full"]) == 0
    text = capsys.readouterr().out
    shown = json.loads(text)["policy"]["action_set"]["weights"]
    assert shown[1] == [0.6666667, 0.33333334, 0.0, -0.25]
    assert "0.6666666865348816" not in text
    assert np.array_equal(np.float32(shown), np.float32(stored))  # the same float32 values


def test_counts_of_one_are_singular():
    one = cli_policy.action_set_summary({"weights": [[0.5, 0.5, 0.0]], "production": 0})
    assert one["weights"] == "not shown (1 row of 3): 'policy show --full' prints the matrix"
    sel = pareto.select_operating_point([[1.0, 2.0]], [[0.5, 1.5]], [[1.5, 2.5]], 0)
    assert sel.reason.endswith("among 1 of 1 point (no guardrails)")
    entry = {"index": 0, "within_noise_of": [1], "nondominated_within_noise_of": [1],
             "told_apart_from": [], "nondominated": True}
    assert report_html_figures.within_noise_text(entry, ["(1, 0)", "(0, 1)"], 2) == (
        "1 of 1 other nondominated: (0, 1)", "the other one")
    entry.update(within_noise_of=[], nondominated_within_noise_of=[], told_apart_from=[1])
    assert report_html_figures.within_noise_text(entry, ["(1, 0)", "(0, 1)"], 2)[1] == \
        "none of 1 other"
    assert report_html._count(1, "log row") == "1 log row"
    assert report_html._count(200000, "log row") == "200,000 log rows"


def test_the_next_change_removes_temp_folders_a_failed_one_left(run, tmp_path):
    """A publish that failed mid-save can leave ``.tmp-vNNNN-*`` behind (orbax's writer threads
    race the cleanup): ``show`` lists it as stale, and the next change, under the registry lock,
    removes it."""
    shutil.copytree(run / "f3", tmp_path / "f3")
    f, reg = tmp_path / "f3" / "frontier.json", tmp_path / "reg"
    assert _publish(run, reg, f, "--point", "1") == 0
    left = reg / ".tmp-v0002-abc123" / "params"
    left.mkdir(parents=True)
    (left / "partial").write_bytes(b"x")
    assert policy.show(str(reg))["stale_temp"] == [".tmp-v0002-abc123"]
    assert _publish(run, reg, f, "--point", "2") == 0
    assert policy.versions(str(reg)) == ["v0001", "v0002"]
    assert policy.show(str(reg))["stale_temp"] == []
    assert not (reg / ".tmp-v0002-abc123").exists()
