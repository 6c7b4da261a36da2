"""Selection free of the winner's curse: the evaluation log split into a *select* half and a
*report* half.

Choosing the best of many noisy estimates and quoting that same estimate overstates the chosen
policy (the winner's curse: the maximum of estimates is biased upward even when each one is
unbiased). ``puts-jax sweep`` (``sweep_job.run_sweep(halves=True)``) therefore also estimates every
lambda point and baseline on each half of the log, and ``sweep_job.select`` chooses on the select
half and publishes the report half's estimate and interval of the chosen point: the report half
played no part in the choice, so given the choice its estimate is as unbiased as any single
policy's (checked on simulated logs in ``tests/test_halves.py``).

Split rule: a row is in the report half when the top bit of splitmix64(request_id) (Steele, Lea
and Flood 2014; the finalizer of ``java.util.SplittableRandom``) is 1, else in the select half. It
depends only on the request id, so it is the same for any chunking or row order of the log, all
rows of one request (slot-level logs such as the Open Bandit Dataset) fall in the same half, and
about half of the requests fall in each.

Each half is streamed on its own (``HalfChunks``): its rows, compacted and re-chunked to full
chunks, with the on-policy reward sums of the half gathered on the way (the logging policy's value).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from puts_jax.checks import InputError
from puts_jax.types import LoggedBatch

HALF_NAMES = ("select", "report")  # half index 0, 1
RULE = ("a row is in the report half when the top bit of splitmix64(request_id) is 1, else in "
        "the select half; the lambda is chosen on the select half and the report half's estimate "
        "is published")

_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def splitmix64(x) -> np.ndarray:
    """u64 splitmix64 of each value of ``x`` (i64/u64 array): x + golden gamma, then the
    xor-shift-multiply finalizer (wrapping 64-bit arithmetic)."""
    z = np.asarray(x).astype(np.uint64)
    with np.errstate(over="ignore"):
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return (z ^ (z >> np.uint64(31))) & _M64


def half_of(request_id) -> np.ndarray:
    """i8[b]: 0 (select half) or 1 (report half) for each request id (module docstring)."""
    return (splitmix64(np.asarray(request_id, np.int64)) >> np.uint64(63)).astype(np.int8)


def _concat(parts: list[LoggedBatch]) -> LoggedBatch:
    if len(parts) == 1:
        return parts[0]
    return LoggedBatch(*(None if getattr(parts[0], f) is None
                         else np.concatenate([getattr(p, f) for p in parts])
                         for f in LoggedBatch._fields))


class HalfChunks:
    """The rows of one half of a streamed log, as ``(row_offset, request_id, LoggedBatch)`` chunks
    of ``chunk_rows`` rows (the last may be shorter; offsets count the half's rows).

    ``chunks``: a callable returning a fresh iterator of ``(row_offset, request_id, LoggedBatch)``
    (e.g. ``lambda: logs.iter_log_chunks(path, chunk_rows)``). After a full iteration, ``n``,
    ``sum_r`` f64[J] and ``sum_r2`` f64[J] hold the half's on-policy reward sums.
    """

    def __init__(self, chunks, half: int, chunk_rows: int):
        if half not in (0, 1):
            raise InputError("half", [], f"0 (select) or 1 (report), got {half}")
        self.chunks, self.half, self.chunk_rows = chunks, half, int(chunk_rows)
        self.n, self.sum_r, self.sum_r2 = 0, 0.0, 0.0

    def _rows(self) -> Iterator[tuple[np.ndarray, LoggedBatch]]:
        for _, rid, lb in self.chunks():
            keep = half_of(rid) == self.half
            if lb.valid is not None:
                keep &= np.asarray(lb.valid, bool)
            if keep.any():
                yield rid[keep], LoggedBatch(*(None if x is None else np.asarray(x)[keep]
                                               for x in lb))

    def __iter__(self) -> Iterator[tuple[int, np.ndarray, LoggedBatch]]:
        self.n, self.sum_r, self.sum_r2 = 0, 0.0, 0.0
        buf, size, offset = [], 0, 0
        for rid, lb in self._rows():
            r = np.asarray(lb.rewards, np.float64)
            self.n, self.sum_r, self.sum_r2 = self.n + len(r), self.sum_r + r.sum(0), \
                self.sum_r2 + (r * r).sum(0)
            buf.append((rid, lb))
            size += len(rid)
            while size >= self.chunk_rows:
                rid_all = np.concatenate([b[0] for b in buf])
                lb_all = _concat([b[1] for b in buf])
                k = self.chunk_rows
                yield offset, rid_all[:k], LoggedBatch(*(None if x is None else x[:k]
                                                         for x in lb_all))
                offset += k
                rest = LoggedBatch(*(None if x is None else x[k:] for x in lb_all))
                buf, size = ([(rid_all[k:], rest)] if size > k else []), size - k
        if size:
            yield offset, np.concatenate([b[0] for b in buf]), _concat([b[1] for b in buf])
        elif offset == 0:
            raise InputError("halves", [], f"the {HALF_NAMES[self.half]} half has no rows "
                             "(a split needs requests in both halves)")


def _json(a) -> list:
    a = np.asarray(a, np.float64)
    return np.where(np.isfinite(a), a, None).tolist()


def block(pe) -> dict:
    """JSON-ready estimates of one set of policies (a ``report.PolicyEstimates``): names, n,
    matched, ess and every estimator's value / lo / hi (non-finite -> null)."""
    return {"names": list(pe.names), "n": np.asarray(pe.n).astype(int).tolist(),
            "matched": np.asarray(pe.matched).astype(int).tolist(), "ess": _json(pe.ess),
            "estimators": {e: {q: _json(b[q]) for q in ("value", "lo", "hi")}
                           for e, b in pe.estimates.items()}}


def estimates_of(doc: dict, half: str, primary: str, baseline: str) -> tuple[dict, dict, int]:
    """(points' primary estimates {value, lo, hi}, the baseline's, rows) of one half of a frontier
    document's ``halves`` block. Raises InputError naming what is missing."""
    h = doc["halves"][half]
    if primary not in h["points"]["estimators"]:
        raise InputError(f"halves.{half}.points.estimators", [], f"lacks '{primary}'")
    if baseline not in h["baselines"]:
        raise InputError(f"halves.{half}.baselines", [], f"lacks '{baseline}'")
    return (h["points"]["estimators"][primary], h["baselines"][baseline]["estimators"][primary],
            int(h["rows"]))

