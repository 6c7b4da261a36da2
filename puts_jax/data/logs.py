"""Streaming readers of exploration logs and request sets (DESIGN.md section 4).

Readers stream record batches (``iter_*``) so nothing needs the whole table in memory, and
validate each chunk with errors that name the column and the absolute row. The contract and its
checks live in ``log_schema``, the writers in ``log_writer``; both are re-exported here, so
``from puts_jax.data import logs`` stays the one import for log I/O.
"""

from __future__ import annotations

from typing import Iterator, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from puts_jax import checks
from puts_jax.checks import InputError
from puts_jax.data.log_schema import (LOG_COLUMNS, OUTSIDE_ACTION, REQUEST_COLUMNS, LogMeta,
                                     check_columns, logging_probs, read_meta, validate_logged)
from puts_jax.data.log_writer import (SPLIT_STAGING, recover_split, split_log, split_share,
                                      write_log, write_requests)
from puts_jax.types import LoggedBatch, RequestBatch

__all__ = ["InputError", "OUTSIDE_ACTION", "LogMeta", "RequestChunk", "check_request_ids",
           "iter_log_chunks", "iter_request_chunks", "logging_probs", "read_log", "read_meta",
           "SPLIT_STAGING", "recover_split", "split_log", "split_share", "write_log",
           "write_requests"]


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


def _check_model_width(t: pa.Table, field: str, width: int | None) -> None:
    """InputError(field) when every row of the list column ``t[field]`` has one length other
    than the model's ``width`` (``context``: D features, ``context_ids``: C id columns): a file
    made for another model, said once with both widths instead of listing every row. Rows of
    mixed lengths (or null rows) are left to ``_fixed_width``, which names them."""
    if width is None or field not in t.column_names or not t.num_rows:
        return
    lengths = np.asarray(t[field].combine_chunks().value_lengths().fill_null(-1))
    n = int(lengths[0])
    if n != width and n >= 0 and (lengths == n).all():
        what = (f"{n} features a row; the model reads {width}" if field == "context" else
                f"{n} ids a row; the model embeds {width} id column{'s' * (width != 1)}")
        raise InputError(field, [], what)


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
    ``len(cfg.id_vocab_sizes)``); a file whose rows all have another width is rejected with
    both widths ("context: 7 features a row; the model reads 4"), rows of mixed widths by name.
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
        offset, total = 0, pf.metadata.num_rows
        for rb in pf.iter_batches(batch_size=chunk_rows, columns=columns):
            t = pa.Table.from_batches([rb])
            if offset == 0:  # the widths given are the model's: a file for another model
                _check_model_width(t, "context", context_dim)
                _check_model_width(t, "context_ids", n_context_ids)
            try:
                rid, lb = _logged_from_table(t, meta, offset, context_dim, n_context_ids,
                                             id_vocab_sizes)
            except InputError as err:
                raise _in_chunk(err, offset, t.num_rows, total) from None
            # every later chunk must have the first chunk's widths (one file, one D)
            context_dim = lb.context.shape[1]
            if lb.context_ids is not None:
                n_context_ids = lb.context_ids.shape[1]
            yield offset, rid, lb
            offset += t.num_rows
    except InputError as err:
        raise err.in_source(path) from err


def _in_chunk(err: InputError, offset: int, n: int, total: int) -> InputError:
    """``err`` of the chunk of rows [offset, offset + n) of a ``total``-row log: where the
    message counts more bad rows than it lists ("(+16374 more)") and the log has more rows than
    the chunk, it says that the rows (file row numbers) and their count are this chunk's, the
    first with any, and that later rows were not checked."""
    if len(err.rows) <= checks._MAX_ROWS_SHOWN or n >= total:
        return err
    return InputError(err.field, err.rows, f"{err.msg} (in rows {offset:,} to {offset + n - 1:,}"
                      f" of {total:,}: rows are checked in chunks of {n:,}, and checking stops "
                      "at the first chunk with bad rows)", err.source)


def read_log(path: str, id_vocab_sizes: tuple[int, ...] | None = None
             ) -> tuple[LogMeta, np.ndarray, LoggedBatch]:
    """Whole log in memory: (meta, request_id, LoggedBatch). For training-sized logs only.
    ``id_vocab_sizes``: the vocabularies of the model the rows are for (``iter_log_chunks``).
    Raises InputError naming ``path`` as ``iter_log_chunks`` does, or when the log has no rows."""
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
        if offset == 0:  # the widths given are the model's: a file for another model
            _check_model_width(t, "context", context_dim)
            _check_model_width(t, "context_ids", n_context_ids)
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
