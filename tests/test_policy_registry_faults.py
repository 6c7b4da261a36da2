"""A registry with something broken in it, from the console script: an unrelated corrupt
version blocks nothing (``show`` lists it), a version that cannot be served is never made
current, the audit log's chain of switches stays true (a write-ahead line whose switch never
happened is recorded as such; a gap or a missing log stops writers), and every refusal is one
``puts-jax: error: --flag: ...`` line with the registry byte-identical."""

import hashlib
import json
import os
import shutil

import pytest
from flax import nnx

from puts_jax import cli, cli_checks, policy
from puts_jax.action_set import simplex_grid
from puts_jax.config import QNetConfig
from puts_jax.qnet import QNetwork
from conftest import cli_error, snapshot

_FIX = "roll back to a complete version (policy rollback --version V) or publish again"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """v0001 (published), v0002 (set-lambda, v0001's parameters), v0003 (published, its own
    parameters; CURRENT)."""
    reg = str(tmp_path_factory.mktemp("faults") / "reg")
    aset = simplex_grid(("click", "save"), ("click", "save"), steps=3, production=(0.5, 0.5))

    def model(seed):
        return QNetwork(QNetConfig.tiny(), 5, 4, ("binary", "real"), rngs=nnx.Rngs(seed))

    policy.publish(reg, model(0), aset, [0.5, 0.5], None, "first")
    policy.set_lambda(reg, [0.7, 0.3], "second")
    policy.publish(reg, model(1), aset, [0.2, 0.8], None, "third")
    return reg


@pytest.fixture
def reg(base, tmp_path):
    shutil.copytree(base, tmp_path / "reg")
    return tmp_path / "reg"


def _pol(reg, *cmd):
    return cli.main(["policy", cmd[0], "--registry", str(reg), *cmd[1:]])


def _set_lambda(reg):
    return _pol(reg, "set-lambda", "--lam", "0.5,0.5", "--reason", "x")


def _current(reg):
    return (reg / "CURRENT").read_text().strip()


# ----------------------------------------------------------------------------- broken versions

def test_an_unrelated_corrupt_version_blocks_nothing(reg, capsys):
    pj = reg / "v0001" / "policy.json"
    os.truncate(pj, 100)
    with pytest.raises(json.JSONDecodeError):
        json.loads(pj.read_bytes())
    capsys.readouterr()
    assert _set_lambda(reg) == 0  # one new version, exit 0: a retry is never needed
    out, err = capsys.readouterr()
    assert err == "" and out.splitlines()[0] == "published v0004 (parameters reused)"
    why = policy.show(str(reg))["versions"][0]["problem"]
    assert why.startswith(f"unreadable: {pj}: line ") and why.endswith("truncated or corrupt")
    assert f"  v0001  {why}" in out.splitlines() and "* v0004  set-lambda lambda=[0.5, 0.5]  " \
        "params=v0003  x" in out.splitlines()
    assert policy.versions(str(reg)) == ["v0001", "v0002", "v0003", "v0004"]
    assert _current(reg) == "v0004"
    assert _pol(reg, "rollback", "--version", "v0002", "--reason", "back") == 0  # v0001/params
    assert _current(reg) == "v0002" and capsys.readouterr().err == ""
    assert _pol(reg, "show") == 0
    shown = json.loads(capsys.readouterr().out)
    assert [v["problem"] for v in shown["versions"]] == [why, None, None, None]
    assert shown["current"] == "v0002" and shown["current_problem"] is None
    assert shown["audit_consistent"] and shown["audit_problem"] is None


def test_rollback_repairs_a_current_version_that_does_not_read(reg, capsys):
    pj = reg / "v0003" / "policy.json"
    os.truncate(pj, 100)
    before = snapshot(reg)
    capsys.readouterr()
    assert _pol(reg, "show") == 2
    out, err = capsys.readouterr()
    problem = json.loads(out)["current_problem"]
    assert problem.startswith(f"names 'v0003', which is unreadable: {pj}: line ")
    assert err == (f"puts-jax: error: --registry: CURRENT {problem}; the versions are listed "
                   "above ('policy rollback --version V' makes one current)\n")
    assert _set_lambda(reg) == 2
    assert cli_error(capsys).startswith(f"--registry: {pj}: line ")
    assert snapshot(reg) == before
    assert _pol(reg, "rollback", "--version", "v0001", "--reason", "repair") == 0
    out, err = capsys.readouterr()
    assert err == "" and out.splitlines()[0] == "CURRENT -> v0001"
    assert _current(reg) == "v0001"
    last = policy.read_audit(str(reg))[-1]
    assert (last["action"], last["current_before"], last["current_after"]) == \
        ("rollback", "v0003", "v0001")
    assert policy.show(str(reg))["audit_consistent"]


def test_a_version_without_its_parameters_is_never_made_current(reg, capsys):
    shutil.rmtree(reg / "v0003" / "params")
    params = reg / "v0003" / "params"
    before = snapshot(reg)
    capsys.readouterr()
    assert _set_lambda(reg) == 2
    assert cli_error(capsys) == (f"--registry: CURRENT v0003 cannot be served: its parameters "
                                 f"folder {params} is missing; a new lambda on it could not be "
                                 f"either: {_FIX} (nothing written)")
    assert snapshot(reg) == before
    assert _pol(reg, "show") == 2
    shown = json.loads(capsys.readouterr().out)
    assert shown["current_problem"] == (f"names 'v0003', which cannot be served: its parameters "
                                        f"folder {params} is missing")
    assert shown["versions"][2]["problem"] == f"cannot be served: its parameters folder " \
                                              f"{params} is missing"
    assert _pol(reg, "rollback", "--version", "v0002", "--reason", "r") == 0
    capsys.readouterr()
    before = snapshot(reg)
    assert _pol(reg, "rollback", "--version", "v0003", "--reason", "r") == 2
    assert cli_error(capsys) == (f"--version: v0003 cannot be served: its parameters folder "
                                 f"{params} is missing; roll back to another version (nothing "
                                 "written)")
    assert snapshot(reg) == before
    shutil.rmtree(reg / "v0001" / "params")  # v0002 (CURRENT) uses v0001's
    assert _set_lambda(reg) == 2
    assert cli_error(capsys) == (f"--registry: CURRENT v0002 cannot be served: its parameters "
                                 f"folder {reg / 'v0001' / 'params'} is missing (it uses the "
                                 "parameters of v0001); a new lambda on it could not be either: "
                                 f"{_FIX} (nothing written)")


def _refused(reg, capsys, problem):
    """set-lambda, rollback and publish's chain check refuse with ``problem``, nothing written."""
    before = snapshot(reg)
    capsys.readouterr()
    for cmd in (["set-lambda", "--lam", "0.5,0.5", "--reason", "r"],
                ["rollback", "--version", "v0001", "--reason", "r"]):
        assert _pol(reg, *cmd) == 2, cmd
        assert cli_error(capsys) == (
            f"--registry: {problem}; restore the log (or CURRENT) from a backup so that they "
            "agree (publish, set-lambda and rollback write nothing while the history of "
            "switches is broken)"), cmd
    assert snapshot(reg) == before


def test_each_audit_line_records_the_sha256_of_the_line_before(reg):
    lines = (reg / "audit.jsonl").read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) == 4
    assert [json.loads(x)["prev_sha256"] for x in lines[:3]] == \
        [hashlib.sha256(x).hexdigest() for x in (b"", lines[0], lines[1])]


def test_an_edit_inside_a_middle_line_stops_writers(reg, capsys):
    audit = reg / "audit.jsonl"
    lines = audit.read_bytes().splitlines(keepends=True)
    edited = lines[1].replace(b'"reason": "second"', b'"reason": "SECOND"')
    assert edited != lines[1]
    audit.write_bytes(lines[0] + edited + lines[2])  # current_before/current_after kept
    problem = (f"{audit}: line 3: prev_sha256 is not the sha256 of line 2's bytes (an earlier "
               "line was edited, or a line is missing)")
    shown = policy.show(str(reg))
    assert not shown["audit_consistent"] and shown["audit_problem"] == problem
    assert shown["audit"][1]["reason"] == "SECOND"
    _refused(reg, capsys, problem)
    audit.write_bytes(lines[0] + lines[1] + lines[2])  # restored from a backup: writers go on
    assert policy.show(str(reg))["audit_consistent"]
    assert _set_lambda(reg) == 0


def test_a_hash_removed_from_a_line_after_a_hashed_one_stops_writers(reg, capsys):
    audit = reg / "audit.jsonl"
    lines = audit.read_bytes().splitlines(keepends=True)
    entry = json.loads(lines[2])
    del entry["prev_sha256"]
    entry["reason"] = "forged"
    audit.write_bytes(lines[0] + lines[1] + json.dumps(entry, sort_keys=True).encode() + b"\n")
    problem = (f"{audit}: line 3: no prev_sha256, but line 1 has one (a line was edited or "
               "added by hand)")
    assert policy.show(str(reg))["audit_problem"] == problem
    _refused(reg, capsys, problem)


def _legacy(reg):
    """The audit log as written before prev_sha256 existed: each line without it."""
    audit = reg / "audit.jsonl"
    entries = [json.loads(x) for x in audit.read_bytes().splitlines()]
    audit.write_text("".join(json.dumps({k: v for k, v in e.items() if k != "prev_sha256"},
                                        sort_keys=True) + "\n" for e in entries))
    return audit


def test_a_legacy_log_without_hashes_still_works_and_the_next_line_chains_from_it(reg, capsys):
    audit = _legacy(reg)
    old = audit.read_bytes()
    assert b"prev_sha256" not in old
    shown = policy.show(str(reg))
    assert shown["audit_consistent"] and shown["audit_problem"] is None
    capsys.readouterr()
    assert _set_lambda(reg) == 0 and capsys.readouterr().err == ""
    new = audit.read_bytes()
    assert new.startswith(old)
    added = new[len(old):].split(b"\n")
    assert len(added) == 2 and added[1] == b""
    assert json.loads(added[0])["prev_sha256"] == \
        hashlib.sha256(old.split(b"\n")[-2]).hexdigest()
    assert policy.show(str(reg))["audit_consistent"]
    assert _pol(reg, "rollback", "--version", "v0001", "--reason", "back") == 0
    assert policy.show(str(reg))["audit_consistent"] and _current(reg) == "v0001"


def test_an_edit_inside_a_legacy_line_is_caught_once_a_hashed_line_follows(reg, capsys):
    audit = _legacy(reg)
    lines = audit.read_bytes().splitlines(keepends=True)
    audit.write_bytes(lines[0] + lines[1].replace(b'"second"', b'"forged"') + lines[2])
    assert policy.show(str(reg))["audit_consistent"]  # legacy lines carry no hash: accepted
    assert _set_lambda(reg) == 0  # its line hashes the last line (line 3) as it is now
    lines = audit.read_bytes().splitlines(keepends=True)
    audit.write_bytes(lines[0] + lines[1] + lines[2].replace(b'"third"', b'"forged"') + lines[3])
    problem = (f"{audit}: line 4: prev_sha256 is not the sha256 of line 3's bytes (an earlier "
               "line was edited, or a line is missing)")
    assert policy.show(str(reg))["audit_problem"] == problem
    _refused(reg, capsys, problem)


def _rollback_killed_before_the_switch(reg, monkeypatch) -> None:
    """policy.rollback to v0001 that dies between its audit line and the CURRENT switch."""
    real = policy.atomic_write_text

    def killed(path, text):
        if os.path.basename(path) == "CURRENT":
            raise KeyboardInterrupt
        real(path, text)

    monkeypatch.setattr(policy, "atomic_write_text", killed)
    with pytest.raises(KeyboardInterrupt):
        policy.rollback(str(reg), "v0001", "killed")
    monkeypatch.undo()


def test_a_switch_not_made_entry_is_hash_chained_too(reg, monkeypatch):
    _rollback_killed_before_the_switch(reg, monkeypatch)
    policy.set_lambda(str(reg), [0.5, 0.5], "after")
    lines = (reg / "audit.jsonl").read_bytes().split(b"\n")[:-1]
    entries = [json.loads(x) for x in lines]
    assert [e["action"] for e in entries][-3:] == ["rollback", "switch-not-made", "set-lambda"]
    assert [e["prev_sha256"] for e in entries] == \
        [hashlib.sha256(x).hexdigest() for x in [b"", *lines[:-1]]]
    assert policy.show(str(reg))["audit_consistent"]


# ----------------------------------------------------------------------------- the audit chain

def test_a_switch_that_was_never_made_is_recorded_by_the_next_writer(reg, capsys, monkeypatch):
    _rollback_killed_before_the_switch(reg, monkeypatch)
    audit = reg / "audit.jsonl"
    assert _current(reg) == "v0003" and policy.read_audit(str(reg))[-1]["current_after"] == "v0001"
    shown = policy.show(str(reg))
    assert not shown["audit_consistent"]
    assert shown["audit_problem"] == (f"{audit}: line 4: its switch to 'v0001' was not made "
                                      "(CURRENT names 'v0003'): a crash between the audit line "
                                      "and the switch")
    capsys.readouterr()
    assert _set_lambda(reg) == 0 and capsys.readouterr().err == ""
    entries = policy.read_audit(str(reg))
    assert [e["action"] for e in entries] == ["publish", "set-lambda", "publish", "rollback",
                                              "switch-not-made", "set-lambda"]
    gap = entries[4]
    assert (gap["version"], gap["current_before"], gap["current_after"]) == \
        ("v0001", "v0001", "v0003")
    assert gap["reason"].startswith("line 4's switch to v0001 was not made (CURRENT still names "
                                    "v0003)")
    assert (entries[5]["current_before"], entries[5]["current_after"]) == ("v0003", "v0004")
    shown = policy.show(str(reg))
    assert shown["audit_consistent"] and shown["audit_problem"] is None
    assert shown["policy"]["parent"] == "v0003"


def test_a_missing_audit_line_stops_writers(reg, capsys):
    audit = reg / "audit.jsonl"
    lines = audit.read_bytes().splitlines(keepends=True)
    audit.write_bytes(lines[0] + lines[2])  # the middle line deleted; the last matches CURRENT
    gap = (f"{audit}: line 2: current_before 'v0002' is not the previous line's current_after "
           "'v0001' (a line is missing or was edited)")
    assert policy.show(str(reg))["audit_problem"] == gap
    _refused(reg, capsys, gap)
    assert _pol(reg, "show") == 0
    assert json.loads(capsys.readouterr().out)["audit_consistent"] is False


def test_current_changed_by_hand_or_a_missing_audit_log_stops_writers(reg, capsys):
    audit = reg / "audit.jsonl"
    (reg / "CURRENT").write_text("v0001\n")
    before = snapshot(reg)
    capsys.readouterr()
    assert _set_lambda(reg) == 2
    assert cli_error(capsys).startswith(
        f"--registry: CURRENT names 'v0001' but {audit} line 3 switched to 'v0003': CURRENT was "
        "changed outside puts-jax, or audit lines are missing; restore")
    assert snapshot(reg) == before
    (reg / "CURRENT").write_text("v0003\n")
    audit.unlink()
    before = snapshot(reg)
    missing = (f"{audit} is missing or empty but the registry has versions ['v0001', 'v0002', "
               "'v0003']")
    for cmd in (["set-lambda", "--lam", "0.5,0.5", "--reason", "r"],
                ["rollback", "--version", "v0001", "--reason", "r"]):
        assert _pol(reg, *cmd) == 2, cmd
        assert cli_error(capsys).startswith(f"--registry: {missing}; restore the log"), cmd
    assert snapshot(reg) == before and not audit.exists()
    assert policy.show(str(reg))["audit_problem"] == missing


def test_current_put_back_by_hand_is_not_a_switch_never_made(reg, capsys):
    audit = reg / "audit.jsonl"
    (reg / "CURRENT").write_text("v0002\n")  # the last line's current_before, after the line
    before = snapshot(reg)
    problem = (f"CURRENT names 'v0002' but {audit} line 3 switched to 'v0003': CURRENT was "
               "changed outside puts-jax, or audit lines are missing")
    assert policy.show(str(reg))["audit_problem"] == problem
    capsys.readouterr()
    assert _set_lambda(reg) == 2
    assert cli_error(capsys).startswith(f"--registry: {problem}; restore the log")
    assert snapshot(reg) == before
    os.utime(reg / "CURRENT", (0, 0))  # older than the line: as a crash before the switch leaves
    assert "was not made" in policy.show(str(reg))["audit_problem"]


# ----------------------------------------------------------------------------- CURRENT, read-only

def test_set_lambda_on_a_broken_current_says_to_roll_back(reg, capsys):
    (reg / "CURRENT").write_text("v0009\n")
    before = snapshot(reg)
    capsys.readouterr()
    assert _set_lambda(reg) == 2
    assert cli_error(capsys) == (
        f"--registry: CURRENT names 'v0009', not a version of {reg} (known ['v0001', 'v0002', "
        "'v0003']); set-lambda changes the current policy's lambda, so make a complete version "
        "current first with 'policy rollback --version V' (nothing written)")
    assert snapshot(reg) == before
    assert _pol(reg, "rollback", "--version", "v0002", "--reason", "repair") == 0
    last = policy.read_audit(str(reg))[-1]
    assert (last["current_before"], last["current_after"]) == ("v0003", "v0002")
    assert last["current_problem"].startswith("names 'v0009', not a version")
    assert policy.show(str(reg))["audit_consistent"]
    assert _set_lambda(reg) == 0


def test_set_lambda_and_rollback_name_a_read_only_registry(reg, capsys, monkeypatch):
    def refuse(*a, **k):  # a read-only file system (root writes anywhere else)
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(cli_checks.tempfile, "mkstemp", refuse)
    before = snapshot(reg)
    capsys.readouterr()
    for cmd in (["set-lambda", "--lam", "0.5,0.5", "--reason", "r"],
                ["rollback", "--version", "v0001", "--reason", "r"]):
        assert _pol(reg, *cmd) == 2, cmd
        assert cli_error(capsys) == (f"--registry: cannot create a file in {reg} (Read-only file "
                                     "system); nothing written"), cmd
    assert snapshot(reg) == before


# ----------------------------------------------------------------------------- invalid lambda

_BAD_LAMBDAS = [([1.0], ": expected f32[J] with length J = 2 (the model's reward objectives), "
                        "got shape (1,)"),
                ([float("nan"), 0.5], ": non-finite coefficient at index 0 (nan)"),
                ([2.0, -1.0], ": coefficients must be non-negative; index 1 (-1)"),
                ([0.5, 0.6], ": coefficients sum to 1.1; they must sum to 1 (within 1e-05)"),
                (None, " is not a list of numbers"), ("abc", " is not a list of numbers"),
                ([0.9, 0.9, "x"], " is not a list of numbers")]


def _edit_lambda(reg, version, lam):
    pj = reg / version / "policy.json"
    meta = json.loads(pj.read_text())
    meta["lambda"] = lam
    pj.write_text(json.dumps(meta))


@pytest.mark.parametrize("lam,why", _BAD_LAMBDAS)
def test_a_version_with_an_invalid_lambda_is_never_made_current(reg, capsys, lam, why):
    _edit_lambda(reg, "v0001", lam)
    shown = policy.show(str(reg))
    problem = shown["versions"][0]["problem"]
    assert problem == f"cannot be served: its lambda {json.dumps(lam)}{why}"
    assert shown["current_problem"] is None  # v0003 is current and whole
    before = snapshot(reg)
    capsys.readouterr()
    assert _pol(reg, "rollback", "--version", "v0001", "--reason", "r") == 2
    assert cli_error(capsys) == (f"--version: v0001 {problem}; roll back to another version "
                                 "(nothing written)")
    assert snapshot(reg) == before and _current(reg) == "v0003"


@pytest.mark.parametrize("lam,why", _BAD_LAMBDAS)
def test_set_lambda_on_a_current_version_with_an_invalid_lambda_writes_nothing(reg, capsys, lam,
                                                                               why):
    _edit_lambda(reg, "v0003", lam)
    before = snapshot(reg)
    capsys.readouterr()
    assert _set_lambda(reg) == 2
    err = cli_error(capsys)
    assert err == (f"--registry: CURRENT v0003 cannot be served: its lambda {json.dumps(lam)}{why};"
                   f" set-lambda builds on the current version, so {_FIX} (nothing written)")
    assert snapshot(reg) == before
    assert _pol(reg, "show") == 2  # CURRENT itself cannot be served
    assert json.loads(capsys.readouterr().out)["current_problem"].startswith(
        "names 'v0003', which cannot be served: its lambda ")
    with pytest.raises(policy.InputError, match="its lambda"):
        policy.load(str(reg))
    assert _pol(reg, "rollback", "--version", "v0002", "--reason", "repair") == 0  # the repair
    assert _current(reg) == "v0002"


def test_a_listing_that_fails_after_a_change_is_a_note_and_exit_0(reg, capsys, monkeypatch):
    def broken(registry_dir):
        raise ValueError("could not convert string to float: 'x'")

    monkeypatch.setattr(policy, "show", broken)
    capsys.readouterr()
    assert _set_lambda(reg) == 0
    out, err = capsys.readouterr()
    assert out == "published v0004 (parameters reused)\n"
    assert err == ("puts-jax: note: the versions cannot be listed (ValueError: could not convert "
                   "string to float: 'x'); the change above is made\n")
    assert _current(reg) == "v0004"


# ----------------------------------------------------------------------------- damaged params

def test_partly_deleted_parameters_are_found_before_set_lambda_or_rollback(reg, capsys):
    params = reg / "v0001" / "params"
    shutil.rmtree(params / "d")  # v0001 and v0002 (its parameters) are damaged
    assert policy.show(str(reg))["versions"][0]["problem"] is None  # show's check is cheap
    assert _pol(reg, "rollback", "--version", "v0002", "--reason", "r") == 2
    err = cli_error(capsys)
    assert err.startswith(f"--version: v0002 cannot be served: incomplete version (it uses the "
                          f"parameters of v0001): its parameters in {params} cannot be read ")
    assert err.endswith("; roll back to another version (nothing written)")
    before = snapshot(reg)
    assert _pol(reg, "rollback", "--version", "v0001", "--reason", "r") == 2
    assert f"its parameters in {params} cannot be read " in cli_error(capsys)
    assert snapshot(reg) == before and _current(reg) == "v0003"


def test_replaced_parameters_are_found_by_their_hash(reg, capsys):
    shutil.rmtree(reg / "v0003" / "params")
    shutil.copytree(reg / "v0001" / "params", reg / "v0003" / "params")  # same shapes
    meta = json.loads((reg / "v0003" / "policy.json").read_text())
    ours = json.loads((reg / "v0001" / "policy.json").read_text())["params_hash"]
    before = snapshot(reg)
    capsys.readouterr()
    assert _set_lambda(reg) == 2
    assert cli_error(capsys) == (
        f"--registry: CURRENT v0003 cannot be served: its parameters in {reg / 'v0003' / 'params'}"
        f" hash to {ours} but policy.json records params_hash {meta['params_hash']} (the folder "
        f"was changed or replaced); a new lambda on it could not be either: {_FIX} (nothing "
        "written)")
    assert snapshot(reg) == before
