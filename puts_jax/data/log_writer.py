"""Writing exploration logs and request sets (DESIGN.md section 4) atomically, and splitting a
log in two by request id.

Every writer validates first (``log_schema.validate_logged``), then writes a temporary file in
the target folder and renames it over ``path``: a reader never sees a partial file.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from puts_jax import checks
from puts_jax.action_set import default_mode
from puts_jax.checks import InputError
from puts_jax.data.log_schema import META_KEY, LogMeta, validate_logged
from puts_jax.types import LoggedBatch

def _list_col(x: np.ndarray, dtype) -> pa.Array:
    """Rows of a 2-D array as a list<dtype> column."""
    x = np.ascontiguousarray(x)
    offsets = np.arange(x.shape[0] + 1, dtype=np.int32) * x.shape[1]
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(x.reshape(-1), type=dtype))


def _ragged_col(rows: list, dtype) -> pa.Array:
    """A list of 2-D arrays (N_b x K, N_b may be 0) or None as list<list<dtype>>; a dense
    ndarray [B, N, K] takes a fast path without Python objects."""
    if isinstance(rows, np.ndarray) and rows.ndim == 3:
        B, N, K = rows.shape
        if B * N * K >= 2**31:
            raise InputError("preds", [], f"{B * N * K} values exceed list<list<f32>> offsets")
        flat = pa.array(np.ascontiguousarray(rows).reshape(-1), type=dtype)
        inner = pa.ListArray.from_arrays(pa.array(np.arange(B * N + 1, dtype=np.int32) * K), flat)
        return pa.ListArray.from_arrays(pa.array(np.arange(B + 1, dtype=np.int32) * N), inner)
    return pa.array([None if r is None else np.asarray(r).tolist() for r in rows],
                    type=pa.list_(pa.list_(dtype)))


def _atomic_write_table(table: pa.Table, path: str, row_group_size: int) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".parquet")
    os.chmod(tmp, default_mode())
    os.close(fd)
    try:
        pq.write_table(table, tmp, row_group_size=row_group_size)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_log(path: str, meta: LogMeta, *, request_id: np.ndarray, context: np.ndarray,
              action: np.ndarray, propensity: np.ndarray, rewards: np.ndarray,
              consistent: np.ndarray | None = None, context_ids: np.ndarray | None = None,
              preds: list | None = None, extra_columns: dict[str, np.ndarray] | None = None,
              row_group_size: int = 65536) -> None:
    """Validate and write an exploration log atomically.

    Args: request_id i64[B]; context f32[B, D]; action i32[B] in [0, A), or OUTSIDE_ACTION (-1)
      where no action is consistent with the logged decision (then ``consistent`` is required and
      all False on that row); propensity f64[B] in (0, 1]; rewards f32[B, J]; consistent
      bool[B, A] (optional); context_ids i64[B, C] (optional); preds: optional list of
      f32[N_b, K] per row or a dense f32[B, N, K]; extra_columns: 1-D per-row columns kept as
      they are (e.g. OBD's item_id, position); readers ignore them.
    Raises InputError naming the field and rows (bad propensity, action out of range, a reward
    outside its declared kind, a repeated request id, ...).
    """
    action = np.asarray(action)
    if action.dtype.kind not in "iu":
        raise InputError("action", [], f"expected integer indices i32[B], got {action.dtype}")
    lb = LoggedBatch(np.asarray(context, np.float32), action.astype(np.int64),  # no wrap-around
                     np.asarray(propensity, np.float64), np.asarray(rewards, np.float32),
                     None if consistent is None else np.asarray(consistent, bool),
                     np.ones(len(action), bool), context_ids)
    validate_logged(lb, meta)
    request_id = np.asarray(request_id)
    if request_id.dtype.kind not in "iu" or request_id.shape != (len(lb.action),):
        raise InputError("request_id", [], f"expected i64[{len(lb.action)}], got "
                         f"{request_id.dtype}{list(request_id.shape)}")
    checks.check_unique("request_id", request_id, "request id")
    cols = {"request_id": pa.array(np.asarray(request_id, np.int64)),
            "context": _list_col(lb.context, pa.float32()),
            "action": pa.array(lb.action.astype(np.int32)), "propensity": pa.array(lb.propensity),
            "rewards": _list_col(lb.rewards, pa.float32())}
    if context_ids is not None:
        cols["context_ids"] = _list_col(np.asarray(context_ids, np.int64), pa.int64())
    if consistent is not None:
        cols["consistent"] = _list_col(lb.consistent, pa.bool_())
    if preds is not None:
        cols["preds"] = _ragged_col(preds, pa.float32())
    for name, col in (extra_columns or {}).items():
        col = np.asarray(col)
        if name in cols or col.shape != (len(action),):
            raise InputError(name, [], f"extra column clashes with a contract column or is not "
                             f"[{len(action)}], got {col.shape}")
        cols[name] = pa.array(col)
    table = pa.table(cols).replace_schema_metadata({META_KEY: meta.to_json().encode()})
    _atomic_write_table(table, path, row_group_size)


def write_requests(path: str, meta: LogMeta, *, request_id: np.ndarray, context: np.ndarray,
                   preds: list, candidate_ids: list | None = None,
                   context_ids: np.ndarray | None = None, row_group_size: int = 65536) -> None:
    """Write a request set atomically. preds: list of f32[N_b, K] (or None / empty for no
    candidates) or a dense f32[B, N, K]; candidate_ids: optional list of i64[N_b] or i64[B, N].
    Raises InputError naming the rows of a non-finite context."""
    context = np.asarray(context, np.float32)
    checks.check_finite("context", context)
    cols = {"request_id": pa.array(np.asarray(request_id, np.int64)),
            "context": _list_col(context, pa.float32()),
            "preds": _ragged_col(preds, pa.float32())}
    if isinstance(candidate_ids, np.ndarray) and candidate_ids.ndim == 2:
        cols["candidate_ids"] = _list_col(candidate_ids.astype(np.int64), pa.int64())
    elif candidate_ids is not None:
        cols["candidate_ids"] = pa.array([None if c is None else np.asarray(c).tolist()
                                          for c in candidate_ids], type=pa.list_(pa.int64()))
    if context_ids is not None:
        cols["context_ids"] = _list_col(np.asarray(context_ids, np.int64), pa.int64())
    table = pa.table(cols).replace_schema_metadata({META_KEY: meta.to_json().encode()})
    _atomic_write_table(table, path, row_group_size)


def split_share(request_id: np.ndarray, share: float, seed: int = 0) -> np.ndarray:
    """bool[n]: True for rows in the second part of a deterministic split by request_id.

    A row goes to part two when a 64-bit multiplicative hash of (request_id, seed) falls below
    ``share`` of the hash range, so the split depends only on the ids, never on row order.
    Raises InputError("share") unless 0 < share < 1.
    """
    if not 0.0 < share < 1.0:
        raise InputError("share", [], f"must be in (0, 1), got {share}")
    with np.errstate(over="ignore"):
        h = (np.asarray(request_id, np.uint64) + np.uint64(seed)) * np.uint64(0x9E3779B97F4A7C15)
        h ^= h >> np.uint64(29)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(32)
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53) < share


def split_log(path: str, out_a: str, out_b: str, share: float = 0.5, seed: int = 0) -> tuple[int, int]:
    """Split a log (every column and the metadata kept) into two files by ``split_share`` of the
    request ids: ``share`` of the rows go to ``out_b``. Both files are written atomically.
    Returns the two row counts. Use it to keep a reward model (training) and the rows it
    corrects (off-policy evaluation) apart. Raises InputError, before writing anything, when
    ``out_a``, ``out_b`` and ``path`` are not three different files."""
    checks.check_distinct_paths({"out_a": out_a, "out_b": out_b}, {"path": path})
    table = pq.read_table(path)
    to_b = split_share(table["request_id"].to_numpy(), share, seed)
    rg = max(1, pq.ParquetFile(path).metadata.row_group(0).num_rows) if table.num_rows else 65536
    a, b = table.filter(pa.array(~to_b)), table.filter(pa.array(to_b))
    for t, out in ((a, out_a), (b, out_b)):
        _atomic_write_table(t.replace_schema_metadata(table.schema.metadata), out, rg)
    return a.num_rows, b.num_rows
