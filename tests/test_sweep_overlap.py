"""The sweep counts the rows of its log that training read (fresh-user review M5).

Before, ``sweep`` compared only whole-file sha256 with the train workdir's ``inputs.json``: a log
that contained the training rows (the full log before a ``data split``, a concatenation, the same
rows in another order or Parquet layout) gave no warning, and the frontier was silently
optimistic. Training now records the 64-bit keys of its rows (``WORKDIR/training_rows.npz``) and
the sweep counts its rows whose key is recorded.
"""

import json
import os
import shutil
import struct

import numpy as np
import pyarrow.parquet as pq
import pytest

from puts_jax import cli, sweep_inputs, sweep_job
from puts_jax.data import logs
from puts_jax.data import simulator as sim
from puts_jax.types import LoggedBatch
from train import TrainConfig, checkpointing, train_and_evaluate

M64 = (1 << 64) - 1
ADVICE = ("their estimates are optimistic and so is the frontier; sweep a log training did not "
          "see (simulate's evaluation.parquet, or a 'data split' share held out of training)")


def _write(path, meta, rid, lb, row_group_size=65536):
    logs.write_log(str(path), meta, request_id=rid, context=lb.context, action=lb.action,
                   propensity=lb.propensity, rewards=lb.rewards, row_group_size=row_group_size)
    return str(path)


def _rows(lb, idx):
    return LoggedBatch(*(None if x is None else np.asarray(x)[idx] for x in lb))


def _cat(a, b):
    return LoggedBatch(*(None if x is None else np.concatenate([x, y]) for x, y in zip(a, b)))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny training run on 600 rows (held-out: 400 rows), and logs made from its rows: the
    training rows plus 300 unseen ones (shuffled, another row-group layout), 200 held-out rows
    alone, unseen rows only, and another simulation whose request ids are the training ids."""
    d = tmp_path_factory.mktemp("overlap")
    world = sim.make_world(sim.SimConfig.tiny())
    p = {}
    for name, n, seed, offset in (("train", 600, 1, 0), ("heldout", 400, 2, 600),
                                  ("unseen", 300, 3, 10 ** 6), ("same_ids", 600, 9, 0)):
        p[name] = str(d / f"{name}.parquet")
        logs.write_log(p[name], **sim.simulate_log(world, n, seed, id_offset=offset))
    cfg = TrainConfig(**{**TrainConfig.tiny().__dict__, "batch_size": 64, "epochs": 1,
                         "eval_every": 5, "checkpoint_every": 5})
    wd = d / "wd"
    train_and_evaluate(cfg, str(wd), p["train"], p["heldout"])
    meta, rid_t, lb_t = logs.read_log(p["train"])
    _, rid_u, lb_u = logs.read_log(p["unseen"])
    _, rid_h, lb_h = logs.read_log(p["heldout"])
    order = np.random.default_rng(0).permutation(900)
    rid = np.concatenate([rid_t, rid_u])[order]
    p["mixed"] = _write(d / "mixed.parquet", meta, rid, _rows(_cat(lb_t, lb_u), order), 128)
    p["held200"] = _write(d / "held200.parquet", meta, rid_h[:200], _rows(lb_h, slice(0, 200)))
    return {"dir": d, "wd": wd, "model": str(wd / "selected_model"), **p}


def _sweep(model, log, out, capsys, *extra):
    assert cli.main(["sweep", "--model", model, "--logs", log, "--out", str(out),
                     "--n-lambdas", "3", "--bootstrap", "0", "--no-halves", *extra]) == 0
    doc = json.loads((out / "frontier.json").read_text())
    return doc, capsys.readouterr().err


def _splitmix(x):
    x = (x + 0x9E3779B97F4A7C15) & M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & M64
    return x ^ (x >> 31)


def _key(rid, action, context, ids=()):
    """The row key in plain Python integers (an oracle independent of numpy's wrapping)."""
    h = _splitmix(rid & M64)
    words = [action & M64] + [struct.unpack("<I", struct.pack("<f", c))[0] for c in context]
    for w in words + [i & M64 for i in ids]:
        h = _splitmix(h ^ w)
    return h


def test_row_keys_match_a_plain_python_oracle_and_see_every_column():
    ctx = np.array([[0.5, -1.25, 0.0], [-0.0, 3e-39, 7.0]], np.float32)
    lb = LoggedBatch(ctx, np.array([3, -1], np.int32), np.ones(2), np.zeros((2, 1), np.float32),
                     None, None, np.array([[5, 9], [0, 2**31 - 1]], np.int32))
    rid = np.array([-7, 2**62], np.int64)
    keys = sweep_inputs.row_keys(rid, lb)
    assert keys.dtype == np.uint64
    assert keys.tolist() == [_key(int(r), int(a), c.tolist(), i.tolist())
                             for r, a, c, i in zip(rid, lb.action, ctx, lb.context_ids)]
    assert sweep_inputs.row_keys(rid[::-1], _rows(lb, [1, 0])).tolist() == keys[::-1].tolist()
    # -0.0 and 0.0 are other bits; another id, action or context value is another key
    for changed in (lb._replace(context=np.where(ctx == 0, -0.0, ctx).astype(np.float32)),
                    lb._replace(action=np.array([4, -1], np.int32)),
                    lb._replace(context_ids=lb.context_ids + 1)):
        assert sweep_inputs.row_keys(rid, changed)[0] != keys[0]
    assert sweep_inputs.row_keys(rid + 1, lb)[0] != keys[0]


def test_training_records_the_keys_of_its_rows(trained):
    path = trained["wd"] / "training_rows.npz"
    inputs = json.loads((trained["wd"] / "inputs.json").read_text())
    with np.load(path) as z:
        assert z["roles"].tolist() == ["heldout", "logs"]
        assert z["sha256"].tolist() == [inputs["heldout"]["sha256"], inputs["logs"]["sha256"]]
        for role, log in (("logs", trained["train"]), ("heldout", trained["heldout"])):
            _, rid, lb = logs.read_log(log)
            assert z[role].tolist() == np.unique(sweep_inputs.row_keys(rid, lb)).tolist()
    # the same inputs give the same bytes (fixed zip timestamps, sorted names)
    with np.load(path) as z:
        keys = {r: [z[r]] for r in ("logs", "heldout")}
    again = trained["dir"] / "again"
    again.mkdir()
    sweep_inputs.write_rows_record(str(again), {r: inputs[r]["sha256"] for r in keys}, keys)
    assert (again / "training_rows.npz").read_bytes() == path.read_bytes()


def test_a_log_holding_the_training_rows_is_counted_and_warned(trained, tmp_path, capsys):
    doc, err = _sweep(trained["model"], trained["mixed"], tmp_path / "f", capsys)
    rec = str(trained["wd"] / "training_rows.npz")
    tr = doc["provenance"]["training_rows"]
    assert {k: tr[k] for k in ("record", "checked", "why_not", "rows", "seen", "record_rows")} == {
        "record": rec, "checked": True, "why_not": None, "rows": 900,
        "seen": {"heldout": 0, "logs": 600}, "record_rows": {"heldout": 400, "logs": 600}}
    assert doc["provenance"]["training_inputs"]["seen_as"] == []  # another file: sha256 differs
    warn = (f"600 of 900 rows of the log (66.7%) are rows the model was trained on: their request "
            f"id, action and context are those of rows of its --logs (recorded in {rec}); "
            + ADVICE)
    assert err == f"puts-jax: warning: --logs: {warn}\n"
    assert warn in doc["warnings"]
    # chunking changes nothing
    doc7, _ = _sweep(trained["model"], trained["mixed"], tmp_path / "g", capsys,
                     "--chunk-rows", "7")
    assert doc7["provenance"]["training_rows"]["seen"] == {"heldout": 0, "logs": 600}


def test_held_out_rows_are_named_as_checkpoint_selected_on(trained, tmp_path, capsys):
    doc, err = _sweep(trained["model"], trained["held200"], tmp_path / "f", capsys)
    assert doc["provenance"]["training_rows"]["seen"] == {"heldout": 200, "logs": 0}
    assert err == ("puts-jax: warning: --logs: 200 of 200 rows of the log (100.0%) are rows the "
                   "model was checkpoint-selected on: their request id, action and context are "
                   f"those of rows of its --heldout (recorded in "
                   f"{trained['wd'] / 'training_rows.npz'}); {ADVICE}\n")


def test_reused_request_ids_with_other_rows_are_not_counted(trained, tmp_path, capsys):
    ids = lambda p: pq.read_table(p, columns=["request_id"])[0].to_numpy()  # noqa: E731
    assert (ids(trained["same_ids"]) == ids(trained["train"])).all()  # another simulation
    for log in (trained["same_ids"], trained["unseen"]):
        doc, err = _sweep(trained["model"], log, tmp_path / os.path.basename(log), capsys)
        assert doc["provenance"]["training_rows"]["seen"] == {"heldout": 0, "logs": 0}
        assert err == "" and not any("model was" in w for w in doc["warnings"])


def test_the_training_file_itself_gets_the_sha256_warning_once(trained, tmp_path, capsys):
    doc, err = _sweep(trained["model"], trained["train"], tmp_path / "f", capsys)
    ti = doc["provenance"]["training_inputs"]
    assert ti["seen_as"] == ["logs"]
    assert doc["provenance"]["training_rows"]["seen"] == {"heldout": 0, "logs": 600}
    assert err == f"puts-jax: warning: --logs: {sweep_job.seen_warning(ti)}\n"


def test_a_model_without_a_usable_record_is_not_checked(trained, tmp_path, capsys):
    elsewhere = tmp_path / "copy"
    shutil.copytree(trained["model"], elsewhere / "selected_model")
    doc, err = _sweep(str(elsewhere / "selected_model"), trained["mixed"], tmp_path / "f", capsys)
    tr = doc["provenance"]["training_rows"]
    assert (tr["record"], tr["checked"], tr["seen"], err) == (None, False, None, "")
    assert tr["why_not"].startswith("no training_rows.npz beside the model")
    # a record of other files than inputs.json's (copied from another workdir) is not used
    shutil.copy(trained["wd"] / "training_rows.npz", elsewhere)
    inputs = json.loads((trained["wd"] / "inputs.json").read_text())
    inputs["logs"]["sha256"] = "0" * 64
    (elsewhere / "inputs.json").write_text(json.dumps(inputs))
    path, record, why = sweep_inputs.load_rows_record(str(elsewhere / "selected_model"))
    assert (path, record) == (str(elsewhere / "training_rows.npz"), None)
    assert why == f"its logs is not the file {elsewhere / 'inputs.json'} records"


def test_resume_records_the_rows_of_a_workdir_from_before_the_record(trained, tmp_path):
    wd = tmp_path / "old"
    wd.mkdir()
    shutil.copy(trained["wd"] / "inputs.json", wd)
    inputs = json.loads((wd / "inputs.json").read_text())
    keys = {"logs": [np.array([3, 1, 2], np.uint64)], "heldout": []}
    checkpointing.record_rows(str(wd), inputs, keys, resuming=True)
    with np.load(wd / "training_rows.npz") as z:
        assert z["logs"].tolist() == [1, 2, 3] and z["heldout"].tolist() == []
    before = (wd / "training_rows.npz").read_bytes()
    checkpointing.record_rows(str(wd), inputs, {"logs": [np.array([9], np.uint64)],
                                                "heldout": []}, resuming=True)
    assert (wd / "training_rows.npz").read_bytes() == before  # a resumed run keeps its record
