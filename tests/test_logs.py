import numpy as np
import pyarrow.parquet as pq
import pytest

from puts_jax.action_set import simplex_grid
from puts_jax.checks import InputError
from puts_jax.data import logs


def _meta(K=2, J=2):
    names = tuple(f"h{k}" for k in range(K))
    aset = simplex_grid(names, names, 2)
    return logs.LogMeta(aset, tuple(f"r{j}" for j in range(J)), ("binary",) * J, {"kind": "uniform"})


def _log_arrays(B=10, D=3, A=3, J=2, seed=0):
    rng = np.random.default_rng(seed)
    return dict(request_id=np.arange(B), context=rng.normal(size=(B, D)).astype(np.float32),
                action=rng.integers(0, A, B), propensity=np.full(B, 1 / A),
                rewards=rng.integers(0, 2, (B, J)).astype(np.float32))


def test_log_roundtrip_streamed_equals_whole(tmp_path):
    meta = _meta()
    arr = _log_arrays(B=25)
    path = str(tmp_path / "log.parquet")
    logs.write_log(path, meta, row_group_size=7, **arr)
    m2, rid, lb = logs.read_log(path)
    assert m2.action_set.hash() == meta.action_set.hash()
    np.testing.assert_array_equal(rid, arr["request_id"])
    np.testing.assert_array_equal(lb.action, arr["action"])
    np.testing.assert_allclose(lb.context, arr["context"])
    assert lb.consistent.sum(1).tolist() == [1] * 25
    chunks = list(logs.iter_log_chunks(path, chunk_rows=4))
    assert [c[0] for c in chunks] == list(range(0, 25, 4))
    np.testing.assert_array_equal(np.concatenate([c[2].rewards for c in chunks]), lb.rewards)


def test_bad_propensity_names_rows(tmp_path):
    arr = _log_arrays()
    arr["propensity"] = np.array([0.5, 0.0, 0.3, 1.2, 0.5, 0.5, 0.5, 0.5, 0.5, np.nan])
    with pytest.raises(InputError, match=r"propensity.*rows \[1, 3, 9\]|propensity.*rows \[9\]"):
        logs.write_log(str(tmp_path / "x.parquet"), _meta(), **arr)
    assert not (tmp_path / "x.parquet").exists()


def test_action_out_of_range_names_row(tmp_path):
    arr = _log_arrays()
    arr["action"][4] = 3
    with pytest.raises(InputError, match=r"action: index outside \[0, 3\) at rows \[4\]"):
        logs.write_log(str(tmp_path / "x.parquet"), _meta(), **arr)


def test_p10_empty_null_lists_streamed_across_row_groups(tmp_path):
    """PITFALLS P10: [[0.1, 0.2], [], null, [0.5]] as N_b x K with K = 1 ... here K = 1 per
    candidate, i.e. rows of 2, 0, null, 1 candidates, padded to N = 2."""
    meta = _meta(K=1, J=2)
    preds = [np.array([[0.1], [0.2]]), np.zeros((0, 1)), None, np.array([[0.5]])]
    path = str(tmp_path / "req.parquet")
    logs.write_requests(path, meta, request_id=np.arange(4), context=np.zeros((4, 2)), preds=preds,
                        row_group_size=2)
    assert pq.ParquetFile(path).metadata.num_row_groups == 2
    chunks = list(logs.iter_request_chunks(path, chunk_rows=3, n_pad=2))
    vals = np.concatenate([c.batch.preds[..., 0] for c in chunks])
    mask = np.concatenate([c.batch.mask for c in chunks])
    np.testing.assert_allclose(vals, [[0.1, 0.2], [0, 0], [0, 0], [0.5, 0]], rtol=1e-6)
    np.testing.assert_array_equal(mask, [[1, 1], [0, 0], [0, 0], [1, 0]])
    assert sum(c.n_empty for c in chunks) == 1 and sum(c.n_null for c in chunks) == 1
    whole = list(logs.iter_request_chunks(path, chunk_rows=100, n_pad=2))[0]
    np.testing.assert_array_equal(whole.batch.preds[..., 0], vals)


def test_dense_request_chunks_equal_the_ragged_path(tmp_path):
    """Every row with the same number of candidates takes the no-copy path: the same preds and
    mask as a ragged file whose extra row is padded (n_pad), ids by position."""
    meta = _meta(K=2, J=2)
    rng = np.random.default_rng(1)
    dense = rng.random((5, 3, 2)).astype(np.float32)
    path = str(tmp_path / "dense.parquet")
    logs.write_requests(path, meta, request_id=np.arange(5), context=np.zeros((5, 2)), preds=dense)
    (c,) = list(logs.iter_request_chunks(path, chunk_rows=8))
    np.testing.assert_array_equal(c.batch.preds, dense)
    assert c.batch.mask.all() and c.n_empty == 0 and c.n_null == 0
    np.testing.assert_array_equal(c.candidate_ids, np.tile(np.arange(3), (5, 1)))
    ragged = [dense[i] for i in range(5)] + [dense[0, :1]]
    path2 = str(tmp_path / "ragged.parquet")
    logs.write_requests(path2, meta, request_id=np.arange(6), context=np.zeros((6, 2)),
                        preds=ragged)
    (r,) = list(logs.iter_request_chunks(path2, chunk_rows=8))
    np.testing.assert_array_equal(r.batch.preds[:5], dense)
    np.testing.assert_array_equal(r.batch.mask[5], [True, False, False])
    np.testing.assert_array_equal(r.candidate_ids[5], [0, -1, -1])


def test_outside_action_rows(tmp_path):
    """Slot-level logs: action -1 means the logged decision matches no action (PITFALLS-style
    contract check): needs ``consistent``, which must be all False on that row."""
    arr = _log_arrays(B=4, A=3)
    arr["action"] = np.array([0, -1, 2, -1])
    cons = np.zeros((4, 3), bool)
    cons[0, 0] = cons[2, 2] = cons[2, 1] = True
    arr["propensity"][2] = 2 / 3  # uniform logging: the decision of actions 1 and 2
    path = str(tmp_path / "x.parquet")
    with pytest.raises(InputError, match=r"action: -1 \(outside the action set\) needs the consistent"):
        logs.write_log(path, _meta(), **arr)
    bad = cons.copy()
    bad[3, 1] = True
    with pytest.raises(InputError, match=r"consistent: a row with action -1 must have no consistent action at rows \[3\]"):
        logs.write_log(path, _meta(), consistent=bad, **arr)
    logs.write_log(path, _meta(), consistent=cons, **arr)
    _, _, lb = logs.read_log(path)
    np.testing.assert_array_equal(lb.action, [0, -1, 2, -1])
    np.testing.assert_array_equal(lb.consistent, cons)


def test_split_log_is_deterministic_disjoint_and_complete(tmp_path):
    arr = _log_arrays(B=1000)
    path = str(tmp_path / "x.parquet")
    logs.write_log(path, _meta(), **arr)
    a, b = str(tmp_path / "a.parquet"), str(tmp_path / "b.parquet")
    na, nb = logs.split_log(path, a, b, share=0.3)
    assert na + nb == 1000 and 230 < nb < 370
    ids_a, ids_b = logs.read_log(a)[1], logs.read_log(b)[1]
    assert not set(ids_a) & set(ids_b) and set(ids_a) | set(ids_b) == set(range(1000))
    assert logs.read_meta(b).action_set.hash() == _meta().action_set.hash()
    np.testing.assert_array_equal(logs.split_share(np.arange(1000), 0.3),
                                  np.isin(np.arange(1000), ids_b))
    with pytest.raises(InputError, match="share: must be in"):
        logs.split_share(np.arange(3), 1.0)


def test_written_files_follow_the_umask_not_tempfile_0600(tmp_path):
    import os
    import stat
    old = os.umask(0o022)
    try:
        path = str(tmp_path / "x.parquet")
        logs.write_log(path, _meta(), **_log_arrays())
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    finally:
        os.umask(old)


def test_context_width_must_not_change_between_chunks(tmp_path):
    """Each chunk's width used to come from its own first row: a file whose rows 0-3 have D = 3
    and rows 4-5 D = 2 streamed without an error in chunks of 4."""
    import pyarrow as pa

    meta = _meta()
    arr = _log_arrays(B=6)
    path = str(tmp_path / "log.parquet")
    logs.write_log(path, meta, row_group_size=4, **arr)
    t = pq.read_table(path)
    ctx = t["context"].to_pylist()
    ctx[4], ctx[5] = ctx[4][:2], ctx[5][:2]
    field = t.schema.field("context")
    bad = t.set_column(t.schema.get_field_index("context"), field, pa.array(ctx, field.type))
    pq.write_table(bad, path, row_group_size=4)
    with pytest.raises(InputError, match=r"context: expected length 3 at rows \[4, 5\]"):
        list(logs.iter_log_chunks(path, chunk_rows=4))
