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

from puts_jax import checks, staging
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


MAX_SPLIT_SEED = 2**64 - 1  # split_share adds the seed to the ids as an unsigned 64-bit integer


def split_share(request_id: np.ndarray, share: float, seed: int = 0) -> np.ndarray:
    """bool[n]: True for rows in the second part of a deterministic split by request_id.

    A row goes to part two when a 64-bit multiplicative hash of (request_id, seed) falls below
    ``share`` of the hash range, so the split depends only on the ids, never on row order.
    Raises InputError("share") unless 0 < share < 1, InputError("seed") unless
    0 <= seed <= ``MAX_SPLIT_SEED`` (the hash works in unsigned 64-bit integers).
    """
    if not 0.0 < share < 1.0:
        raise InputError("share", [], f"must be in (0, 1), got {share}")
    _check_split_seed(seed)
    with np.errstate(over="ignore"):
        h = (np.asarray(request_id, np.uint64) + np.uint64(seed)) * np.uint64(0x9E3779B97F4A7C15)
        h ^= h >> np.uint64(29)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(32)
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53) < share


def _check_split_seed(seed) -> None:
    if not isinstance(seed, (int, np.integer)) or not 0 <= seed <= MAX_SPLIT_SEED:
        raise InputError("seed", [], f"must be an integer in [0, 2**64 - 1], got {seed}")


SPLIT_STAGING = ".split-staging"  # staging folder of ``split_log`` inside the pair's folder


def split_target(folder: str) -> staging.Target:
    """Where ``split_log`` publishes a pair into ``folder`` (its staging folder and wording)."""
    return staging.Target(folder, SPLIT_STAGING, "the split pair",
                          f"the next 'puts-jax data split' into {folder}")


def recover_split(folder: str) -> str | None:
    """Settle the pair a killed ``split_log`` left in ``folder`` (``staging.recover``): a pair
    whose writing finished is moved in ("completed"), a partial one deleted ("removed");
    None when there is none. Raises OSError when a move fails (the message names the file)."""
    return staging.recover(split_target(folder))


def _check_split_outputs(path: str, out_a: str, out_b: str) -> str:
    """The pair's folder; InputError naming ``out_a`` / ``out_b`` (before anything is read or
    written) when they are not two new file names beside each other, apart from ``path``."""
    checks.check_distinct_paths({"out_a": out_a, "out_b": out_b}, {"path": path})
    for name, out in (("out_a", out_a), ("out_b", out_b)):
        if not out:
            raise InputError(name, [], "an empty path; give a file path (nothing written)")
        if os.path.isdir(out):
            raise InputError(name, [], f"{out} is a directory; give a file path (nothing written)")
    folder = os.path.dirname(os.path.abspath(out_a))
    if os.path.dirname(os.path.abspath(out_b)) != folder:
        raise InputError("out_b", [], f"{out_b} is not in the folder of {out_a} ({folder}): the "
                         "two files are published together through one staging folder there, "
                         "so that a new half never sits beside an old one (nothing written)")
    return folder


def split_log(path: str, out_a: str, out_b: str, share: float = 0.5,
              seed: int = 0) -> tuple[int, int]:
    """Split a log (every column and the metadata kept) into two files by ``split_share`` of the
    request ids: ``share`` of the rows go to ``out_b``. Returns the two row counts. Use it to
    keep a reward model (training) and the rows it corrects (off-policy evaluation) apart.

    The pair is published all or nothing (``puts_jax.staging``): both files are written and
    fsynced in ``<folder>/.split-staging``, committed, then renamed into the folder. After an
    error or Ctrl-C before the commit the old files stay as they were and nothing new is left.
    A process killed outright (SIGKILL, power loss) can stop between the two renames, leaving
    the new ``out_a`` beside the old ``out_b`` with the new one waiting in the staging folder;
    the next ``split_log`` into the folder, and ``puts-jax`` commands reading a ``--logs`` there,
    move it in first (``recover_split``); a reader outside ``puts-jax`` (e.g. ``python -m
    train``) does not. So ``out_a`` and ``out_b`` must be in the same folder.
    Raises InputError, before anything is read or written, when ``out_a``, ``out_b`` and
    ``path`` are not three different files, an output is a directory, the outputs are in
    different folders, or ``share`` or ``seed`` is out of range.
    """
    folder = _check_split_outputs(path, out_a, out_b)
    if not 0.0 < share < 1.0:
        raise InputError("share", [], f"must be in (0, 1), got {share}")
    _check_split_seed(seed)
    table = pq.read_table(path)
    to_b = split_share(table["request_id"].to_numpy(), share, seed)
    rg = max(1, pq.ParquetFile(path).metadata.row_group(0).num_rows) if table.num_rows else 65536
    a, b = table.filter(pa.array(~to_b)), table.filter(pa.array(to_b))
    names = [os.path.basename(out_a), os.path.basename(out_b)]

    def write(stage: str) -> None:
        for t, name in ((a, names[0]), (b, names[1])):
            _atomic_write_table(t.replace_schema_metadata(table.schema.metadata),
                                os.path.join(stage, name), rg)
    staging.publish(split_target(folder), names, write)
    return a.num_rows, b.num_rows
