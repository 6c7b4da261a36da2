"""Open Bandit Dataset conversion: the shipped 10,000-row random/all sample, slot matching, the tie
rule, malformed CSVs and the promise never to import obp."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from puts_jax.checks import InputError
from puts_jax.data import logs, obd

N_ROWS, N_CLICKS, N_ITEMS = 10_000, 38, 80


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    out = tmp_path_factory.mktemp("obd")
    paths = obd.convert_obd(str(out))
    table = pq.read_table(paths["logs"])
    with open(paths["summary"]) as f:
        summary = json.load(f)
    return paths, table, summary


def _fixed(table, name):
    return np.stack(table[name].to_numpy(zero_copy_only=False))


def _preds(table):
    return np.asarray(table["preds"].combine_chunks().flatten().flatten().to_numpy(),
                      np.float32).reshape(table.num_rows, N_ITEMS, 3)


def test_sample_counts_and_propensity(converted):
    paths, t, summary = converted
    assert t.num_rows == N_ROWS and summary["rows"] == N_ROWS
    rewards = _fixed(t, "rewards")
    assert rewards[:, 0].sum() == N_CLICKS and summary["clicks"] == N_CLICKS
    p = t["propensity"].to_numpy()
    assert (p == 1 / 80).all() and summary["propensity_values"] == [1 / 80]
    assert summary["n_items"] == N_ITEMS and summary["K"] == 3 and summary["A"] == 15
    assert sorted(set(t["position"].to_numpy().tolist())) == [0, 1, 2]  # file's 1..3, 0-based
    meta = logs.read_meta(paths["logs"])
    assert meta.action_set.objective_names == ("p_click", "affinity", "item_feature_0")
    assert meta.reward_kinds == ("binary", "real")
    assert meta.extra["position_base_in_file"] == 1


def test_preds_heads_and_rewards(converted):
    paths, t, _ = converted
    preds = _preds(t)
    for k in (0, 2):
        head = preds[:, :, k]
        assert head.min() == 0.0 and head.max() == 1.0
        assert (head == head[:1]).all()  # request-independent
    context = _fixed(t, "context")
    affinity = context[:, -N_ITEMS:]  # the context ends with the 80 raw affinity columns
    np.testing.assert_array_equal(preds[:, :, 1], (affinity / 3).astype(np.float32))
    onehots = context[:, :-N_ITEMS]
    assert (onehots.sum(1) == 4).all()  # one value per user feature
    rewards, item = _fixed(t, "rewards"), t["item_id"].to_numpy()
    clicked = rewards[:, 0] == 1
    assert (rewards[~clicked, 1] == 0).all() and (rewards[clicked, 1] >= 1).all()
    f0 = obd.read_items(obd.obd_paths(None, "all", "random")["items"])
    np.testing.assert_allclose(rewards[clicked, 1], f0[item[clicked]] - f0.min() + 1, rtol=1e-6)


def test_consistency_mask_matches_rankings(converted):
    paths, t, summary = converted
    W = logs.read_meta(paths["logs"]).action_set.weights
    consistent, action = _fixed(t, "consistent"), t["action"].to_numpy()
    item, pos = t["item_id"].to_numpy(), t["position"].to_numpy()
    preds = _preds(t)
    rows = np.random.default_rng(0).choice(N_ROWS, 300, replace=False)
    rows = np.union1d(rows, np.flatnonzero(consistent.any(1))[:200])
    for b in rows:
        for a in range(len(W)):
            top = obd.rank_items(preds[b], W[a])
            assert consistent[b, a] == (top[pos[b]] == item[b]), (b, a)
    # Uniform logging: each action's slate holds the logged item at the logged position with
    # probability 1/80, so matched rows ~ Binomial(10000, 1/80): mean 125, sd 11.1; +-5 sd.
    matched = consistent.sum(0)
    assert ((matched >= 70) & (matched <= 180)).all(), matched
    assert [a["matched_rows"] for a in summary["per_action"]] == matched.tolist()
    first = np.where(consistent.any(1), consistent.argmax(1), -1)
    np.testing.assert_array_equal(action, first)
    assert summary["rows_outside_action_set"] == int((action == -1).sum()) > N_ROWS // 2


def test_tie_rule_lower_item_id():
    # Scores under w = (0.5, 0.5, 0): [0.5, 0.75, 0.5, 0.75, 0.25]; ties go to the lower item.
    preds = np.array([[1.0, 0.0, 9.0], [0.5, 1.0, 0.0], [0.0, 1.0, 5.0], [1.0, 0.5, 0.0],
                      [0.25, 0.25, 7.0]], np.float32)
    w = np.array([0.5, 0.5, 0.0], np.float32)
    np.testing.assert_array_equal(obd.rank_items(preds, w, k=5), [1, 3, 0, 2, 4])
    W = np.stack([w, [0.0, 0.0, 1.0]])
    item = np.array([1, 3, 0, 2, 3, 4])
    pos = np.array([0, 1, 2, 0, 0, 1])  # W[1] ranks items 0, 4, 2 (scores 9, 7, 5) first
    got = obd.consistent_mask(np.broadcast_to(preds, (6, 5, 3)), W, item, pos, chunk_rows=4)
    np.testing.assert_array_equal(got, [[1, 0], [1, 0], [1, 0], [0, 0], [0, 0], [0, 1]])


def test_requests_match_log(converted):
    paths, t, _ = converted
    chunks = list(logs.iter_request_chunks(paths["requests"], chunk_rows=4096, n_pad=N_ITEMS))
    assert sum(len(c.request_id) for c in chunks) == N_ROWS
    preds = np.concatenate([c.batch.preds for c in chunks])
    np.testing.assert_array_equal(preds, _preds(t))
    assert all((c.candidate_ids == np.arange(N_ITEMS)).all() for c in chunks)
    assert all(c.batch.mask.all() and c.n_empty == 0 and c.n_null == 0 for c in chunks)
    np.testing.assert_array_equal(np.concatenate([c.batch.context for c in chunks]),
                                  _fixed(t, "context"))


def test_log_reads_back_through_logs(converted):
    paths, t, _ = converted
    _, rid, lb = logs.read_log(paths["logs"])
    assert len(rid) == N_ROWS and (lb.action == t["action"].to_numpy()).all()


def test_categories_from_earlier_meta_give_same_context(converted, tmp_path):
    paths, t, _ = converted
    cats = logs.read_meta(paths["logs"]).extra["user_feature_categories"]
    data, _ = obd.read_obd()
    ctx, cats2, _, unseen = obd.encode_context(data.user_features, data.affinity, cats)
    assert cats2 == cats and sum(unseen.values()) == 0
    np.testing.assert_array_equal(ctx, _fixed(t, "context"))
    fewer = {k: v[1:] for k, v in cats.items()}
    ctx3, _, names, unseen3 = obd.encode_context(data.user_features, data.affinity, fewer)
    assert ctx3.shape[1] == ctx.shape[1] - 4 and len(names) == ctx3.shape[1]
    dropped = data.user_features[0] == cats["user_feature_0"][0]
    assert unseen3["user_feature_0"] == dropped.sum() > 0
    assert (ctx3[dropped, :len(fewer["user_feature_0"])] == 0).all()


def test_men_campaign(tmp_path):
    paths = obd.convert_obd(str(tmp_path), campaign="men", grid_steps=2)
    with open(paths["summary"]) as f:
        s = json.load(f)
    assert s["n_items"] == 34 and s["A"] == 6 and s["rows"] == N_ROWS
    assert s["propensity_values"] == [pytest.approx(1 / 34, rel=1e-12)]


def _fake_root(tmp_path, n_rows=40, edit=None, item_edit=None):
    """A data root with the first rows of the shipped random/all sample, one cell edited."""
    src = obd.obd_paths(None, "all", "random")
    folder = tmp_path / "root" / "random" / "all"
    folder.mkdir(parents=True)
    with open(src["log"]) as f:
        lines = [next(f) for _ in range(n_rows + 1)]
    if edit is not None:
        row, column, value = edit
        header = lines[0].rstrip("\n").split(",")
        cells = lines[row + 1].rstrip("\n").split(",")
        cells[header.index(column)] = value
        lines[row + 1] = ",".join(cells) + "\n"
    (folder / "all.csv").write_text("".join(lines))
    shutil.copy(src["items"], folder / "item_context.csv")
    if item_edit is not None:
        item_edit(folder / "item_context.csv")
    return str(tmp_path / "root")


@pytest.mark.parametrize("edit, pattern", [
    ((7, "position", "x"), r"position: not a int64 value .* at rows \[7\]"),
    ((5, "position", "0"), r"position: OBD positions are 1-based .* at rows \[5\]"),
    ((3, "click", "2"), r"click: must be 0 or 1 at rows \[3\]"),
    ((9, "propensity_score", "0.02"), r"propensity_score: .*1/80 per position at rows \[9\]"),
    ((2, "propensity_score", "0"), r"propensity_score: .*positivity.* at rows \[2\]"),
    ((11, "user_feature_2", ""), r"user_feature_2: empty cell .* at rows \[11\]"),
    ((4, "user-item_affinity_7", "nan"), r"user-item_affinity_7: non-finite value at rows \[4\]"),
    ((8, "user-item_affinity_3", ""), r"user-item_affinity_3: empty cell .* at rows \[8\]"),
    ((6, "item_id", "80"), r"item_id: outside the 80 items .* at rows \[6\]"),
])
def test_malformed_csv_names_column_and_row(tmp_path, edit, pattern):
    root = _fake_root(tmp_path, edit=edit)
    with pytest.raises(InputError, match=pattern):
        obd.convert_obd(str(tmp_path / "out"), data_root=root)
    assert not (tmp_path / "out" / "logs.parquet").exists()


def test_small_root_converts_and_item_file_errors(tmp_path):
    root = _fake_root(tmp_path)
    paths = obd.convert_obd(str(tmp_path / "out"), data_root=root)
    assert pq.read_metadata(paths["logs"]).num_rows == 40

    def drop_column(p):
        lines = p.read_text().splitlines()
        p.write_text("\n".join(",".join(line.split(",")[:2]) for line in lines) + "\n")

    root2 = _fake_root(tmp_path / "b", item_edit=drop_column)
    with pytest.raises(InputError, match=r"item_feature_0: column missing"):
        obd.convert_obd(str(tmp_path / "out2"), data_root=root2)

    def duplicate(p):
        lines = p.read_text().splitlines()
        lines[3] = "2," + lines[2].split(",", 1)[1]  # item_id 1 again, 80 rows, no item 2
        p.write_text("\n".join(lines) + "\n")

    root3 = _fake_root(tmp_path / "c", item_edit=duplicate)
    with pytest.raises(InputError, match=r"item_id: duplicate item id .* at rows \[2\]"):
        obd.convert_obd(str(tmp_path / "out3"), data_root=root3)


def test_never_imports_obp(tmp_path):
    code = ("import sys; from puts_jax.data import obd; obd.convert_obd(sys.argv[1]); "
            "print(sorted(m for m in sys.modules if m == 'obp' or m.startswith('obp.')))")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                         text=True, env=env, timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout
    assert (tmp_path / "logs.parquet").exists()
