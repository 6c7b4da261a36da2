"""Bad input gets a clear error naming the file, the field and the rows, never a silently wrong
number, and nothing already written is lost: log contracts (DESIGN.md section 4), the train and
puts-jax command lines."""

import re
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from puts_jax.action_set import simplex_grid
from puts_jax.checks import InputError
from puts_jax.data import logs
from train.main import main as train_main

A = 3  # simplex_grid over 2 heads, 2 steps


def _meta(kinds=("binary", "count"), logging=None):
    names = ("h0", "h1")
    return logs.LogMeta(simplex_grid(names, names, 2), tuple(f"r{j}" for j in range(len(kinds))),
                        tuple(kinds), {"kind": "uniform"} if logging is None else logging)


def _arrays(B=12, seed=0):
    rng = np.random.default_rng(seed)
    return dict(request_id=np.arange(B, dtype=np.int64),
                context=rng.normal(size=(B, 4)).astype(np.float32),
                action=rng.integers(0, A, B).astype(np.int32), propensity=np.full(B, 1 / A),
                rewards=np.stack([rng.integers(0, 2, B), rng.integers(0, 4, B)], 1).astype(
                    np.float32))


@pytest.fixture
def good(tmp_path):
    path = str(tmp_path / "good.parquet")
    logs.write_log(path, _meta(), **_arrays())
    return path


def _rewrite(src: str, dst: str, drop=(), **columns) -> str:
    """``src`` with columns replaced (or dropped), its metadata kept, written as ``dst`` without
    any validation: the way a foreign writer produces a bad file."""
    t = pq.read_table(src)
    for name in drop:
        t = t.drop([name])
    for name, col in columns.items():
        t = t.set_column(t.schema.get_field_index(name), name, col)
    pq.write_table(t, dst)
    return dst


def _train(capsys, logs_path, heldout_path, workdir):
    rc = train_main(["--config", "tiny", "--logs", logs_path, "--heldout", heldout_path,
                     "--workdir", str(workdir), "--epochs", "1"])
    return rc, capsys.readouterr().err


# ----------------------------------------------------------------------------- 1. train CLI

@pytest.mark.parametrize("change, message", [
    (dict(drop=["propensity"]), "propensity: missing column"),
    (dict(propensity=pa.array(["0.33"] * 12)), "propensity: expected floating-point, got string"),
    (dict(action=pa.array(np.full(12, 1.0))), "action: expected integer, got double"),
    (dict(propensity=pa.array([1 / 3] * 3 + [1.5] + [1 / 3] * 7 + [0.0])),
     r"propensity: propensity above 1 at rows [3]"),
    (dict(rewards=pa.array([[0.0, 1.0]] * 7 + [[np.nan, 1.0]] + [[0.0, 1.0]] * 4,
                           pa.list_(pa.float32()))), "rewards: non-finite value at rows [7]"),
])
def test_train_cli_bad_logs_is_one_error_line_naming_flag_file_field_rows(
        good, tmp_path, capsys, change, message):
    bad = _rewrite(good, str(tmp_path / "bad.parquet"), **change)
    rc, err = _train(capsys, bad, good, tmp_path / "wd")
    assert rc == 2
    assert err.startswith(f"python -m train: error: --logs {bad}: {message}")
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    # the held-out file is named as such
    rc, err = _train(capsys, good, bad, tmp_path / "wd2")
    assert rc == 2 and err.startswith(f"python -m train: error: --heldout {bad}: {message}")


def test_train_cli_heldout_of_another_action_set_names_the_heldout_flag(good, tmp_path, capsys):
    other = str(tmp_path / "other.parquet")
    names = ("h0", "h1")
    meta = logs.LogMeta(simplex_grid(names, names, 4), ("r0", "r1"), ("binary", "count"),
                        {"kind": "uniform"})
    logs.write_log(other, meta, **{**_arrays(), "propensity": np.full(12, 0.2)})
    rc, err = _train(capsys, good, other, tmp_path / "wd")
    assert rc == 2 and err.startswith(f"python -m train: error: --heldout {other}: action_set: ")


def test_reader_errors_name_the_file(good, tmp_path):
    bad = _rewrite(good, str(tmp_path / "bad.parquet"), drop=["rewards"])
    with pytest.raises(InputError, match=r"bad\.parquet: rewards: missing column") as e:
        logs.read_log(bad)
    assert e.value.source == bad and e.value.field == "rewards"
    pq.write_table(pq.read_table(good).replace_schema_metadata({}),
                   str(tmp_path / "nometa.parquet"))
    with pytest.raises(InputError, match=r"nometa\.parquet: metadata: no 'puts_jax'"):
        logs.read_log(str(tmp_path / "nometa.parquet"))


# ----------------------------------------------------------------------------- 2. nulls

def _with_nulls(values, rows, type_):
    out = list(values)
    for r in rows:
        out[r] = None
    return pa.array(out, type_)


@pytest.mark.parametrize("column, type_, rows", [
    ("request_id", pa.int64(), [4]),
    ("action", pa.int32(), [6, 9]),
    ("propensity", pa.float64(), [0]),
])
def test_null_scalar_values_are_rejected_by_name(good, tmp_path, column, type_, rows):
    values = pq.read_table(good)[column].to_pylist()
    bad = _rewrite(good, str(tmp_path / "bad.parquet"),
                   **{column: _with_nulls(values, rows, type_)})
    with pytest.raises(InputError, match=rf"bad\.parquet: {column}: null value at rows "
                                         rf"\[{', '.join(map(str, rows))}\]$"):
        logs.read_log(bad)
    chunks = logs.iter_log_chunks(bad, chunk_rows=5)  # streamed: absolute rows
    with pytest.raises(InputError, match=rf"{column}: null value at rows \[{rows[0]}"):
        list(chunks)


def test_null_entry_inside_a_list_is_rejected_not_read_as_nan_or_false(good, tmp_path):
    ctx = pq.read_table(good)["context"].to_pylist()
    ctx[2][1] = None
    bad = _rewrite(good, str(tmp_path / "bad.parquet"),
                   context=pa.array(ctx, pa.list_(pa.float32())))
    with pytest.raises(InputError, match=r"context: null entry in the list at rows \[2\]"):
        logs.read_log(bad)
    cons = np.eye(A, dtype=bool)[pq.read_table(good)["action"].to_numpy()].tolist()
    cons[5][0] = None
    bad = str(tmp_path / "bad2.parquet")
    pq.write_table(pq.read_table(good).append_column("consistent",
                                                     pa.array(cons, pa.list_(pa.bool_()))), bad)
    with pytest.raises(InputError, match=r"consistent: null entry in the list at rows \[5\]"):
        logs.read_log(bad)


def test_null_request_id_in_a_request_set_is_rejected(tmp_path):
    path = str(tmp_path / "req.parquet")
    logs.write_requests(path, _meta(), request_id=np.arange(3), context=np.zeros((3, 2)),
                        preds=np.zeros((3, 2, 2), np.float32))
    bad = _rewrite(path, str(tmp_path / "bad.parquet"),
                   request_id=pa.array([0, None, 2], pa.int64()))
    with pytest.raises(InputError, match=r"bad\.parquet: request_id: null value at rows \[1\]"):
        list(logs.iter_request_chunks(bad))


def test_write_log_rejects_float_request_ids(tmp_path):
    arr = _arrays()
    arr["request_id"] = np.where(np.arange(12) == 3, np.nan, np.arange(12))
    with pytest.raises(InputError, match=r"request_id: expected i64\[12\], got float64"):
        logs.write_log(str(tmp_path / "x.parquet"), _meta(), **arr)
    assert not (tmp_path / "x.parquet").exists()


# ----------------------------------------------------------------------------- 3. kinds, repeats

@pytest.mark.parametrize("j, value, message", [
    (0, -1.0, r"rewards: objective 0 \(r0\) is declared 'binary': must be 0 or 1 at rows \[5\]"),
    (0, 0.5, r"rewards: objective 0 \(r0\) is declared 'binary': must be 0 or 1 at rows \[5\]"),
    (1, -2.0, r"rewards: objective 1 \(r1\) is declared 'count': must be a non-negative whole "
              r"number at rows \[5\]"),
    (1, 1.5, r"rewards: objective 1 \(r1\) is declared 'count': must be a non-negative whole "
             r"number at rows \[5\]"),
])
def test_rewards_outside_their_declared_kind_are_rejected(tmp_path, j, value, message):
    arr = _arrays()
    arr["rewards"][5, j] = value
    with pytest.raises(InputError, match=message):
        logs.write_log(str(tmp_path / "x.parquet"), _meta(), **arr)
    assert not (tmp_path / "x.parquet").exists()
    logs.write_log(str(tmp_path / "real.parquet"), _meta(("real", "real")), **arr)  # allowed
    good = str(tmp_path / "good.parquet")
    logs.write_log(good, _meta(), **_arrays())
    bad = _rewrite(good, str(tmp_path / "bad.parquet"),
                   rewards=pa.array(arr["rewards"].tolist(), pa.list_(pa.float32())))
    with pytest.raises(InputError, match=r"bad\.parquet: " + message):
        list(logs.iter_log_chunks(bad, chunk_rows=4))


def test_repeated_request_ids_are_rejected_naming_every_row(good, tmp_path):
    arr = _arrays()
    arr["request_id"][[7, 10]] = [2, 2]
    with pytest.raises(InputError, match=r"request_id: repeated request id \(e\.g\. 2\) at rows "
                                         r"\[2, 7, 10\]$"):
        logs.write_log(str(tmp_path / "x.parquet"), _meta(), **arr)
    # in a file: ids not increasing (sorted fallback), and increasing but for a repeat at the
    # boundary of two record batches
    for ids, rows in ((arr["request_id"], "[2, 7, 10]"),
                      (np.array([0, 1, 2, 3, 4, 5, 5, 6, 7, 8, 9, 10]), "[5, 6]")):
        bad = _rewrite(good, str(tmp_path / "bad.parquet"), request_id=pa.array(ids))
        with pytest.raises(InputError, match=rf"bad\.parquet: request_id: repeated request id "
                                             rf"\(e\.g\. \d+\) at rows {re.escape(rows)}$"):
            logs.read_log(bad)
        with pytest.raises(InputError, match="repeated request id"):
            logs.check_request_ids(bad, batch_rows=6)
    logs.check_request_ids(good, batch_rows=5)  # increasing across batches: accepted


# ----------------------------------------------------------------------------- 4. logging policy

def test_propensity_contradicting_uniform_logging_is_rejected(good, tmp_path, capsys):
    arr = _arrays()
    arr["propensity"][[1, 2]] = 0.5  # uniform over A = 3 gives 1/3
    with pytest.raises(InputError, match=r'propensity: contradicts the declared logging policy '
                                         r'\{"kind": "uniform"\} \(e\.g\. 0\.5 where it gives the '
                                         r'logged decision 0\.333333\) at rows \[1, 2\]$'):
        logs.write_log(str(tmp_path / "x.parquet"), _meta(), **arr)
    p = pq.read_table(good)["propensity"].to_numpy().copy()
    p[7] = 1 / 3 * (1 + 1e-5)  # beyond LOGGING_PROPENSITY_RTOL
    p[8] = np.float32(1 / 3)  # a float32 round trip is within it
    bad = _rewrite(good, str(tmp_path / "bad.parquet"), propensity=pa.array(p))
    rc, err = _train(capsys, bad, good, tmp_path / "wd")
    assert rc == 2 and err.startswith(f"python -m train: error: --logs {bad}: propensity: "
                                      "contradicts the declared logging policy")
    assert err.rstrip().endswith("at rows [7]")


def test_epsilon_greedy_and_slate_propensities_follow_the_declared_policy(tmp_path):
    eg = {"kind": "epsilon_greedy", "epsilon": 0.3, "production": 1}
    arr = _arrays()
    probs = np.array([0.1, 0.8, 0.1])  # 0.3 / 3 each, production + 0.7
    np.testing.assert_allclose(logs.logging_probs(_meta(logging=eg)), probs)
    logs.write_log(str(tmp_path / "eg.parquet"), _meta(logging=eg),
                   **{**arr, "propensity": probs[arr["action"]]})
    with pytest.raises(InputError, match=r"propensity: contradicts .* at rows \[0, 1, "):
        logs.write_log(str(tmp_path / "x.parquet"), _meta(logging=eg), **arr)  # 1/3 each
    # slate matching: the logged decision's probability is the sum over its consistent actions
    cons = np.eye(A, dtype=bool)[arr["action"]]
    cons[:, 0] |= arr["action"] == 2  # action 2's decision equals action 0's
    two = cons.sum(1) == 2
    logs.write_log(str(tmp_path / "slate.parquet"), _meta(), consistent=cons,
                   **{**arr, "propensity": np.where(two, 2 / 3, 1 / 3)})
    with pytest.raises(InputError, match=r"where it gives the logged decision 0\.666667\) at rows "
                                         rf"\[{', '.join(map(str, np.flatnonzero(two)))}\]$"):
        logs.write_log(str(tmp_path / "x.parquet"), _meta(), consistent=cons, **arr)


def test_policies_without_an_action_distribution_are_not_checked_but_malformed_ones_are(tmp_path):
    arr = {**_arrays(), "propensity": np.full(12, 1 / 80)}
    obd_like = {"kind": "uniform_random_slots", "n_items": 80}
    assert logs.logging_probs(_meta(logging=obd_like)) is None
    logs.write_log(str(tmp_path / "slots.parquet"), _meta(logging=obd_like), **arr)
    with pytest.raises(InputError, match=r"logging_policy: epsilon_greedy needs epsilon in "
                                         r"\(0, 1\], got 1\.5"):
        logs.write_log(str(tmp_path / "x.parquet"),
                       _meta(logging={"kind": "epsilon_greedy", "epsilon": 1.5, "production": 0}),
                       **arr)


# ----------------------------------------------------------------------------- 5. outputs

def test_data_split_refuses_outputs_that_clash_before_writing(good, tmp_path, capsys):
    from puts_jax import cli

    before = (tmp_path / "good.parquet").read_bytes()
    out = str(tmp_path / "part.parquet")
    assert cli.main(["data", "split", "--logs", good, "--out-a", out, "--out-b", out]) == 2
    assert capsys.readouterr().err.startswith(
        f"puts-jax: error: --out-a and --out-b: both name {out}; an output must not replace")
    assert not (tmp_path / "part.parquet").exists()
    (tmp_path / "sub").mkdir()
    same = str(tmp_path / "sub" / ".." / "good.parquet")  # another spelling of --logs
    assert cli.main(["data", "split", "--logs", good, "--out-a", str(tmp_path / "a.parquet"),
                     "--out-b", same]) == 2
    assert "error: --out-b and --logs: both name" in capsys.readouterr().err
    assert (tmp_path / "good.parquet").read_bytes() == before
    assert not (tmp_path / "a.parquet").exists()
    with pytest.raises(InputError, match=r"out_a and path: both name"):
        logs.split_log(good, good, out)
    assert cli.main(["data", "split", "--logs", good, "--out-a", str(tmp_path / "a.parquet"),
                     "--out-b", out]) == 0  # control: distinct files


def test_score_and_select_refuse_an_output_that_is_an_input(tmp_path, capsys):
    from puts_jax import cli, score_job

    req = tmp_path / "requests.parquet"
    logs.write_requests(str(req), _meta(), request_id=np.arange(3), context=np.zeros((3, 2)),
                        preds=np.zeros((3, 2, 2), np.float32))
    before = req.read_bytes()
    link = tmp_path / "link.parquet"
    link.symlink_to(req)
    for out in (str(req), str(link)):
        assert cli.main(["score", "--policy", str(tmp_path / "no-registry"), "--requests",
                         str(req), "--out", out]) == 2
        assert capsys.readouterr().err.startswith(
            f"puts-jax: error: --out and --requests: both name {out}")
    assert req.read_bytes() == before
    with pytest.raises(InputError, match="out_path and requests_path: both name"):
        score_job.score_file(str(tmp_path / "no-registry"), str(req), str(req))
    fr = str(tmp_path / "frontier.json")
    assert cli.main(["policy", "select", "--frontier", fr, "--maximize", "r0", "--out", fr]) == 2
    assert "error: --out and --frontier: both name" in capsys.readouterr().err


# ----------------------------------------------------------------------------- 6. resume inputs

def test_resuming_on_another_log_is_refused_and_nothing_is_lost(good, tmp_path, capsys):
    import json
    import os
    import shutil

    wd = tmp_path / "wd"
    assert _train(capsys, good, good, wd)[0] == 0
    rec = json.loads((wd / "inputs.json").read_text())
    assert rec["logs"]["path"] == os.path.abspath(good)
    assert rec["logs"]["size"] == os.path.getsize(good) and len(rec["logs"]["sha256"]) == 64
    kept = {p: (wd / p).read_bytes() for p in ("inputs.json", "selected.json")}
    steps = sorted(os.listdir(wd / "checkpoints"))
    other = str(tmp_path / "other.parquet")
    logs.write_log(other, _meta(), **_arrays(seed=1))
    for flags, flag in (((other, good), "--logs"), ((good, other), "--heldout")):
        rc, err = _train(capsys, *flags, wd)
        assert rc == 2
        assert err.startswith(f"python -m train: error: {flag} {other}: {flag[2:]}: differs from "
                              f"the file the run in {wd} was trained on ({good}: ")
        assert "Train in a new --workdir" in err
    assert {p: (wd / p).read_bytes() for p in kept} == kept
    assert sorted(os.listdir(wd / "checkpoints")) == steps
    copy = str(tmp_path / "copy.parquet")  # the same bytes elsewhere: the same input
    shutil.copy(good, copy)
    assert _train(capsys, copy, good, wd)[0] == 0
    assert json.loads((wd / "inputs.json").read_text()) == rec  # the record stays the original
    assert _train(capsys, other, good, tmp_path / "wd2")[0] == 0  # a new workdir trains on it


# ----------------------------------------------------------------------------- 7. context ids

_IDS_ERROR = r"context_ids: id outside \[0, 2147483647\] \(embedding rows, read as int32\) at rows "


def _ids(bad: dict, B=12):
    ids = np.stack([np.arange(B), 2**31 - 1 - np.arange(B)], 1).astype(np.int64)  # int32 edges
    for row, value in bad.items():
        ids[row, 1] = value
    return ids


def test_context_ids_outside_int32_or_negative_are_rejected_not_wrapped(tmp_path):
    ok = str(tmp_path / "ok.parquet")
    logs.write_log(ok, _meta(), **_arrays(), context_ids=_ids({}))
    _, _, lb = logs.read_log(ok)
    assert lb.context_ids.dtype == np.int32
    np.testing.assert_array_equal(lb.context_ids, _ids({}))  # 0 and 2**31 - 1 read exactly
    bad = str(tmp_path / "bad.parquet")
    logs.write_log(bad, _meta(), **_arrays(), context_ids=_ids({5: 2**31, 9: -1, 10: -2**31 - 1}))
    with pytest.raises(InputError, match=rf"bad\.parquet: {_IDS_ERROR}\[5, 9, 10\]$") as e:
        logs.read_log(bad)
    assert e.value.field == "context_ids" and e.value.rows == [5, 9, 10]
    with pytest.raises(InputError, match=rf"bad\.parquet: {_IDS_ERROR}\[5\]$"):  # absolute rows
        list(logs.iter_log_chunks(bad, chunk_rows=4))
    # an unsigned column: 2**64 - 1 would become -1 through an int64 cast
    ids = _ids({}).tolist()
    ids[3][1] = 2**64 - 1
    u64 = _rewrite(ok, str(tmp_path / "u64.parquet"),
                   context_ids=pa.array(ids, pa.list_(pa.uint64())))
    with pytest.raises(InputError, match=rf"u64\.parquet: {_IDS_ERROR}\[3\]$"):
        logs.read_log(u64)


def test_request_context_ids_outside_int32_are_rejected(tmp_path):
    path = str(tmp_path / "req.parquet")
    logs.write_requests(path, _meta(), request_id=np.arange(6), context=np.zeros((6, 2)),
                        preds=np.zeros((6, 2, 2), np.float32), context_ids=_ids({4: 2**31}, B=6))
    with pytest.raises(InputError, match=rf"req\.parquet: {_IDS_ERROR}\[4\]$"):
        list(logs.iter_request_chunks(path, chunk_rows=3))


def test_train_cli_context_id_of_2_pow_31_is_one_error_line_naming_file_and_row(tmp_path, capsys):
    bad = str(tmp_path / "bad.parquet")
    logs.write_log(bad, _meta(), **_arrays(), context_ids=_ids({7: 2**31}))
    heldout = str(tmp_path / "heldout.parquet")  # another file: the same one adds a warning
    shutil.copy(bad, heldout)
    rc, err = _train(capsys, bad, heldout, tmp_path / "wd")
    assert rc == 2
    assert re.match(rf"python -m train: error: --logs {re.escape(bad)}: {_IDS_ERROR}\[7\]$",
                    err.strip())
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


# ----------------------------------------------------------------------------- 8. id vocabularies

VOCAB = (12, 64)  # _meta's rows have ids 0..11 in column 0 and 63..52 in column 1: both edges


def _vocab_ids(bad: dict, B=12):
    """i64[B, 2] inside VOCAB; ``bad`` {row: id} replaces column 1."""
    ids = np.stack([np.arange(B), 63 - np.arange(B)], 1).astype(np.int64)
    for row, value in bad.items():
        ids[row, 1] = value
    return ids


def _vocab_error(c, first, v, rows):
    return re.escape(f"context_ids[:, {c}]: id {first} >= the model's vocabulary of {v} "
                     f"(embedding rows 0 to {v - 1}) at rows {rows}")


def test_an_id_at_or_above_the_vocabulary_embeds_as_nan():
    """Why the readers check: nnx.Embed reads an id past its table as NaN, silently."""
    from flax import nnx

    from puts_jax.config import QNetConfig
    from puts_jax.qnet import QNetwork

    net = QNetwork(QNetConfig(hidden=(4,), id_vocab_sizes=VOCAB), 4, A, ("binary", "count"),
                   rngs=nnx.Rngs(0))
    ctx = np.zeros((2, 4), np.float32)
    q = np.asarray(net(ctx, np.array([[11, 63], [11, 64]], np.int32)))
    assert np.isfinite(q[0]).all() and np.isnan(q[1]).all()


def test_context_ids_at_or_above_the_models_vocabulary_are_rejected(tmp_path):
    ok = str(tmp_path / "ok.parquet")
    logs.write_log(ok, _meta(), **_arrays(), context_ids=_vocab_ids({}))
    _, _, lb = logs.read_log(ok, id_vocab_sizes=VOCAB)  # 11 < 12 and 63 < 64 pass
    np.testing.assert_array_equal(lb.context_ids, _vocab_ids({}))
    bad = str(tmp_path / "bad.parquet")
    logs.write_log(bad, _meta(), **_arrays(), context_ids=_vocab_ids({5: 70, 9: 64}))
    whole = rf"^{re.escape(bad)}: {_vocab_error(1, 70, 64, [5, 9])}$"
    with pytest.raises(InputError, match=whole) as e:
        logs.read_log(bad, id_vocab_sizes=VOCAB)
    assert e.value.field == "context_ids[:, 1]" and e.value.rows == [5, 9]
    with pytest.raises(InputError, match=rf"bad\.parquet: {_vocab_error(1, 70, 64, [5])}$"):
        list(logs.iter_log_chunks(bad, chunk_rows=4, id_vocab_sizes=VOCAB))  # absolute rows
    with pytest.raises(InputError, match=rf"ok\.parquet: {_vocab_error(0, 11, 11, [11])}$"):
        logs.read_log(ok, id_vocab_sizes=(11, 64))  # column 0 is checked against its own size
    assert logs.read_log(bad)[2].context_ids[5, 1] == 70  # without a model nothing is checked


def test_a_model_with_id_embeddings_needs_the_context_ids_column(good, tmp_path):
    with pytest.raises(InputError, match=r"good\.parquet: context_ids: missing column: the model "
                                         r"embeds 2 id columns \(vocabularies \[12, 64\]\)$"):
        logs.read_log(good, id_vocab_sizes=VOCAB)
    ok = str(tmp_path / "ok.parquet")
    logs.write_log(ok, _meta(), **_arrays(), context_ids=_vocab_ids({}))
    with pytest.raises(InputError, match=r"ok\.parquet: context_ids: 2 ids a row; the model "
                                         r"embeds 1 id column$"):  # both widths, not the rows
        logs.read_log(ok, id_vocab_sizes=(12,))  # C = len(vocabularies)


def test_request_context_ids_at_or_above_the_vocabulary_are_rejected(tmp_path):
    path = str(tmp_path / "req.parquet")
    logs.write_requests(path, _meta(), request_id=np.arange(6), context=np.zeros((6, 2)),
                        preds=np.zeros((6, 2, 2), np.float32),
                        context_ids=_vocab_ids({4: 1000}, B=6))
    with pytest.raises(InputError, match=rf"req\.parquet: {_vocab_error(1, 1000, 64, [4])}$"):
        list(logs.iter_request_chunks(path, chunk_rows=3, id_vocab_sizes=VOCAB))
    assert len(list(logs.iter_request_chunks(path, chunk_rows=3))) == 2  # no model, no check


def _vocab_config():
    import dataclasses

    from puts_jax.config import QNetConfig
    from train.config import TrainConfig

    return dataclasses.replace(TrainConfig.tiny(), qnet=QNetConfig(hidden=(16,), n_components=4,
                                                                   id_vocab_sizes=VOCAB))


def test_train_cli_id_beyond_the_configs_vocabulary_names_flag_file_column_and_rows(
        good, tmp_path, capsys, monkeypatch):
    import json

    import train.main as train_cli

    monkeypatch.setitem(train_cli.PRESETS, "tiny", _vocab_config)  # a config that embeds ids
    ok = str(tmp_path / "ok.parquet")
    logs.write_log(ok, _meta(), **_arrays(), context_ids=_vocab_ids({}))
    bad = str(tmp_path / "bad.parquet")
    logs.write_log(bad, _meta(), **_arrays(), context_ids=_vocab_ids({7: 64}))
    for flags, flag in (((bad, ok), "--logs"), ((ok, bad), "--heldout")):
        rc, err = _train(capsys, *flags, tmp_path / "wd_bad")
        assert rc == 2
        assert err == (f"python -m train: error: {flag} {bad}: context_ids[:, 1]: id 64 >= the "
                       "model's vocabulary of 64 (embedding rows 0 to 63) at rows [7]\n")
        assert not (tmp_path / "wd_bad").exists()  # refused before the workdir is made
    rc, err = _train(capsys, good, ok, tmp_path / "wd_noids")
    assert rc == 2 and err == (f"python -m train: error: --logs {good}: context_ids: missing "
                               "column: the model embeds 2 id columns (vocabularies [12, 64])\n")
    rc, _ = _train(capsys, ok, ok, tmp_path / "wd")  # ids at the edges train, with finite values
    assert rc == 0
    sel = json.loads((tmp_path / "wd" / "selected.json").read_text())
    assert np.isfinite(sel["value"])
    spec = json.loads((tmp_path / "wd" / "selected_model" / "spec.json").read_text())["spec"]
    assert spec["id_vocab_sizes"] == list(VOCAB)
