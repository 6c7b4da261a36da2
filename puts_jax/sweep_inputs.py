"""What ``puts-jax sweep`` checks about its log beyond the reader's row checks: whether training
saw its rows, and whether its rewards are too large for the float32 sums or dominated by one row.

Rows training saw. ``python -m train`` records, beside ``WORKDIR/inputs.json`` (each input
file's sha256), ``WORKDIR/training_rows.npz``: the sorted 64-bit keys (``row_keys``) of every row
of its ``--logs`` (fitted on) and ``--heldout`` (checkpoint-selected on), 8 bytes a row. A row's
key hashes its request id, logged action, context and context ids, so a log that *contains* the
training rows is found however it was made: the full log before a ``data split``, a
concatenation, a copy of the same rows in another order or Parquet layout. The key includes the
context, not the request id alone: independent logs may reuse request ids (two ``simulate`` runs
number their rows alike), and a row with another context is not one the model saw.
``LogWatch`` counts, while the sweep streams its log, the rows whose key is in the record
(``np.searchsorted`` into the sorted keys: memory is the record's 8 bytes a training row, the
sweep's log is never held); ``overlap_warnings`` says how many. A model without a record (saved
outside a train workdir, or trained before records existed) is not checked.

Rewards. The sweep's device sums are float32 (``EstimatorStats``: the largest is sum w^2 r^2,
with w <= 1 / propensity); ``LogWatch`` keeps in float64, per objective, Q = sum (r / p)^2 over
the rows seen so far and raises InputError naming the objective and the row of largest
|r| / p as soon as Q passes ``F32_SUM_LIMIT`` (float32's largest value / 64: room for bootstrap
multiplicities and doubly robust terms), before that chunk is evaluated (training stops with
the same diagnosis: ``train/main.py``). A row whose |reward| is more than all the other rows'
together and 100 times their mean nonzero |reward| is warned about (``outlier_warnings``),
naming the row and the estimates it dominates.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from typing import Iterable, Iterator

import numpy as np

from puts_jax.action_set import atomic_write_bytes
from puts_jax.checks import InputError
from puts_jax.halves import splitmix64
from puts_jax.types import LoggedBatch

TRAIN_INPUTS = "inputs.json"  # train/checkpointing.INPUTS_FILE: a train workdir's input record
ROWS_RECORD = "training_rows.npz"  # beside it: the keys of the rows training read
KEY_RULE = ("puts_jax.training_rows/1: splitmix64 chain over request_id, action, context "
            "(float32 bits) and context_ids")
ROLES = {"logs": "trained on", "heldout": "checkpoint-selected on"}
F32_SUM_LIMIT = float(np.finfo(np.float32).max) / 64  # bound on a sum of (r / p)^2
OUTLIER_SHARE, OUTLIER_RATIO = 0.5, 100.0  # ``outlier_warnings``
KEY_BLOCK = 1 << 15  # rows ``row_keys`` hashes at a time


def row_keys(request_id, lb: LoggedBatch) -> np.ndarray:
    """u64[b]: a 64-bit key per row of (request_id i64[b], lb's action i32[b], context
    f32[b, D] bit patterns, context_ids [b, C] when present), splitmix64-chained column by
    column (Steele, Lea and Flood 2014). Equal rows give equal keys in any file, order or
    chunking; different rows collide with probability about 2^-64 a pair. Computed in blocks
    of ``KEY_BLOCK`` rows (the temporaries stay in cache)."""
    rid = np.asarray(request_id, np.int64)
    if len(rid) > KEY_BLOCK:
        return np.concatenate([row_keys(rid[i:i + KEY_BLOCK], LoggedBatch(*(
            None if x is None else np.asarray(x)[i:i + KEY_BLOCK] for x in lb)))
            for i in range(0, len(rid), KEY_BLOCK)])
    h = splitmix64(rid)
    cols = [np.asarray(lb.action, np.int64).view(np.uint64)[None, :],
            np.ascontiguousarray(lb.context, np.float32).view(np.uint32).T.astype(np.uint64)]
    if lb.context_ids is not None:
        cols.append(np.asarray(lb.context_ids, np.int64).view(np.uint64).T)
    for block in cols:
        for w in block:
            h = splitmix64(h ^ w)
    return h


def _npz_bytes(arrays: dict) -> bytes:
    """An uncompressed .npz of ``arrays`` with fixed zip timestamps: the same bytes every time."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name in sorted(arrays):
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asarray(arrays[name]),
                                          allow_pickle=False)
    return buf.getvalue()


def write_rows_record(workdir: str, sha256: dict[str, str], keys: dict[str, list]) -> str:
    """Write ``workdir/training_rows.npz`` atomically: per role ("logs", "heldout") the sorted
    unique ``row_keys`` of its rows (``keys``: role -> list of u64 arrays, one per chunk), the
    roles' file sha256 (``sha256``: as in inputs.json) and ``KEY_RULE``. Returns the path."""
    roles = sorted(keys)
    arrays = {r: np.unique(np.concatenate(keys[r]) if keys[r] else np.zeros(0, np.uint64))
              for r in roles}
    arrays.update(roles=np.array(roles), sha256=np.array([sha256[r] for r in roles]),
                  rule=np.array(KEY_RULE))
    path = os.path.join(workdir, ROWS_RECORD)
    atomic_write_bytes(path, _npz_bytes(arrays))
    return path


def training_inputs(model_dir: str, logs_sha256: str) -> dict:
    """Whether the model saw the sweep's log in training: {"record": the train workdir's
    inputs.json beside ``model_dir`` (``python -m train`` exports ``WORKDIR/selected_model``
    and records each input's sha256 in ``WORKDIR/inputs.json``) or None where there is none (a
    model saved or copied elsewhere: not checked), "seen_as": the roles ("logs": fitted on,
    "heldout": checkpoint-selected on) whose recorded sha256 is the log's}."""
    record = os.path.join(os.path.dirname(os.path.abspath(model_dir)), TRAIN_INPUTS)
    try:
        with open(record) as f:
            inputs = json.load(f)
        seen = [role for role, rec in inputs.items()
                if isinstance(rec, dict) and rec.get("sha256") == logs_sha256]
    except (OSError, ValueError, AttributeError):
        return {"record": None, "seen_as": []}
    return {"record": record, "seen_as": seen}


def seen_warning(ti: dict) -> str:
    """The frontier's (and the CLI's) warning for a log that ``training_inputs`` found."""
    how = " and ".join(ROLES.get(r, r) for r in ti["seen_as"])
    return (f"the log is one the model was {how} (same sha256 as {', '.join(ti['seen_as'])} in "
            f"{ti['record']}): its estimates are optimistic and the frontier is not an "
            "unseen-data estimate; sweep a log training did not see (simulate's "
            "evaluation.parquet, or a 'data split' share held out of training)")


def load_rows_record(model_dir: str) -> tuple[str | None, dict | None, str | None]:
    """(path, {role: sorted u64 keys}, None) of the ``training_rows.npz`` beside ``model_dir``,
    or (path or None, None, why not) where there is none or it cannot be used: it does not read,
    was written by another key rule, is not sorted, or records other files than the workdir's
    inputs.json (``training_inputs``)."""
    wd = os.path.dirname(os.path.abspath(model_dir))
    path, inputs = os.path.join(wd, ROWS_RECORD), os.path.join(wd, TRAIN_INPUTS)
    if not os.path.exists(path):
        return None, None, (f"no {ROWS_RECORD} beside the model (a model saved outside a train "
                            "workdir, or trained before training recorded its rows)")
    try:
        with open(inputs) as f:
            recorded = {r: v.get("sha256") for r, v in json.load(f).items()}
        with np.load(path, allow_pickle=False) as z:
            rule = z["rule"].item()
            if rule != KEY_RULE:
                return path, None, f"written by another key rule ({rule})"
            keys = {}
            for role, sha in zip(z["roles"].tolist(), z["sha256"].tolist()):
                if recorded.get(role) != sha:
                    return path, None, f"its {role} is not the file {inputs} records"
                k = z[role]
                if k.dtype != np.uint64 or (len(k) > 1 and not (k[1:] > k[:-1]).all()):
                    return path, None, f"its {role} keys are not sorted 64-bit keys"
                keys[role] = k
    except (OSError, ValueError, KeyError, AttributeError, zipfile.BadZipFile) as e:
        return path, None, f"does not read ({type(e).__name__}: {e})"
    return path, keys, None


class RewardStats:
    """Per objective, float64 facts of the rewards r f32[b, J] and propensities p seen so far:
    ``n`` rows, ``abs_sum`` sum |r|, ``nonzero`` rows with r != 0, ``top``/``top_row`` the
    largest |r| and its row (``top_value``: that r), ``low`` min r, ``q`` sum (r / p)^2, and
    ``q_row`` the row of largest |r| / p (``q_top``), its r (``q_reward``) and p (``q_p``)."""

    def __init__(self, J: int):
        z = lambda dt=np.float64: np.zeros(J, dt)  # noqa: E731
        self.n, self.abs_sum, self.nonzero, self.top, self.low = 0, z(), z(np.int64), z(), z()
        self.top_row, self.top_value = z(np.int64), z()
        self.q, self.q_top, self.q_row, self.q_reward, self.q_p = z(), z(), z(np.int64), z(), z()

    def update(self, offset: int, rewards: np.ndarray, propensity: np.ndarray) -> None:
        """Add the rows [offset, offset + b) of one chunk."""
        r = np.asarray(rewards, np.float64)
        if not len(r):
            return
        a, wr = np.abs(r), np.abs(r) / np.asarray(propensity, np.float64)[:, None]
        i, k = a.argmax(0), wr.argmax(0)
        cols = np.arange(r.shape[1])
        better, q_better = a[i, cols] > self.top, wr[k, cols] > self.q_top
        self.top_row = np.where(better, i + offset, self.top_row)
        self.top = np.where(better, a[i, cols], self.top)
        self.top_value = np.where(better, r[i, cols], self.top_value)
        self.q_row = np.where(q_better, k + offset, self.q_row)
        self.q_top = np.where(q_better, wr[k, cols], self.q_top)
        self.q_reward = np.where(q_better, r[k, cols], self.q_reward)
        self.q_p = np.where(q_better, np.asarray(propensity, np.float64)[k], self.q_p)
        self.low = np.minimum(self.low, r.min(0)) if self.n else r.min(0)
        self.n += len(r)
        self.abs_sum += a.sum(0)
        self.nonzero += (r != 0).sum(0)
        self.q += (wr * wr).sum(0)

    def check_sums(self, names, source: str) -> None:
        """InputError("rewards", [row], source=``source``) for the first objective whose
        sum (r / p)^2 has passed ``F32_SUM_LIMIT``: the sweep's float32 sums would overflow."""
        for j in np.flatnonzero(~(self.q <= F32_SUM_LIMIT)):
            raise self.error(j, names, source, (
                f"{names[j]} is too large for the sweep's float32 sums: (reward / propensity)^2 "
                f"summed over the rows read reaches {self.q[j]:.3g}, past {F32_SUM_LIMIT:.3g} "
                f"(float32's largest value / 64), so estimates and intervals would be inf or "
                f"nan; the largest term is {names[j]} {self.q_reward[j]:.4g} at propensity "
                f"{self.q_p[j]:.4g}: "))

    def error(self, j: int, names, source: str, why: str) -> InputError:
        """InputError("rewards", [the row of objective j's largest |r| / propensity]) saying
        ``why`` and then how to fix it (rescale the objective or drop the row)."""
        return InputError("rewards", [int(self.q_row[j])], (
            f"{why}rescale {names[j]} (e.g. in thousands) or drop that row (nothing written)"),
            source)


class LogWatch:
    """Wraps the sweep's stream of ``(row_offset, request_id, LoggedBatch)`` chunks: yields them
    unchanged, after counting the rows whose ``row_keys`` are in ``record`` (role -> sorted
    u64 keys, or None: not checked) into ``seen`` (role -> rows) and adding each chunk to
    ``rewards`` (``RewardStats``). Raises InputError (``RewardStats.check_sums``) before
    yielding a chunk that takes a reward sum past float32's range."""

    def __init__(self, chunks: Iterable, record: dict | None, reward_names, source: str):
        self.chunks, self.record, self.names, self.source = chunks, record, reward_names, source
        self.rows, self.rewards = 0, RewardStats(len(reward_names))
        self.seen = None if record is None else {role: 0 for role in record}

    def __iter__(self) -> Iterator:
        for offset, rid, lb in self.chunks:
            self.rewards.update(offset, lb.rewards, lb.propensity)
            self.rewards.check_sums(self.names, self.source)
            if self.record is not None:
                keys = np.sort(row_keys(rid, lb))  # sorted needles: a cache-friendly search
                for role, known in self.record.items():
                    at = np.minimum(np.searchsorted(known, keys), max(len(known) - 1, 0))
                    self.seen[role] += int((known[at] == keys).sum()) if len(known) else 0
            self.rows += len(rid)
            yield offset, rid, lb


SUM_FIELDS = ("sum_wr", "sum_w2r", "sum_w2r2", "sum_match_r", "sum_dm", "sum_dr", "sum_dr2")


def check_sums_finite(stats: Iterable, names, rewards: RewardStats, source: str) -> None:
    """InputError("rewards", [row], source=``source``) naming the first objective whose merged
    sums (``EstimatorStats`` / ``BootstrapStats`` of ``stats``, None entries skipped) hold a
    non-finite value: a float32 sum overflowed, or the model predicted a non-finite value for
    the doubly robust terms. The row named is that of the largest |r| / propensity."""
    J = len(names)
    for st in (s for s in stats if s is not None):
        for field in SUM_FIELDS:
            x = getattr(st, field, None)
            if x is None:
                continue
            bad = ~np.isfinite(np.asarray(x, np.float64).reshape(-1, J)).all(0)
            for j in np.flatnonzero(bad):
                raise rewards.error(j, names, source, (
                    f"the sweep's float32 sums of {names[j]} are not finite ({field}): its "
                    f"rewards (the largest |reward| / propensity is {names[j]} "
                    f"{rewards.q_reward[j]:.4g} at propensity {rewards.q_p[j]:.4g}) or the "
                    f"model's predicted {names[j]} (doubly robust terms) are too large for "
                    "float32; "))


def _pct(n: int, of: int) -> str:
    share = 100.0 * n / max(of, 1)
    return "<0.1%" if 0 < share < 0.1 else f"{share:.1f}%"


def overlap_block(path: str | None, record: dict | None, why: str | None,
                  watch: LogWatch) -> dict:
    """The frontier's ``provenance.training_rows``: {"record": the training_rows.npz read (or
    None), "checked": whether the rows were compared, "why_not": None or why they were not,
    "rows": the log's rows, "seen": role -> rows whose key is in the record (None: not
    checked), "record_rows": role -> rows recorded, "key": ``KEY_RULE``}."""
    return {"record": path, "checked": record is not None, "why_not": why, "rows": watch.rows,
            "seen": watch.seen, "record_rows": None if record is None else
            {role: int(len(k)) for role, k in record.items()}, "key": KEY_RULE}


def overlap_warnings(block: dict, seen_as) -> list[str]:
    """One warning per role ("logs", "heldout") with rows of the sweep's log that training
    read (``overlap_block``), except a role whose whole file the log is (``seen_as``: already
    warned by ``seen_warning``)."""
    out = []
    for role, n in (block.get("seen") or {}).items():
        if n and role not in seen_as:
            out.append(
                f"{n:,} of {block['rows']:,} rows of the log ({_pct(n, block['rows'])}) are rows "
                f"the model was {ROLES.get(role, role)}: their request id, action and context "
                f"are those of rows of its --{role} (recorded in {block['record']}); their "
                "estimates are optimistic and so is the frontier; sweep a log training did not "
                "see (simulate's evaluation.parquet, or a 'data split' share held out of "
                "training)")
    return out


def _matching(doc: dict, j: int, top: float, production: int | None) -> str:
    """Which policies of the frontier ``doc`` matched the outlier row of objective j: those whose
    matched rewards reach ``top`` (exact for non-negative rewards, where the other rows together
    stay below it); ``production``: the production action's index, marked."""
    pts = np.asarray(doc["points"]["matched_rewards"], np.float64)[:, j]
    acts = np.asarray(doc["baselines"]["actions"]["matched_rewards"], np.float64)[:, j]
    hit = lambda m: np.flatnonzero(m >= top * (1 - 1e-6))  # noqa: E731
    p, a = hit(pts), hit(acts)
    shown = [f"{i}{' = production' if i == production else ''}" for i in a[:5]]
    act = "" if not len(a) else (f" (action{'s' * (len(a) > 1)} {', '.join(shown)}"
                                 f"{', ...' * (len(a) > 5)})")
    return (f"{len(p)} of {len(pts)} lambda points, {len(a)} of {len(acts)} single actions{act} "
            "and the logging policy")


def outlier_warnings(rewards: RewardStats, names, doc: dict,
                     production: int | None = None) -> list[str]:
    """One warning per objective with a row whose |reward| is more than ``OUTLIER_SHARE`` of the
    log's total |reward| and at least ``OUTLIER_RATIO`` times the other nonzero rows' mean: the
    estimates of every policy that matches that row rest on it (``doc``: the frontier, to name
    those policies where the rewards are non-negative; ``production``: the production action)."""
    out = []
    for j, name in enumerate(names):
        nz, top, total = int(rewards.nonzero[j]), float(rewards.top[j]), float(rewards.abs_sum[j])
        if nz < 2 or not top > OUTLIER_SHARE * total:
            continue
        mean_other = (total - top) / (nz - 1)
        if top < OUTLIER_RATIO * mean_other:
            continue
        row = int(rewards.top_row[j])
        who = (_matching(doc, j, top, production) if rewards.low[j] >= 0 else
               "every policy that matches it, and the logging policy")
        out.append(f"{name}: row {row:,} has a reward of {rewards.top_value[j]:.4g}, "
                   f"{100 * top / total:.4g}% of the log's total |{name}| (the {nz - 1:,} other "
                   f"nonzero rows average {mean_other:.4g}): the {name} estimates of the policies "
                   f"that match that row rest on it alone ({who}); check the row (a unit or "
                   "logging error?) or drop it")
    return out
