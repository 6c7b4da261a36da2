"""Batch scoring of a request-set Parquet file with an operating policy (``puts-jax score``).

Streams the request set in record batches (never the whole table), pads each batch to a few
bucket sizes (``engine.Scorer``), runs the fused serve pass and appends the rows to a Parquet
writer. The output (DESIGN.md section 4, scored output) has every input row exactly once, in
input order: request_id, action, weights list<f32>[K], topk_index list<i32>, topk_candidate_id
list<i64>, topk_score list<f32> (fewer than k entries where a request has fewer real, finite
candidates; empty for requests without candidates). The file appears atomically at the end:
rows go to ``.tmp-<name>-<host>-<pid>-*.parquet`` beside it, renamed into place; a run killed
outright (SIGKILL, the OOM killer) leaves that temp file, and the next run on the same output
removes it.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from puts_jax import checks, engine, model_io, policy, staging
from puts_jax.action_set import default_mode
from puts_jax.checks import InputError
from puts_jax.config import ScoringConfig
from puts_jax.data import logs
from puts_jax.types import ServeOutput

SCHEMA = pa.schema([("request_id", pa.int64()), ("action", pa.int32()),
                    ("weights", pa.list_(pa.float32())), ("topk_index", pa.list_(pa.int32())),
                    ("topk_candidate_id", pa.list_(pa.int64())),
                    ("topk_score", pa.list_(pa.float32()))])


def _ragged(values: np.ndarray, keep: np.ndarray, dtype) -> pa.Array:
    """Rows of ``values[b, :]`` restricted to ``keep[b, :]`` (a prefix: top-k is best-first)."""
    lengths = keep.sum(1)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values[keep], type=dtype))


def output_table(request_id: np.ndarray, out: ServeOutput, weights_AxK: np.ndarray,
                 candidate_ids: np.ndarray) -> pa.Table:
    """Scored rows for one chunk. candidate_ids: i64[b, n] of the chunk (-1 at padding)."""
    keep = out.topk_index >= 0
    idx = np.where(keep, out.topk_index, 0)
    cand = np.take_along_axis(candidate_ids, idx, axis=1)
    W = weights_AxK[out.action]
    K = W.shape[1]
    w_col = pa.ListArray.from_arrays(pa.array(np.arange(len(W) + 1, dtype=np.int32) * K),
                                     pa.array(W.reshape(-1), type=pa.float32()))
    return pa.table([pa.array(request_id, pa.int64()), pa.array(out.action, pa.int32()), w_col,
                     _ragged(out.topk_index, keep, pa.int32()), _ragged(cand, keep, pa.int64()),
                     _ragged(out.topk_score, keep, pa.float32())], schema=SCHEMA)


def _check_compatible(meta: logs.LogMeta, op: policy.OperatingPolicy, path: str) -> None:
    want, got = op.action_set.objective_names, meta.action_set.objective_names
    if tuple(want) != tuple(got):
        raise InputError("preds", [], f"{path} has ranker outcomes {list(got)}; the policy "
                                      f"{op.version} weighs {list(want)}")


def _temp_prefix(out_path: str) -> str:
    """Prefix of this process's temp file for ``out_path``: ``.tmp-<name>-<host>-<pid>-``."""
    host = re.sub(r"[^\w.]", "_", socket.gethostname())
    return f".tmp-{os.path.basename(out_path)}-{host}-{os.getpid()}-"


def remove_stale_temps(out_path: str) -> list[str]:
    """Remove temp files that an earlier score run on this host left next to ``out_path`` when
    it was killed (SIGKILL, e.g. the OOM killer: no cleanup runs): files named like
    ``_temp_prefix`` whose process no longer exists. Files of live runs, of other hosts and of
    any other name are kept. Returns the removed paths."""
    folder = os.path.dirname(os.path.abspath(out_path))
    mine = re.escape(_temp_prefix(out_path).rsplit("-", 2)[0])  # without "<pid>-"
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        m = re.fullmatch(mine + r"-(\d+)-\w+\.parquet", name)
        if m is None or _alive(int(m.group(1))):
            continue
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(folder, name))
            removed.append(os.path.join(folder, name))
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by another user
        return True
    return True


def _open_temp(out_path: str) -> tuple[str, list[str]]:
    """Create the temp file the output is written to (renamed into place at the end) and the
    missing folders above it; returns (temp path, the folders made, deepest first: removed
    again when the run fails). An unwritable folder is an InputError naming ``out_path``, not
    the temp name."""
    folder = os.path.dirname(os.path.abspath(out_path))
    made = []
    try:
        made = staging.make_folders(folder)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=_temp_prefix(out_path), suffix=".parquet")
    except InputError as e:  # a parent of the output is a file
        raise InputError("out_path", [], e.msg) from None
    except OSError as e:
        staging.remove_made(made)
        raise InputError("out_path", [], f"cannot create a file in {folder} "
                                         f"({e.strerror or e}); nothing written") from None
    os.chmod(tmp, default_mode())
    os.close(fd)
    return tmp, made


def score_file(registry: str, requests_path: str, out_path: str, chunk_rows: int = 8192,
               top_k: int = 10, version: str | None = None, progress: bool = True) -> dict:
    """Score ``requests_path`` with the registry's CURRENT (or ``version``) policy.

    Returns {"rows", "no_candidates", "nonfinite_preds", "fallback_rows", "seconds",
    "compile_seconds", "rows_per_second", "version", "stale_temps_removed"}: ``seconds`` is the
    whole run, ``compile_seconds`` the part spent compiling the serve pass (once per batch
    shape; the first run on a machine also builds the native kernel), ``rows_per_second`` the
    rate without it (rows / (seconds - compile_seconds)). Memory does not grow with ``top_k``:
    at most the candidate bucket is ranked and held per row. Raises InputError naming the column
    and row on bad input, and before anything is written when ``out_path`` is
    ``requests_path``; on any error the output path is left untouched (the temp file and the
    folders made for it are removed; a temp file left by a killed run is removed by the next
    run, ``remove_stale_temps``).
    ``progress``: a tqdm bar on stderr while scoring, drawn only when stderr is a terminal and
    cleared at the end (the caller prints the summary).
    """
    checks.check_distinct_paths({"out_path": out_path}, {"requests_path": requests_path})
    op = policy.load(registry, version)
    meta = logs.read_meta(requests_path)
    _check_compatible(meta, op, requests_path)
    # one set of parameters for the whole run: built into the compiled pass as constants
    scorer = engine.Scorer(op.model, op.action_set.weights, ScoringConfig(top_k=top_k),
                           params_as_constants=True)
    total = pq.ParquetFile(requests_path).metadata.num_rows
    stale = remove_stale_temps(out_path)
    tmp, made = _open_temp(out_path)
    counts = dict(rows=0, no_candidates=0, nonfinite_preds=0, fallback_rows=0)
    t0 = time.perf_counter()
    try:
        # disable=None: tqdm draws only on a terminal; into a log or pipe each redraw would be
        # one more copy of the bar (the summary line says the same)
        with pq.ParquetWriter(tmp, SCHEMA) as writer, tqdm(total=total, unit="req",
                                                           disable=None if progress else True,
                                                           leave=False) as bar:
            widths = model_io.model_widths(op.model)
            for chunk in logs.iter_request_chunks(requests_path, chunk_rows, **widths):
                out = scorer.score(op.lam, chunk.batch)
                writer.write_table(output_table(chunk.request_id, out, op.action_set.weights,
                                                chunk.candidate_ids))
                counts["rows"] += len(chunk.request_id)
                counts["no_candidates"] += chunk.n_empty + chunk.n_null
                counts["nonfinite_preds"] += int(out.n_nonfinite.sum())
                counts["fallback_rows"] += int(out.q_fallback.sum())
                bar.update(len(chunk.request_id))
        os.replace(tmp, out_path)
    except BaseException:  # nothing of the output is left: no temp file, no folder made
        if os.path.exists(tmp):
            os.unlink(tmp)
        staging.remove_made(made)
        raise
    secs = time.perf_counter() - t0
    steady = max(secs - scorer.compile_seconds, 1e-9)
    return {**counts, "seconds": secs, "compile_seconds": scorer.compile_seconds,
            "rows_per_second": counts["rows"] / steady, "version": op.version,
            "stale_temps_removed": stale}
