"""``puts-jax policy`` from the console script, as a fresh user meets it: a selection is tied to
the frontier it was made on, ``select`` leaves the frontier alone without ``--out``, broken
frontiers and registry files are one ``puts-jax: error: FLAG: ...`` line (exit 2) naming the
file, and help and printed lambdas read well."""

import json
import os
import shutil
import stat

import pytest

from puts_jax import cli, cli_policy, policy, report
from conftest import one_line as _err, snapshot, tiny_cli_world


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny world, an untrained model and two frontiers of it: 3 and 5 lambda points."""
    d = tmp_path_factory.mktemp("policy_cli")
    tiny_cli_world(d, frontiers=(("f3", 3), ("f5", 5)))
    return d


def _frontier(run, tmp_path, name="f3"):
    """A private copy of frontier ``name`` (tests may mark or break it)."""
    shutil.copytree(run / name, tmp_path / name)
    return tmp_path / name / "frontier.json"


def _select(frontier, *extra):
    return cli.main(["policy", "select", "--frontier", str(frontier), "--maximize",
                     "session_success", *extra])


def _publish(run, registry, frontier, *extra):
    return cli.main(["policy", "publish", "--registry", str(registry), "--model",
                     str(run / "model"), "--frontier", str(frontier), "--logs",
                     str(run / "data" / "logs.parquet"), "--reason", "test", *extra])


# ----------------------------------------------------------------------------- 1. provenance

def test_publish_refuses_a_selection_made_on_another_frontier(run, tmp_path, capsys):
    f3, f5 = _frontier(run, tmp_path, "f3"), _frontier(run, tmp_path, "f5")
    sel_path = tmp_path / "sel.json"
    assert cli.main(["policy", "select", "--frontier", str(f3), "--maximize", "clicks",
                     "--out", str(sel_path)]) == 0
    sel = json.loads(sel_path.read_text())
    d3, d5 = (json.loads(f.read_text()) for f in (f3, f5))
    i = sel["index"]
    assert sel["lambda"] == d3["lambdas"][i] and sel["lambda"] != d5["lambdas"][i]  # the trap
    assert sel["frontier"] == {"path": str(f3), "sha256": cli_policy.frontier_sha256(d3),
                               "points": 3}
    before, reg = sel_path.read_bytes(), tmp_path / "reg"
    capsys.readouterr()
    assert _publish(run, reg, f5, "--selection", str(sel_path)) == 2
    there = cli_policy.readable_lambda(d3["lambdas"][i])
    here = cli_policy.readable_lambda(d5["lambdas"][i])
    assert _err(capsys) == (
        f"puts-jax: error: --selection: {sel_path} was made on another frontier ({f3}, sha256 "
        f"{cli_policy.frontier_sha256(d3)[:12]}), not --frontier {f5} (sha256 "
        f"{cli_policy.frontier_sha256(d5)[:12]}); its point {i} is lambda {there} there but "
        f"{here} on --frontier; select again on --frontier or publish with the frontier it was "
        "made on (nothing published)")
    assert not reg.exists() and sel_path.read_bytes() == before
    # on its own frontier it publishes exactly the selected lambda
    assert _publish(run, reg, f3, "--selection", str(sel_path)) == 0
    meta = policy.show(str(reg))["policy"]
    assert meta["lambda"] == sel["lambda"] and meta["frontier_point"]["index"] == i
    assert meta["source"]["frontier_sha256"] == sel["frontier"]["sha256"]
    assert policy.read_audit(str(reg))[-1]["lambda"] == sel["lambda"]


def test_a_selection_without_its_frontier_record_is_refused(run, tmp_path, capsys):
    f3 = _frontier(run, tmp_path)
    sel_path = tmp_path / "sel.json"
    assert _select(f3, "--out", str(sel_path)) == 0
    old = json.loads(sel_path.read_text())
    del old["frontier"]  # as written before selections recorded their frontier
    sel_path.write_text(json.dumps(old))
    capsys.readouterr()
    assert _publish(run, tmp_path / "reg", f3, "--selection", str(sel_path)) == 2
    assert _err(capsys) == (
        f"puts-jax: error: --selection: {sel_path} does not record the frontier it was made on "
        "(written by an older puts-jax or by hand), so its point index cannot be trusted on "
        f"--frontier; run 'policy select --frontier {f3} ... --out' again (nothing published)")
    assert not (tmp_path / "reg").exists()


def test_an_edited_selection_lambda_is_refused(run, tmp_path, capsys):
    f3 = _frontier(run, tmp_path)
    sel_path = tmp_path / "sel.json"
    assert _select(f3, "--out", str(sel_path)) == 0
    sel = json.loads(sel_path.read_text())
    sel["lambda"] = [0.123, 0.877]
    sel_path.write_text(json.dumps(sel))
    ours = json.loads(f3.read_text())["lambdas"][sel["index"]]
    capsys.readouterr()
    assert _publish(run, tmp_path / "reg", f3, "--selection", str(sel_path)) == 2
    assert _err(capsys) == (
        f"puts-jax: error: --selection: {sel_path}: lambda [0.123, 0.877] is not point "
        f"{sel['index']}'s lambda {cli_policy.readable_lambda(ours)} on --frontier (was the file "
        "edited?); nothing published")
    assert not (tmp_path / "reg").exists()


def test_marking_and_reselecting_keep_a_selection_publishable(run, tmp_path, capsys):
    f3 = _frontier(run, tmp_path)
    s1, s2 = tmp_path / "s1.json", tmp_path / "s2.json"
    digest = cli_policy.frontier_sha256(json.loads(f3.read_text()))
    assert _select(f3, "--out", str(s1)) == 0
    sel1 = json.loads(s1.read_text())
    doc = json.loads(f3.read_text())  # the operating point is marked on the frontier set
    assert doc["operating_point"]["index"] == sel1["index"]
    assert "Operating point" in (f3.parent / "frontier.html").read_text()
    assert cli_policy.frontier_sha256(doc) == digest == sel1["frontier"]["sha256"]
    assert cli.main(["policy", "select", "--frontier", str(f3), "--maximize", "clicks",
                     "--out", str(s2)]) == 0  # marks another point
    assert cli.main(["report", "--frontier", str(f3)]) == 0  # re-rendered: same content
    assert _publish(run, tmp_path / "reg", f3, "--selection", str(s1)) == 0
    assert policy.show(str(tmp_path / "reg"))["policy"]["lambda"] == sel1["lambda"]


# ----------------------------------------------------------------------------- 2. read-only

def test_select_without_out_leaves_a_read_only_frontier_untouched(run, tmp_path, capsys):
    f3 = _frontier(run, tmp_path)
    folder = f3.parent
    before = snapshot(folder)
    os.chmod(folder, 0o555)
    try:
        capsys.readouterr()
        assert _select(f3, "--guardrail", "clicks >= -50%") == 0
        out = json.loads(capsys.readouterr().out)
        assert out["index"] is not None and out["frontier"]["path"] == str(f3)
        assert snapshot(folder) == before  # byte-identical, no staging folder left
        assert stat.S_IMODE(os.stat(folder).st_mode) == 0o555
    finally:
        os.chmod(folder, 0o755)


def test_select_out_on_an_unwritable_frontier_writes_the_selection_with_a_note(
        run, tmp_path, capsys, monkeypatch):
    f3 = _frontier(run, tmp_path)
    folder, out = f3.parent, tmp_path / "sel.json"
    before = snapshot(folder)

    def read_only(out_dir, files):  # what staging meets in a read-only folder (not as root)
        raise PermissionError(13, "Permission denied", os.path.join(out_dir, ".frontier-staging"))

    monkeypatch.setattr(report, "publish_files", read_only)
    capsys.readouterr()
    assert _select(f3, "--out", str(out)) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[-1] == (
        f"note: the operating point is not marked on {f3} (PermissionError: [Errno 13] "
        f"Permission denied: '{folder / '.frontier-staging'}'); the selection is written")
    assert json.loads(out.read_text())["index"] is not None
    assert snapshot(folder) == before


def test_select_out_naming_a_file_of_the_frontier_set_is_refused(run, tmp_path, capsys):
    f3 = _frontier(run, tmp_path)
    before = snapshot(f3.parent)
    assert _select(f3, "--out", str(f3.parent / "frontier.html")) == 2
    assert _err(capsys).startswith("puts-jax: error: --out and frontier.html of --frontier: "
                                   "both name")
    assert snapshot(f3.parent) == before


# ----------------------------------------------------------------------------- 3. broken frontiers

def _broken(run, tmp_path, edit):
    f = _frontier(run, tmp_path)
    doc = json.loads(f.read_text())
    edit(doc)
    f.write_text(json.dumps(doc))
    return f


def test_a_frontier_without_points(run, tmp_path, capsys):
    def empty(doc):
        doc["lambdas"] = []

    f = _broken(run, tmp_path, empty)
    text = f.read_text()
    want = (f"puts-jax: error: --frontier: {f}: no points (lambdas is []): nothing to select or "
            "publish; run the sweep again")
    assert _select(f, "--out", str(tmp_path / "sel.json")) == 2
    assert _err(capsys) == want
    assert _publish(run, tmp_path / "reg", f, "--point", "0") == 2
    assert _err(capsys) == want
    assert f.read_text() == text and not (tmp_path / "reg").exists()
    assert not (tmp_path / "sel.json").exists()


@pytest.mark.parametrize("edit, field", [
    # one more objective name than the estimates have columns (a frontier of another J)
    (lambda d: d["objectives"]["names"].append("saves"),
     "lambdas: shape (3, 2), expected [3, 3] (P = 3 points, J = 3 objectives "
     "['session_success', 'clicks', 'saves'])"),
    (lambda d: d["objectives"].update(directions=["max"]),
     "objectives.directions: expected 'max' or 'min' for each of the J = 2 objectives "
     "['session_success', 'clicks'], got ['max']"),
    (lambda d: d["halves"]["report"]["points"]["estimators"]["snips"].update(value=[[0.1]] * 3),
     "halves.report.points.estimators.snips.value: shape (3, 1), expected [3, 2] (P = 3 points, "
     "J = 2 objectives ['session_success', 'clicks'])"),
    (lambda d: d["points"].update(names=["a"]),
     "points.names: expected a list of P = 3 entries, got ['a']"),
    (lambda d: d.update(primary_estimator="nope"),
     "estimators: lacks the primary estimator 'nope'")])
def test_a_frontier_whose_blocks_do_not_fit_its_objectives(run, tmp_path, capsys, edit, field):
    f = _broken(run, tmp_path, edit)
    text = f.read_text()
    assert _select(f, "--guardrail", "clicks >= -5%") == 2
    assert _err(capsys) == f"puts-jax: error: --frontier: {f}: {field}"
    assert _publish(run, tmp_path / "reg", f, "--point", "1") == 2
    assert _err(capsys) == f"puts-jax: error: --frontier: {f}: {field}"
    assert f.read_text() == text and not (tmp_path / "reg").exists()


def test_publish_refuses_objectives_in_another_order_than_the_logs(run, tmp_path, capsys):
    f = _broken(run, tmp_path, lambda d: d["objectives"]["names"].reverse())
    assert _publish(run, tmp_path / "reg", f, "--point", "1") == 2
    assert _err(capsys) == (
        f"puts-jax: error: --frontier: {f}: objectives ['clicks', 'session_success'], but --logs "
        "has the rewards ['session_success', 'clicks']: a lambda weights the rewards in that order")
    assert not (tmp_path / "reg").exists()


# ----------------------------------------------------------------------------- 3. broken registry

@pytest.fixture(scope="module")
def registry(run):
    """A registry with v0001 (published) and v0002 (set-lambda), CURRENT v0002."""
    reg = run / "reg_module"
    assert _publish(run, reg, run / "f3" / "frontier.json", "--point", "1") == 0
    assert cli.main(["policy", "set-lambda", "--registry", str(reg), "--lam", "0.9,0.1",
                     "--reason", "more sessions"]) == 0
    return reg


def _copy(registry, tmp_path):
    reg = tmp_path / "reg"
    shutil.copytree(registry, reg)
    return reg


def test_a_truncated_audit_log_is_named_and_never_extended(registry, tmp_path, capsys):
    reg = _copy(registry, tmp_path)
    audit = reg / "audit.jsonl"
    lines = audit.read_bytes().splitlines(keepends=True)
    audit.write_bytes(lines[0] + lines[1][:40])  # killed mid-line
    before = snapshot(reg)
    with pytest.raises(json.JSONDecodeError) as why:  # what the stdlib says of that line
        json.loads(lines[1][:40])
    want = (f"puts-jax: error: --registry: {audit}: line 2: not valid JSON ({why.value.msg}: "
            f"column {why.value.colno}); the file is truncated or corrupt; repair or remove that "
            "line (publish, set-lambda and rollback write nothing until the log reads)")
    for cmd in (["show"], ["set-lambda", "--lam", "0.5,0.5", "--reason", "r"],
                ["rollback", "--version", "v0001", "--reason", "r"]):
        capsys.readouterr()
        assert cli.main(["policy", cmd[0], "--registry", str(reg), *cmd[1:]]) == 2, cmd
        assert _err(capsys) == want, cmd
    assert snapshot(reg) == before


def test_a_corrupt_policy_json_is_named_with_its_line(registry, tmp_path, capsys):
    reg = _copy(registry, tmp_path)
    pj = reg / "v0001" / "policy.json"
    pj.write_bytes(pj.read_bytes()[:60])
    line = pj.read_text().count("\n") + 1
    before = snapshot(reg)
    capsys.readouterr()  # rolling back to it is refused, naming the file and its line
    assert cli.main(["policy", "rollback", "--registry", str(reg), "--version", "v0001",
                     "--reason", "r"]) == 2
    err = _err(capsys)
    assert err.startswith(f"puts-jax: error: --registry: {pj}: line {line}: not valid JSON ("), err
    assert err.endswith("); the file is truncated or corrupt"), err
    assert snapshot(reg) == before
    for text, why in (("[1, 2]", f"{pj}: line 1: a JSON list, not an object; the file is "
                                 "truncated or corrupt"),
                      ('{"lambda": [1, 0]}', f"{pj}: missing keys ['reason', ")):
        pj.write_text(text)  # show lists it as a problem and shows the rest (exit 0)
        assert cli.main(["policy", "show", "--registry", str(reg)]) == 0
        shown = json.loads(capsys.readouterr().out)
        assert shown["versions"][0]["version"] == "v0001"
        assert shown["versions"][0]["problem"].startswith(f"unreadable: {why}")
        assert shown["versions"][1]["problem"] is None and shown["current"] == "v0002"
        assert shown["current_problem"] is None and shown["policy"]["version"] == "v0002"
    assert {k: v for k, v in snapshot(reg).items() if k != "v0001/policy.json"} == \
        {k: v for k, v in before.items() if k != "v0001/policy.json"}


# ----------------------------------------------------------------------------- 4. help, lambdas

def test_policy_help_lists_every_action_with_a_line(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["policy", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for action, words in (("show", "print the registry"), ("select", "pick a frontier point"),
                          ("publish", "publish a frontier point"),
                          ("set-lambda", "another lambda"), ("rollback", "earlier version")):
        assert any(line.split()[:1] == [action] for line in out.splitlines()), action
        assert words in out, action


def test_printed_lambdas_read_at_float32_precision(registry, tmp_path, capsys):
    assert cli_policy.readable_lambda([0.8999999761581421, 0.10000000149011612]) == [0.9, 0.1]
    assert cli_policy.readable_lambda([1 / 3, 2 / 3]) == [0.33333334, 0.6666667]
    reg = _copy(registry, tmp_path)
    capsys.readouterr()
    assert cli.main(["policy", "set-lambda", "--registry", str(reg), "--lam",  # not CURRENT's
                     "0.699999988079071,0.30000001192092896", "--reason", "f32"]) == 0
    out = capsys.readouterr().out
    assert "* v0003  set-lambda lambda=[0.7, 0.3]  params=v0001  f32" in out.splitlines()
    assert "0.699999" not in out
    stored = json.loads((reg / "v0003" / "policy.json").read_text())["lambda"]
    assert stored == [0.699999988079071, 0.30000001192092896]  # the file keeps the exact value
    assert cli.main(["policy", "show", "--registry", str(reg)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["policy"]["lambda"] == [0.7, 0.3] and shown["audit"][-1]["lambda"] == [0.7, 0.3]


# ----------------------------------------------------------------------------- 5. show --full

def test_show_summarizes_the_action_set_and_full_prints_the_matrix(registry, capsys):
    stored = json.loads((registry / "v0002" / "policy.json").read_text())["action_set"]
    A, K = len(stored["weights"]), len(stored["weights"][0])
    capsys.readouterr()
    assert cli.main(["policy", "show", "--registry", str(registry)]) == 0
    text = capsys.readouterr().out
    shown = json.loads(text)["policy"]["action_set"]
    prod = stored["production"]
    assert (A, K, prod) == (10, 4, 4)  # the tiny world's action set
    assert shown == {
        "shape": "A x K = 10 x 4 (actions x ranker outcomes)",
        "objective_names": ["click", "save", "closeup", "hide"], "production": 4,
        "production_weights": cli_policy.readable_lambda(stored["weights"][prod]),
        "hash": stored["hash"],
        "weights": "not shown (10 rows of 4): 'policy show --full' prints the matrix"}
    assert shown["production_weights"] == [0.33333334, 0.33333334, 0.33333334, -0.25]
    assert cli.main(["policy", "show", "--registry", str(registry), "--full"]) == 0
    full_text = capsys.readouterr().out
    full = json.loads(full_text)
    readable = [cli_policy.readable_lambda(r) for r in stored["weights"]]  # 0.3, not 0.30000001
    assert full["policy"]["action_set"] == {**stored, "weights": readable}  # every row
    assert {k: v for k, v in full.items() if k != "policy"} == \
        {k: v for k, v in json.loads(text).items() if k != "policy"}  # the rest is the same
    assert len(full_text.splitlines()) - len(text.splitlines()) >= A * K


def test_show_prints_an_action_set_it_cannot_summarize_as_it_is():
    odd = {"weights": [[1.0, 0.0], [0.5]], "objective_names": ["a", "b"]}  # ragged rows
    assert cli_policy.action_set_summary(odd) is odd
    assert cli_policy.action_set_summary(None) is None
    no_prod = cli_policy.action_set_summary({"weights": [[1.0, 0.0]], "objective_names":
                                             ["a", "b"], "production": None, "hash": "h"})
    assert no_prod["production"] is None and no_prod["production_weights"] is None
    assert no_prod["shape"] == "A x K = 1 x 2 (actions x ranker outcomes)"
