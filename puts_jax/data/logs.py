"""Parquet contracts for exploration logs and request sets (DESIGN.md section 4).

Exploration log, one row a request:
  request_id: i64, context: list<f32>[D], optional context_ids: list<i64>[C], action: i32,
  propensity: f64 in (0, 1], rewards: list<f32>[J], optional consistent: list<bool>[A],
  optional preds: list<list<f32>> (N_b x K, for slate matching).
Request set, one row a request:
  request_id: i64, context: list<f32>[D], optional context_ids, preds: list<list<f32>> (N_b x K,
  ragged; empty or null lists are requests without candidates), optional candidate_ids: list<i64>.
File metadata: schema key ``puts_jax`` holding JSON (``LogMeta``): the action set, outcome names
(K), reward names and kinds (J), the logging policy's description.

Readers stream record batches (``iter_*``) so nothing needs the whole table in memory, and
validate each chunk with errors that name the column and the absolute row.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from typing import Iterator, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from puts_jax import checks
from puts_jax.action_set import ActionSet, default_mode
from puts_jax.checks import InputError
from puts_jax.types import LoggedBatch, RequestBatch

META_KEY = b"puts_jax"
REWARD_KINDS = ("binary", "count", "real")
# A logged propensity must equal the declared logging policy's probability of the logged decision
# within this relative tolerance (room for 1/A rounded through float32, about 6e-8).
LOGGING_PROPENSITY_RTOL = 1e-6
# ``action`` value of a row whose logged decision matches no action of the action set (slot-level
# logs such as the Open Bandit Dataset); such a row needs ``consistent`` and it is all False there.
OUTSIDE_ACTION = -1


@dataclasses.dataclass(frozen=True)
class LogMeta:
    """File-level metadata of a log or request set.

    reward_kinds: per objective, "binary" (0/1: BCE, exact intervals), "count" or "real".
    logging_policy: free-form description, e.g. {"kind": "uniform"} or
      {"kind": "epsilon_greedy", "epsilon": 0.1, "production": 7}.
    """

    action_set: ActionSet
    reward_names: tuple[str, ...] = ()
    reward_kinds: tuple[str, ...] = ()
    logging_policy: dict = dataclasses.field(default_factory=dict)
    extra: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.reward_names) != len(self.reward_kinds):
            raise InputError("reward_kinds", [], f"{len(self.reward_kinds)} kinds for "
                             f"{len(self.reward_names)} reward names")
        bad = [k for k in self.reward_kinds if k not in REWARD_KINDS]
        if bad:
            raise InputError("reward_kinds", [], f"unknown kinds {bad}; use {REWARD_KINDS}")

    def to_json(self) -> str:
        return json.dumps({"action_set": self.action_set.to_dict(),
                           "reward_names": list(self.reward_names),
                           "reward_kinds": list(self.reward_kinds),
                           "logging_policy": self.logging_policy, "extra": self.extra})

    @classmethod
    def from_json(cls, text: str | bytes) -> "LogMeta":
        d = json.loads(text)
        return cls(ActionSet.from_dict(d["action_set"]), tuple(d["reward_names"]),
                   tuple(d["reward_kinds"]), d.get("logging_policy", {}), d.get("extra", {}))


def read_meta(path: str) -> LogMeta:
    """LogMeta of a puts_jax Parquet file. Raises InputError naming ``path`` when the key is
    missing or unreadable."""
    md = pq.read_schema(path).metadata or {}
    if META_KEY not in md:
        raise InputError("metadata", [], f"no '{META_KEY.decode()}' schema metadata", path)
    try:
        return LogMeta.from_json(md[META_KEY])
    except InputError as err:
        raise err.in_source(path) from err
    except (ValueError, KeyError, TypeError) as err:
        raise InputError("metadata", [], f"unreadable '{META_KEY.decode()}' schema metadata "
                         f"({type(err).__name__}: {err})", path) from err


# Columns of each file kind: name -> (required, accepted value kind, list depth). The readers
# convert within a kind only: a string column, or floats where ids or indices belong, is an error
# naming the column, never a silent cast.
_KINDS = {"integer": pa.types.is_integer, "floating-point": pa.types.is_floating,
          "numeric": lambda t: pa.types.is_integer(t) or pa.types.is_floating(t),
          "boolean": pa.types.is_boolean}
LOG_COLUMNS = {"request_id": (True, "integer", 0), "context": (True, "floating-point", 1),
               "action": (True, "integer", 0), "propensity": (True, "floating-point", 0),
               "rewards": (True, "numeric", 1), "context_ids": (False, "integer", 1),
               "consistent": (False, "boolean", 1), "preds": (False, "numeric", 2)}
REQUEST_COLUMNS = {"request_id": (True, "integer", 0), "context": (True, "floating-point", 1),
                   "preds": (True, "numeric", 2), "context_ids": (False, "integer", 1),
                   "candidate_ids": (False, "integer", 1)}


def check_columns(schema: pa.Schema, spec: dict) -> None:
    """Reject a missing required column or a column of the wrong Arrow type (``spec``:
    ``LOG_COLUMNS`` or ``REQUEST_COLUMNS``). Raises InputError naming the column."""
    for name, (required, kind, depth) in spec.items():
        if name not in schema.names:
            if required:
                raise InputError(name, [], f"missing column (needed: "
                                 f"{[c for c, v in spec.items() if v[0]]})")
            continue
        want = "list<" * depth + kind + ">" * depth
        t = schema.field(name).type
        for _ in range(depth):
            if not (pa.types.is_list(t) or pa.types.is_large_list(t)):
                raise InputError(name, [], f"expected {want}, got {schema.field(name).type}")
            t = t.value_type
        if not _KINDS[kind](t):
            raise InputError(name, [], f"expected {want}, got {schema.field(name).type}")


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


def check_reward_kinds(rewards: np.ndarray, meta: LogMeta, row_offset: int = 0) -> None:
    """Rewards f[B, J] against their declared kinds (``meta.reward_kinds``): a "binary"
    objective's rewards are 0 or 1, a "count" objective's non-negative whole numbers; "real"
    ones any finite value. Raises InputError("rewards") naming the objective and the rows."""
    for j, (name, kind) in enumerate(zip(meta.reward_names, meta.reward_kinds)):
        r = rewards[:, j]
        if kind == "binary":
            bad, what = (r != 0) & (r != 1), "must be 0 or 1"
        elif kind == "count":
            bad, what = (r < 0) | (r != np.floor(r)), "must be a non-negative whole number"
        else:
            continue
        checks.raise_if(bad, "rewards", f"objective {j} ({name}) is declared {kind!r}: {what}",
                        row_offset)


def logging_probs(meta: LogMeta) -> np.ndarray | None:
    """f64[A]: the declared logging policy's distribution over the action set, for the kinds that
    define one: {"kind": "uniform"} (1/A each) and {"kind": "epsilon_greedy", "epsilon": e,
    "production": p} (1 - e + e/A for p, e/A for the others; p defaults to the action set's
    production index). None for any other kind (e.g. OBD's per-slot logging), whose propensities
    are not checked against it. Raises InputError("logging_policy") for a malformed description.
    """
    desc, A = meta.logging_policy or {}, meta.action_set.n_actions
    if desc.get("kind") == "uniform":
        return np.full(A, 1.0 / A)
    if desc.get("kind") != "epsilon_greedy":
        return None
    eps, prod = desc.get("epsilon"), desc.get("production", meta.action_set.production)
    if not isinstance(eps, (int, float)) or not 0.0 < eps <= 1.0:
        raise InputError("logging_policy", [], f"epsilon_greedy needs epsilon in (0, 1], got {eps}")
    if not isinstance(prod, int) or not 0 <= prod < A:
        raise InputError("logging_policy", [], f"epsilon_greedy needs a production action in "
                         f"[0, {A}), got {prod}")
    p = np.full(A, eps / A)
    p[prod] += 1.0 - eps
    return p


def check_logging_propensity(propensity: np.ndarray, consistent: np.ndarray, meta: LogMeta,
                             row_offset: int = 0) -> None:
    """Logged propensities f64[B] against the declared logging policy (``logging_probs``): a row
    whose decision is consistent with the actions ``consistent`` bool[B, A] was logged with
    probability sum_a probs[a] over them (1/A for one action under uniform logging; the slate's
    probability under slate matching). Rows consistent with no action, and policies that define
    no distribution over the action set, are not checked. Raises InputError("propensity") naming
    the rows that differ by more than LOGGING_PROPENSITY_RTOL."""
    probs = logging_probs(meta)
    if probs is None:
        return
    expected = np.where(consistent, probs[None, :], 0.0).sum(1)
    bad = consistent.any(1) & ~np.isclose(propensity, expected, rtol=LOGGING_PROPENSITY_RTOL,
                                          atol=0.0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        checks.raise_if(bad, "propensity", f"contradicts the declared logging policy "
                        f"{json.dumps(meta.logging_policy)} (e.g. {propensity[i]:.6g} where it "
                        f"gives the logged decision {expected[i]:.6g})", row_offset)


def validate_logged(lb: LoggedBatch, meta: LogMeta, row_offset: int = 0) -> None:
    """Check a LoggedBatch (numpy) against the contract and ``meta`` (A actions, J reward names
    and kinds: ``check_reward_kinds``; propensities against the declared logging policy:
    ``check_logging_propensity``); errors name field and absolute rows."""
    n_actions, n_rewards = meta.action_set.n_actions, len(meta.reward_names) or None
    if lb.context.ndim != 2:
        raise InputError("context", [], f"expected f32[B, D], got {lb.context.shape}")
    checks.check_finite("context", lb.context, row_offset)
    outside = lb.action == OUTSIDE_ACTION
    checks.check_index("action", np.where(outside, 0, lb.action), n_actions, row_offset)
    if lb.consistent is None:
        checks.raise_if(outside, "action", f"{OUTSIDE_ACTION} (outside the action set) needs the "
                        "consistent column", row_offset)
    checks.check_propensity(lb.propensity, row_offset=row_offset)
    if lb.rewards.ndim != 2 or (n_rewards is not None and lb.rewards.shape[1] != n_rewards):
        raise InputError("rewards", [], f"expected f32[B, {n_rewards}], got {lb.rewards.shape}")
    checks.check_finite("rewards", lb.rewards, row_offset)
    check_reward_kinds(lb.rewards, meta, row_offset)
    if lb.consistent is not None:
        c = lb.consistent
        if c.shape != (len(lb.action), n_actions):
            raise InputError("consistent", [], f"expected bool[B, {n_actions}], got {c.shape}")
        logged = c[np.arange(len(lb.action)), np.where(outside, 0, lb.action)]
        checks.raise_if(~outside & ~logged, "consistent",
                        "the logged action must be consistent with itself", row_offset)
        checks.raise_if(outside & c.any(1), "consistent",
                        f"a row with action {OUTSIDE_ACTION} must have no consistent action",
                        row_offset)
    consistent = lb.consistent if lb.consistent is not None else (
        lb.action[:, None] == np.arange(n_actions)[None, :])
    check_logging_propensity(lb.propensity, consistent, meta, row_offset)


def _scalar(t: pa.Table, field: str, dtype, row_offset: int) -> np.ndarray:
    """A scalar column as numpy ``dtype``; null entries raise InputError naming their rows."""
    col = t[field]
    checks.raise_if(col.is_null().to_numpy(), field, "null value", row_offset)
    return np.asarray(col.to_numpy(), dtype)


def _fixed_width(col: pa.ChunkedArray | pa.Array, field: str, dtype, row_offset: int,
                 width: int | None = None) -> np.ndarray:
    """A list<...> column of equal-length rows as a 2-D numpy array; null lists, null entries
    inside a list and width errors name rows."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    checks.raise_if(np.asarray(arr.is_null()), field, "null list", row_offset)
    lengths = np.asarray(arr.value_lengths().fill_null(0))
    w = int(lengths[0]) if width is None and len(lengths) else width
    checks.check_width(field, lengths, w, row_offset)
    flat = arr.flatten()
    if flat.null_count:
        inner_null = np.asarray(flat.is_null()).reshape(len(arr), w)
        checks.raise_if(inner_null, field, "null entry in the list", row_offset)
    vals = np.asarray(flat.to_numpy(zero_copy_only=False), dtype=dtype)
    return vals.reshape(len(arr), w)


def _context_ids(col: pa.ChunkedArray, row_offset: int, width: int | None,
                 vocab: tuple[int, ...] | None = None) -> np.ndarray:
    """``context_ids`` as i32[B, C]. Each id indexes a row of an embedding table (``QNetwork``:
    ``nnx.Embed``, no hashing or modulo), so ids below 0 or above the int32 range are rejected
    naming their rows, never wrapped by the cast: ``nnx.Embed`` would silently read a negative
    id from the end of its table and a too-large one as NaN. With ``vocab`` (the model's
    ``id_vocab_sizes``, one per column), an id of column c at or above ``vocab[c]`` is rejected
    too, naming the column and its rows (the id shown is the first such row's)."""
    ids = _fixed_width(col, "context_ids", None, row_offset, width)  # the file's integer type
    top = np.iinfo(np.int32).max
    checks.raise_if((ids < 0) | (ids > top), "context_ids",
                    f"id outside [0, {top}] (embedding rows, read as int32)", row_offset)
    for c, v in enumerate(vocab or ()):
        over = ids[:, c] >= v
        if over.any():
            checks.raise_if(over, f"context_ids[:, {c}]", f"id {ids[np.argmax(over), c]} >= the "
                            f"model's vocabulary of {v} (embedding rows 0 to {v - 1})", row_offset)
    return ids.astype(np.int32)


def _check_ids_column(names: list[str], vocab: tuple[int, ...] | None) -> None:
    """A model that embeds context ids (``vocab`` given) needs the ``context_ids`` column."""
    if vocab is not None and "context_ids" not in names:
        raise InputError("context_ids", [], f"missing column: the model embeds "
                         f"{len(vocab)} id column{'s' * (len(vocab) > 1)} (vocabularies "
                         f"{list(vocab)})")


def _logged_from_table(t: pa.Table, meta: LogMeta, row_offset: int, context_dim: int | None = None,
                       n_context_ids: int | None = None,
                       id_vocab_sizes: tuple[int, ...] | None = None
                       ) -> tuple[np.ndarray, LoggedBatch]:
    A = meta.action_set.n_actions
    J = len(meta.reward_names) or None
    action = _scalar(t, "action", np.int64, row_offset)  # range-checked before the int32 cast
    consistent = None
    if "consistent" in t.column_names:
        consistent = _fixed_width(t["consistent"], "consistent", bool, row_offset, A)
    ids = None
    if "context_ids" in t.column_names:
        ids = _context_ids(t["context_ids"], row_offset, n_context_ids, id_vocab_sizes)
    lb = LoggedBatch(_fixed_width(t["context"], "context", np.float32, row_offset, context_dim),
                     action, _scalar(t, "propensity", np.float64, row_offset),
                     _fixed_width(t["rewards"], "rewards", np.float32, row_offset, J),
                     consistent, np.ones(len(action), bool), ids)
    validate_logged(lb, meta, row_offset)
    lb = lb._replace(action=action.astype(np.int32))
    if consistent is None:
        one_hot = np.zeros((len(action), A), bool)
        one_hot[np.arange(len(action)), action] = True
        lb = lb._replace(consistent=one_hot)
    return _scalar(t, "request_id", np.int64, row_offset), lb


def check_request_ids(path: str, batch_rows: int = 1 << 20) -> None:
    """Reject null or repeated request ids in a log file (one row a request, DESIGN.md section
    4), naming every row that holds a repeated id. One streamed pass over the request_id column,
    in constant memory while the ids increase (the simulator's and OBD's do); otherwise the
    whole column (8 bytes a row) is sorted. Raises InputError("request_id", rows)."""
    last, increasing, offset = None, True, 0
    for rb in pq.ParquetFile(path).iter_batches(batch_size=batch_rows, columns=["request_id"]):
        col = rb.column(0)
        checks.raise_if(col.is_null().to_numpy(zero_copy_only=False), "request_id",
                        "null value", offset)
        ids = col.to_numpy()
        if increasing and len(ids):
            increasing = bool((ids[1:] > ids[:-1]).all()) and (last is None or ids[0] > last)
            last = ids[-1]
        offset += len(ids)
    if not increasing:
        ids = pq.read_table(path, columns=["request_id"])["request_id"].to_numpy()
        checks.check_unique("request_id", ids, "request id")


def iter_log_chunks(path: str, chunk_rows: int = 65536, columns: list[str] | None = None,
                    context_dim: int | None = None, n_context_ids: int | None = None,
                    id_vocab_sizes: tuple[int, ...] | None = None
                    ) -> Iterator[tuple[int, np.ndarray, LoggedBatch]]:
    """Stream an exploration log: yields (row_offset, request_id i64[b], LoggedBatch numpy).

    ``context_dim`` / ``n_context_ids``: the widths the model reads (``QNetwork.context_dim``,
    ``len(cfg.id_vocab_sizes)``); rows of another width are rejected by name.
    ``id_vocab_sizes``: the model's vocabulary per id column (``cfg.id_vocab_sizes``; None: no
    model, no check); the ``context_ids`` column is then required, C = len(id_vocab_sizes)
    wide, and an id >= its column's vocabulary is rejected naming ``context_ids[:, c]`` and
    the rows (``nnx.Embed`` would read it as NaN). ``model_io.model_widths`` gives all three.

    ``consistent`` defaults to the one-hot of ``action``; propensity stays f64 on the host.
    ``preds`` (slate matching) is not part of a LoggedBatch and is not read unless ``columns``
    names it. Raises InputError naming ``path``, the column and the absolute bad rows (before any
    row is read: a missing column or one of the wrong type, ``LOG_COLUMNS``; null or repeated
    request ids, ``check_request_ids``).
    """
    meta = read_meta(path)
    pf = pq.ParquetFile(path)
    try:
        check_columns(pf.schema_arrow, LOG_COLUMNS)
        if columns is None:
            columns = [c for c in pf.schema_arrow.names if c != "preds"]
        _check_ids_column(columns, id_vocab_sizes)
        check_request_ids(path)
        if id_vocab_sizes is not None and n_context_ids is None:
            n_context_ids = len(id_vocab_sizes)
        offset = 0
        for rb in pf.iter_batches(batch_size=chunk_rows, columns=columns):
            t = pa.Table.from_batches([rb])
            rid, lb = _logged_from_table(t, meta, offset, context_dim, n_context_ids,
                                         id_vocab_sizes)
            # every later chunk must have the first chunk's widths (one file, one D)
            context_dim = lb.context.shape[1]
            if lb.context_ids is not None:
                n_context_ids = lb.context_ids.shape[1]
            yield offset, rid, lb
            offset += t.num_rows
    except InputError as err:
        raise err.in_source(path) from err


def read_log(path: str, id_vocab_sizes: tuple[int, ...] | None = None
             ) -> tuple[LogMeta, np.ndarray, LoggedBatch]:
    """Whole log in memory: (meta, request_id, LoggedBatch). For training-sized logs only.
    ``id_vocab_sizes``: the vocabularies of the model the rows are for (``iter_log_chunks``)."""
    meta = read_meta(path)
    parts = [(rid, lb) for _, rid, lb in iter_log_chunks(path, id_vocab_sizes=id_vocab_sizes)]
    if not parts:
        raise InputError("rows", [], "the log has no rows", path)
    rid = np.concatenate([p[0] for p in parts])
    fields = {}
    for name in LoggedBatch._fields:
        vals = [getattr(p[1], name) for p in parts]
        fields[name] = None if vals[0] is None else np.concatenate(vals)
    return meta, rid, LoggedBatch(**fields)


def write_requests(path: str, meta: LogMeta, *, request_id: np.ndarray, context: np.ndarray,
                   preds: list, candidate_ids: list | None = None,
                   context_ids: np.ndarray | None = None, row_group_size: int = 65536) -> None:
    """Write a request set atomically. preds: list of f32[N_b, K] (or None / empty for no
    candidates) or a dense f32[B, N, K]; candidate_ids: optional list of i64[N_b] or i64[B, N]."""
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


class RequestChunk(NamedTuple):
    """One streamed chunk of a request set (host numpy).

    request_id: i64[b]; batch: RequestBatch with preds f32[b, n, K] zero-padded and mask bool[b, n];
    candidate_ids: i64[b, n] (-1 at padding; the position when the file has no ids);
    n_empty / n_null: rows whose preds list was empty / null (no candidates: no recommendations).
    """

    row_offset: int
    request_id: np.ndarray
    batch: RequestBatch
    candidate_ids: np.ndarray
    n_empty: int
    n_null: int


def _pad_ragged(col: pa.Array, n_pad: int | None, K: int, row_offset: int):
    """list<list<f32>> -> (f32[b, n, K], bool[b, n], n_empty, n_null) with P10's semantics."""
    is_null = np.asarray(col.is_null())
    n_per = np.asarray(col.value_lengths().fill_null(0))
    n = int(n_pad if n_pad is not None else max(int(n_per.max(initial=0)), 1))
    checks.raise_if(n_per > n, "preds", f"more than {n} candidates", row_offset)
    inner = col.flatten()  # list<f32> per candidate, nulls skipped
    k_len = np.asarray(inner.value_lengths().fill_null(-1))
    wrong_k = k_len != K
    if wrong_k.any():
        owner = np.repeat(np.arange(len(col)), n_per)
        checks.raise_if(np.isin(np.arange(len(col)), owner[wrong_k]), "preds",
                        f"each candidate needs K = {K} predictions", row_offset)
    vals = np.asarray(inner.flatten().to_numpy(zero_copy_only=False), np.float32).reshape(-1, K)
    b = len(col)
    if b and (n_per == n).all():  # every row has n candidates: a view of Arrow's buffer
        return vals.reshape(b, n, K), np.ones((b, n), bool), 0, 0, n_per
    preds = np.zeros((b, n, K), np.float32)
    mask = np.arange(n)[None, :] < n_per[:, None]
    preds[mask] = vals
    n_empty = int(((n_per == 0) & ~is_null).sum())
    return preds, mask, n_empty, int(is_null.sum()), n_per


def iter_request_chunks(path: str, chunk_rows: int = 8192, n_pad: int | None = None,
                        context_dim: int | None = None, n_context_ids: int | None = None,
                        id_vocab_sizes: tuple[int, ...] | None = None) -> Iterator[RequestChunk]:
    """Stream a request set in record batches, padded per chunk to ``n_pad`` (or the chunk's
    longest list). Never reads the whole table. ``context_dim`` / ``n_context_ids``: the widths
    the model reads; rows of another width are rejected by name; ``id_vocab_sizes``: the model's
    vocabularies, as in ``iter_log_chunks``. Raises InputError naming ``path``, the column and
    the rows (a missing column or one of the wrong type first: ``REQUEST_COLUMNS``)."""
    meta = read_meta(path)
    pf = pq.ParquetFile(path)
    try:
        check_columns(pf.schema_arrow, REQUEST_COLUMNS)
        _check_ids_column(pf.schema_arrow.names, id_vocab_sizes)
        if id_vocab_sizes is not None and n_context_ids is None:
            n_context_ids = len(id_vocab_sizes)
        yield from _request_chunks(pf, meta.action_set.n_outcomes, chunk_rows, n_pad,
                                   context_dim, n_context_ids, id_vocab_sizes)
    except InputError as err:
        raise err.in_source(path) from err


def _request_chunks(pf: pq.ParquetFile, K: int, chunk_rows: int, n_pad: int | None,
                    context_dim: int | None = None, n_context_ids: int | None = None,
                    id_vocab_sizes: tuple[int, ...] | None = None) -> Iterator[RequestChunk]:
    offset = 0
    for rb in pf.iter_batches(batch_size=chunk_rows):
        t = pa.Table.from_batches([rb])
        ctx = _fixed_width(t["context"], "context", np.float32, offset, context_dim)
        context_dim = ctx.shape[1]  # later chunks must match the first (one file, one D)
        checks.check_finite("context", ctx, offset)
        preds, mask, n_empty, n_null, n_per = _pad_ragged(t["preds"].combine_chunks(), n_pad, K, offset)
        cand = np.where(mask, np.arange(mask.shape[1], dtype=np.int64)[None, :], np.int64(-1))
        if "candidate_ids" in t.column_names:
            ids_col = t["candidate_ids"].combine_chunks()
            ids_len = np.asarray(ids_col.value_lengths().fill_null(0))
            checks.raise_if(ids_len != n_per, "candidate_ids", "length differs from preds", offset)
            cand[mask] = np.asarray(ids_col.flatten().to_numpy(zero_copy_only=False), np.int64)
        ids = None
        if "context_ids" in t.column_names:
            ids = _context_ids(t["context_ids"], offset, n_context_ids, id_vocab_sizes)
            n_context_ids = ids.shape[1]
        batch = RequestBatch(ctx, preds, mask, np.ones(len(ctx), bool), ids)
        yield RequestChunk(offset, _scalar(t, "request_id", np.int64, offset), batch, cand,
                           n_empty, n_null)
        offset += t.num_rows


def split_share(request_id: np.ndarray, share: float, seed: int = 0) -> np.ndarray:
    """bool[n]: True for rows in the second part of a deterministic split by request_id.

    A row goes to part two when a 64-bit multiplicative hash of (request_id, seed) falls below
    ``share`` of the hash range, so the split depends only on the ids, never on row order.
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
