import json
import os

import jax
import numpy as np
import pytest
from flax import nnx

from puts_jax import policy
from puts_jax.action_set import simplex_grid
from puts_jax.checks import InputError
from puts_jax.config import QNetConfig
from puts_jax.qnet import QNetwork


def _model(seed=0, A=4):
    return QNetwork(QNetConfig.tiny(), 5, A, ("binary", "real"), rngs=nnx.Rngs(seed))


def _aset():
    return simplex_grid(("click", "save"), ("click", "save"), steps=3, production=(0.5, 0.5))


def _params(model):
    return {jax.tree_util.keystr(p): np.asarray(x) for p, x in
            jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(nnx.state(model, nnx.Param)))[0]}


def _assert_same_params(a, b):
    pa, pb = _params(a), _params(b)
    assert pa.keys() == pb.keys()
    for k in pa:
        assert pa[k].dtype == pb[k].dtype and pa[k].tobytes() == pb[k].tobytes(), k


def _current(reg):
    with open(os.path.join(reg, "CURRENT")) as f:
        return f.read()


def test_publish_set_lambda_rollback_load(tmp_path):
    reg = str(tmp_path / "reg")
    model, aset = _model(), _aset()
    point = {"lambda": [0.3, 0.7], "verdict": "nondominated", "estimates": {"snips": [0.1, 0.2]}}
    v1 = policy.publish(reg, model, aset, [0.3, 0.7], point, "initial launch",
                        source={"checkpoint": "ckpt/200", "step": 200})
    assert v1 == "v0001" and _current(reg) == "v0001\n"
    op = policy.load(reg)
    assert op.version == "v0001" and op.lam.dtype == np.float32
    np.testing.assert_array_equal(op.lam, np.float32([0.3, 0.7]))
    _assert_same_params(op.model, model)
    assert op.action_set.hash() == aset.hash() and op.action_set.production == aset.production
    assert op.meta["frontier_point"] == point and op.meta["source"]["step"] == 200
    assert op.meta["parent"] is None and op.meta["params_hash"] == policy.params_hash(model)
    x = np.random.default_rng(0).normal(size=(3, 5)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(op.model(x)), np.asarray(model(x)))

    # set-lambda: a new version that reuses v0001's parameters (no params directory of its own).
    v2 = policy.set_lambda(reg, [0.6, 0.4], "more clicks for the holiday")
    assert v2 == "v0002" and _current(reg) == "v0002\n"
    assert sorted(os.listdir(os.path.join(reg, v2))) == ["policy.json"]
    op2 = policy.load(reg)
    assert op2.meta["parent"] == "v0001" and op2.meta["params_version"] == "v0001"
    assert op2.meta["params_hash"] == op.meta["params_hash"] == policy.params_hash(op2.model)
    np.testing.assert_array_equal(op2.lam, np.float32([0.6, 0.4]))
    _assert_same_params(op2.model, model)

    # rollback: CURRENT back to v0001, no new version.
    assert policy.rollback(reg, "v0001", "holiday over") == "v0001"
    assert _current(reg) == "v0001\n" and policy.versions(reg) == ["v0001", "v0002"]
    np.testing.assert_array_equal(policy.load(reg).lam, np.float32([0.3, 0.7]))
    _assert_same_params(policy.load(reg, "v0002").model, model)

    audit = policy.read_audit(reg)
    assert [a["action"] for a in audit] == ["publish", "set-lambda", "rollback"]
    assert [a["version"] for a in audit] == ["v0001", "v0002", "v0001"]
    assert [a["current_before"] for a in audit] == [None, "v0001", "v0002"]
    assert [a["reason"] for a in audit] == ["initial launch", "more clicks for the holiday",
                                            "holiday over"]
    assert audit[1]["parent"] == "v0001" and audit[1]["lambda"] == pytest.approx([0.6, 0.4])
    assert all(a["time"] for a in audit)

    # A new publish after a rollback has the rolled-back version as parent.
    v3 = policy.publish(reg, _model(seed=1), aset, [1.0, 0.0], None, "retrained")
    s = policy.show(reg)
    assert s["current"] == v3 == "v0003" and s["policy"]["parent"] == "v0001"
    assert [v["version"] for v in s["versions"]] == ["v0001", "v0002", "v0003"]
    assert s["audit_consistent"] and s["stale_temp"] == [] and len(s["audit"]) == 4
    assert s["versions"][2]["params_hash"] != s["versions"][0]["params_hash"]
    with open(os.path.join(reg, "audit.jsonl")) as f:
        assert len(f.read().splitlines()) == 4


def test_bad_lambda_and_arguments(tmp_path):
    reg = str(tmp_path / "reg")
    model, aset = _model(), _aset()
    with pytest.raises(InputError, match="lambda: expected f32\\[J\\] with length J = 2"):
        policy.publish(reg, model, aset, [0.2, 0.3, 0.5], None, "r")
    with pytest.raises(InputError, match="lambda: coefficients must be non-negative"):
        policy.publish(reg, model, aset, [-0.5, 1.5], None, "r")
    with pytest.raises(InputError, match="lambda: .*sum to 1"):
        policy.publish(reg, model, aset, [0.5, 0.6], None, "r")
    with pytest.raises(InputError, match="lambda: non-finite"):
        policy.publish(reg, model, aset, [np.nan, 1.0], None, "r")
    with pytest.raises(InputError, match="reason"):
        policy.publish(reg, model, aset, [0.5, 0.5], None, "  ")
    with pytest.raises(InputError, match="frontier_point.lambda"):
        policy.publish(reg, model, aset, [0.5, 0.5], {"lambda": [0.4, 0.6]}, "r")
    with pytest.raises(InputError, match="action_set: A = 4 actions but the model scores 6"):
        policy.publish(reg, _model(A=6), aset, [0.5, 0.5], None, "r")
    with pytest.raises(InputError, match="CURRENT"):
        policy.set_lambda(reg, [0.5, 0.5], "r")
    with pytest.raises(InputError, match="CURRENT"):
        policy.load(reg)
    assert policy.versions(reg) == [] and policy.read_audit(reg) == []
    policy.publish(reg, model, aset, [0.5, 0.5], None, "ok")
    with pytest.raises(InputError, match="lambda: expected"):
        policy.set_lambda(reg, [1.0], "r")
    with pytest.raises(InputError, match="version: 'v0009' is not a version"):
        policy.rollback(reg, "v0009", "r")
    with pytest.raises(InputError, match="already current"):
        policy.rollback(reg, "v0001", "r")
    assert len(policy.read_audit(reg)) == 1 and _current(reg) == "v0001\n"


def test_crash_mid_publish_leaves_no_version(tmp_path, monkeypatch):
    reg = str(tmp_path / "reg")
    policy.publish(reg, _model(), _aset(), [0.5, 0.5], None, "first")

    def boom(path, model):
        os.makedirs(path)
        with open(os.path.join(path, "partial"), "w") as f:
            f.write("x")
        raise RuntimeError("disk full")

    monkeypatch.setattr(policy.model_io, "save_params", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        policy.publish(reg, _model(seed=3), _aset(), [0.5, 0.5], None, "second")
    assert sorted(os.listdir(reg)) == [".lock", "CURRENT", "audit.jsonl", "v0001"]
    assert _current(reg) == "v0001\n" and len(policy.read_audit(reg)) == 1


def _published(tmp_path) -> tuple[str, str, dict]:
    """A registry with v0001 published: (registry, v0001's policy.json path, its contents)."""
    reg = str(tmp_path / "reg")
    policy.publish(reg, _model(), _aset(), [0.5, 0.5], None, "first")
    path = os.path.join(reg, "v0001", "policy.json")
    with open(path) as f:
        return reg, path, json.load(f)


def test_tampered_params_hash_detected(tmp_path):
    reg, path, meta = _published(tmp_path)
    meta["params_hash"] = "0" * 16
    with open(path, "w") as f:
        json.dump(meta, f)
    with pytest.raises(InputError, match="params_hash"):
        policy.load(reg)
    meta["model_spec"]["n_actions"] = 7
    with open(path, "w") as f:
        json.dump(meta, f)
    with pytest.raises(InputError, match="params: saved parameters do not fit.*values"):
        policy.load(reg)


def test_audit_log_a_crash_left_without_its_newline_and_a_corrupt_line(tmp_path):
    reg = str(tmp_path / "reg")
    policy.publish(reg, _model(), _aset(), [0.5, 0.5], None, "first")
    path = os.path.join(reg, "audit.jsonl")
    with open(path, "rb") as f:
        line = f.read()
    with open(path, "wb") as f:  # a whole entry whose newline never reached the disk
        f.write(line.rstrip(b"\n"))
    policy.set_lambda(reg, [0.7, 0.3], "second")  # written on a line of its own
    with open(path, "rb") as f:
        lines = f.read().splitlines()
    assert len(lines) == 2 and lines[0] == line.rstrip(b"\n")
    assert [a["reason"] for a in policy.read_audit(reg)] == ["first", "second"]
    with open(path, "ab") as f:
        f.write(b'{"action": "set-lam')  # killed mid-line
    with open(path, "rb") as f:
        before = f.read()
    with pytest.raises(InputError, match=f"^registry: {path}: line 3: not valid JSON "
                                         r"\(Unterminated string starting at: column 12\); the "
                                         "file is truncated or corrupt; repair or remove"):
        policy.read_audit(reg)
    for write in (lambda: policy.set_lambda(reg, [0.5, 0.5], "third"),
                  lambda: policy.rollback(reg, "v0001", "back"),
                  lambda: policy.publish(reg, _model(), _aset(), [0.5, 0.5], None, "again")):
        with pytest.raises(InputError, match="line 3: not valid JSON"):
            write()
    with open(path, "rb") as f:
        assert f.read() == before
    assert policy.versions(reg) == ["v0001", "v0002"] and _current(reg) == "v0002\n"


def test_policy_json_that_is_not_an_object_or_lacks_keys(tmp_path):
    reg, path, meta = _published(tmp_path)
    with open(path, "w") as f:
        json.dump({k: v for k, v in meta.items() if k not in ("params_hash", "source")}, f)
    with pytest.raises(InputError, match=r"^registry: .*v0001/policy.json: missing keys "
                                         r"\['params_hash', 'source'\]; the file is truncated"):
        policy.load(reg)
    with open(path, "w") as f:
        f.write('\n\n"v0001"')
    with pytest.raises(InputError, match="policy.json: line 1: a JSON str, not an object"):
        policy.load(reg)
    why = f"unreadable: {path}: line 1: a JSON str, not an object; the file is truncated or corrupt"
    shown = policy.show(reg)  # show lists the broken version with its problem
    assert shown["versions"][0]["problem"] == why and shown["policy"] is None
    assert shown["current_problem"] == f"names 'v0001', which is {why}"
    with open(path, "w") as f:
        f.write('{\n "lambda": [0.5,\n')
    with pytest.raises(InputError, match=r"policy.json: line 3: not valid JSON \(Expecting value"):
        policy.load(reg)
